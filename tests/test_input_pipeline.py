"""The input pipeline (`sgan_jax.input_pipeline`): ArrayRecord datasets read
by grain without TensorFlow, per-process shards, the loader state in each
checkpoint, and resumes that restore it instead of replaying the stream."""
import glob
import json
import os
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

from sgan_jax import (checkpointing, dataset_builders, errors, host_images, input_pipeline,
                      sharding)


def _tagged_records(n, size=8):
  """n records whose image encodes the record's id (pixels 0 and 1 of row 0)."""
  out = []
  for i in range(n):
    image = np.zeros((size, size, 3), np.uint8)
    image[0, 0, 0], image[0, 0, 1] = i % 256, i // 256
    out.append({"image": image, "label": i % 10})
  return host_images.Records(out)


def _ids(batch):
  return batch["image"][:, 0, 0, 0].astype(int) + 256 * batch["image"][:, 0, 0, 1].astype(int)


def test_project_datasets_are_written_as_array_record(tiny_digits):
  builder = dataset_builders.get_builder(tiny_digits())
  assert builder.info.file_format.value == "array_record"
  files = glob.glob(os.path.join(builder.data_dir, "*.array_record*"))
  assert any("train" in f for f in files) and any("test" in f for f in files)
  train_split = input_pipeline.records(tiny_digits(), builder, "train")
  assert len(train_split) == 1500
  record = train_split[0]
  assert record["image"].shape == (8, 8, 3) and record["image"].dtype == np.uint8


def test_training_and_evaluation_import_no_tensorflow(tmp_path, config_path, digits_dir):
  """TensorFlow is installed in the test environment; a training run and an
  evaluation in a fresh process must still never import it. The run's
  checkpoint holds the loader state of its step."""
  script = tmp_path / "run.py"
  script.write_text(f"""
import sys
from absl import flags
from sgan_jax import config_lib, evaluation, train
flags.FLAGS.mark_as_parsed()
config = config_lib.load_config({config_path("tiny")!r})
config.update(dataset="sklearn_digits", data_dir={digits_dir!r}, num_train_steps=2,
              checkpoint_every_steps=2, eval_every_steps=1000)
config.eval.evaluators = ("knn",)
config.eval.generator_metrics = False
train.train_and_evaluate(config, {str(tmp_path / 'run')!r})
evaluation.evaluate_checkpoints(config, {str(tmp_path / 'run')!r}, [2],
                                {str(tmp_path / 'eval')!r})
print("tensorflow imported:", sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')[:3])
""")
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "tensorflow imported: []" in out.stdout
  assert os.path.exists(tmp_path / "eval" / "eval_2.json")
  # The checkpoint holds the loader's state of its step: 2 batches taken.
  ckpt = checkpointing.Checkpointer(str(tmp_path / "run"), 3, read_only=True)
  state = json.loads(ckpt.restore_data_state(2))
  ckpt.close()
  assert state == {"workers": 0, "grain": {"next_index": 2}}
  with open(tmp_path / "run" / "checkpoints" / "2" / "data" / "process_0-of-1.json") as f:
    assert json.load(f) == state


def test_two_process_shards_are_disjoint_and_make_the_global_batch(tiny_config):
  config = tiny_config(global_batch_size=8, augment=False)
  data = _tagged_records(100)
  iterators = [iter(input_pipeline.loader(
      input_pipeline.train_batch_keys(config, data, True, i, 2), 0)) for i in range(2)]
  seen = [[], []]
  for _ in range(25):   # two epochs: 50 records per shard, 4 per batch
    for i, it in enumerate(iterators):
      batch = next(it)
      assert batch["image"].shape[0] == 4   # half of the global batch each
      seen[i].extend(_ids(batch))
  for i in range(2):
    first, second = seen[i][:50], seen[i][50:]
    assert sorted(first) == sorted(second) == list(range(i, 100, 2))   # its shard, whole
    assert first != second                                             # reshuffled
  # One process reads every record in a global batch of its own.
  single = next(iter(input_pipeline.loader(
      input_pipeline.train_batch_keys(config, data, True, 0, 1), 0)))
  assert single["image"].shape[0] == 8


def test_a_loader_state_far_into_the_stream_is_restored_without_replay(tiny_config):
  """A state at step 90,000 gives the batch the stream has there, at once:
  the loader jumps, it does not read the 720,000 records before."""
  config = tiny_config(global_batch_size=8, augment=False)
  batches = input_pipeline.train_batch_keys(config, _tagged_records(100), True, 0, 1)
  iterator = iter(input_pipeline.loader(batches, 0))
  next(iterator)
  state = iterator.get_state()
  assert state == {"next_index": 1}
  far = iter(input_pipeline.loader(batches, 0))
  far.set_state({"next_index": 90_000})
  got = next(far)
  np.testing.assert_array_equal(got["image"], batches[90_000]["image"])
  # ... which is the sampler's permutation of the epoch it falls in.
  epoch, offset = divmod(90_000 * 8, 100)
  keys = grain.MapDataset.range(100).shuffle(seed=config.seed).repeat()
  np.testing.assert_array_equal(_ids(got), [keys[epoch * 100 + offset + j] for j in range(8)])


def test_a_checkpoint_without_loader_state_restores_none(tmp_path, tiny_digits):
  from sgan_jax.state import create_train_state  # pylint: disable=import-outside-toplevel
  config = tiny_digits()
  state = create_train_state(config, jax.random.PRNGKey(0), sharding.make_mesh())
  ckpt = checkpointing.Checkpointer(str(tmp_path), 2)
  ckpt.save(state)   # as checkpoints written before loader states were kept
  ckpt.wait()
  assert ckpt.restore_data_state(0) is None
  ckpt.close()


def test_preparing_a_catalog_dataset_without_tensorflow_says_how(monkeypatch, tiny_config,
                                                                 tmp_path):
  monkeypatch.setattr(dataset_builders, "_can_download", lambda: True)
  real = dataset_builders.importlib.util.find_spec
  monkeypatch.setattr(dataset_builders.importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorflow" else real(name, *a))
  with pytest.raises(dataset_builders.DatasetUnavailableError) as err:
    dataset_builders.get_builder(tiny_config(dataset="cifar10", data_dir=str(tmp_path)))
  message = str(err.value)
  assert "needs TensorFlow once" in message and "sgan_jax[tf]" in message
  assert "--file_format=array_record" in message and "\n" not in message


def test_a_prepared_dataset_folder_is_read_without_its_builder(tiny_digits, tiny_config):
  built = dataset_builders.get_builder(tiny_digits())
  config = tiny_config(dataset="prepared", data_dir=str(built.data_dir))
  copy = dataset_builders.get_builder(config)
  assert dataset_builders.class_names(config, copy) == [str(i) for i in range(10)]
  a = input_pipeline.records(config, copy, "test")
  b = input_pipeline.records(tiny_digits(), built, "test")
  assert len(a) == len(b) == 297
  np.testing.assert_array_equal(a[5]["image"], b[5]["image"])
  with pytest.raises(errors.ConfigError, match="has no dataset_info.json"):
    dataset_builders.get_builder(tiny_config(dataset="prepared", data_dir=os.path.dirname(str(built.data_dir))))


def test_a_class_subset_keeps_and_renumbers_its_classes(tiny_digits):
  everything = input_pipeline.records(tiny_digits(), dataset_builders.get_builder(tiny_digits()),
                                      "test")
  config = tiny_digits(class_subset="7,3,9", num_classes=3)
  subset = input_pipeline.records(config, dataset_builders.get_builder(config), "test")
  original = [int(everything[i]["label"]) for i in range(len(everything))]
  kept = [i for i, label in enumerate(original) if label in (7, 3, 9)]
  assert len(subset) == len(kept) > 0
  for j in (0, len(kept) // 2, len(kept) - 1):
    want = everything[kept[j]]
    np.testing.assert_array_equal(subset[j]["image"], want["image"])
    assert int(subset[j]["label"]) == [7, 3, 9].index(int(want["label"]))
