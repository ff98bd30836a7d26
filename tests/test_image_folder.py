"""Image-folder datasets (ROOT/<split>/<class>/<image>): listing, bad input
named in one line before any compute, pixels as stored, classes kept with the
run; training, evaluation and learning curves through the CLIs."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from sgan_jax import config_lib, curves, input_pipeline
from sgan_jax.datasets import image_folder

CLASSES = ("cat", "dog", "ant")   # not in sorted order on purpose


def make_folder(root, per_class=4, size=(20, 28), classes=CLASSES, seed=0):
  """Random colour JPEGs plus one grey and one RGBA PNG per class and split,
  and a non-image file that is not part of the dataset."""
  rng = np.random.default_rng(seed)
  for split in ("train", "test"):
    for c in classes:
      folder = os.path.join(root, split, c)
      os.makedirs(folder)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size[0] + i, size[1], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:03d}.jpg"))
      Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(
          os.path.join(folder, "grey.PNG"))
      Image.fromarray(rng.integers(0, 256, (12, 18, 4), dtype=np.uint8)).save(
          os.path.join(folder, "alpha.png"))
      with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image")
  return str(root)


@pytest.fixture
def tfds_dir(tmp_path, monkeypatch):
  """Prepared copies go to a fresh TFDS data dir."""
  path = str(tmp_path / "tfds")
  monkeypatch.setenv("TFDS_DATA_DIR", path)
  return path


def folder_config(tiny_config, root, **overrides):
  return tiny_config(dataset="image_folder", data_dir=root, num_classes=len(CLASSES),
                     **overrides)


def test_classes_are_the_sorted_folder_names_and_labels_follow_them(tmp_path):
  classes, listing = image_folder.scan(make_folder(tmp_path / "d"), ("train", "test"))
  assert classes == ["ant", "cat", "dog"]
  for split in ("train", "test"):
    assert len(listing[split]) == 3 * 6   # 4 JPEG + 2 PNG; notes.txt is not an image
    for path, label in listing[split]:
      assert path.parent.name == classes[label]
      assert path.name != "notes.txt"


def _remove_test_split(root):
  shutil.rmtree(os.path.join(root, "test"))


def _empty_class(root):
  for f in os.listdir(os.path.join(root, "test", "dog")):
    if not f.endswith(".txt"):
      os.remove(os.path.join(root, "test", "dog", f))


def _extra_class(root):
  shutil.copytree(os.path.join(root, "train", "dog"), os.path.join(root, "train", "emu"))


def _truncated_jpeg(root):
  path = os.path.join(root, "train", "cat", "002.jpg")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  return path


def _text_named_png(root):
  path = os.path.join(root, "test", "ant", "alpha.png")
  with open(path, "w") as f:
    f.write("this is not a PNG")
  return path


@pytest.mark.parametrize("damage,message", [
    (_remove_test_split, "has no 'test' folder (expected {root}/test/<class>/<image>; "
                         "folders there: train)"),
    (_empty_class, "class folder {root}/test/dog has no images"),
    (_extra_class, "splits 'train' and 'test' have different classes (only in 'train': "
                   "['emu']; only in 'test': none)"),
    (_truncated_jpeg, "cannot read image {path} ("),
    (_text_named_png, "cannot read image {path} ("),
])
def test_bad_folders_are_refused_in_one_line_naming_the_place(
    tmp_path, tfds_dir, tiny_config, damage, message):
  root = make_folder(tmp_path / "d")
  path = damage(root)
  with pytest.raises(image_folder.ImageFolderError) as err:
    input_pipeline.get_builder(folder_config(tiny_config, root))
  text = str(err.value)
  assert message.format(root=root, path=path) in text
  assert "\n" not in text
  # Nothing half-prepared is left to be read as a dataset later.
  prepared = os.path.join(tfds_dir, "sgan_image_folder")
  assert not os.path.exists(prepared) or not any(
      "1.0.0" == d for _, dirs, _ in os.walk(prepared) for d in dirs)


def test_folder_config_errors(tmp_path, tfds_dir, tiny_config):
  root = make_folder(tmp_path / "d")
  with pytest.raises(config_lib.ConfigError, match="num_classes is 10 but image folder "
                     f"{root} has 3 classes; pass --config.num_classes=3"):
    input_pipeline.get_builder(tiny_config(dataset="image_folder", data_dir=root))
  with pytest.raises(config_lib.ConfigError, match="needs --config.data_dir=ROOT"):
    config_lib.validate(tiny_config(dataset="image_folder"))
  with pytest.raises(image_folder.ImageFolderError, match="does not exist"):
    input_pipeline.get_builder(folder_config(tiny_config, str(tmp_path / "nowhere")))


def test_images_arrive_as_stored_grey_and_alpha_as_rgb(tmp_path, tfds_dir, tiny_config):
  root = str(tmp_path / "d")
  rng = np.random.default_rng(3)
  rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
  rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
  for split in ("train", "test"):
    for name, pixels in (("a_rgb", rgb), ("b_grey", grey), ("c_rgba", rgba)):
      os.makedirs(os.path.join(root, split, name))
      Image.fromarray(pixels).save(os.path.join(root, split, name, "x.png"))
  # One loader worker process: it reads the prepared copy (the builder
  # itself would scan the folder again).
  config = tiny_config(dataset="image_folder", data_dir=root, num_classes=3,
                       image_size=16, data_workers=1)
  builder = input_pipeline.get_builder(config)
  assert input_pipeline.fixed_image_shape(builder) == (16, 16, 3)
  batch = next(input_pipeline.eval_batches(config, builder, "test", 8))
  expected = {0: rgb, 1: np.repeat(grey[..., None], 3, -1), 2: rgba[..., :3]}
  assert sorted(batch["label"]) == [0, 1, 2]
  for image, label in zip(batch["image"], batch["label"]):
    # A same-size resize is the identity up to float rounding.
    np.testing.assert_allclose((image + 1) * 127.5, expected[label], atol=1e-3)


@pytest.mark.slow   # three CLI runs, three evaluations: ~2 minutes on 2 cores
def test_train_and_evaluate_an_image_folder_through_the_clis(tmp_path, tfds_dir, root,
                                                            config_path):
  data = make_folder(tmp_path / "d", per_class=6)
  workdir = str(tmp_path / "run")
  env = dict(os.environ, TFDS_DATA_DIR=tfds_dir)
  train = subprocess.run(
      [sys.executable, "-m", "sgan_jax.main", f"--config={config_path('tiny')}",
       f"--workdir={workdir}", "--config.dataset=image_folder",
       f"--config.data_dir={data}", "--config.num_classes=3",
       "--config.num_train_steps=3", "--config.checkpoint_every_steps=1",
       "--config.keep_checkpoints=5", "--config.eval_every_steps=3"],
      capture_output=True, text=True, cwd=root, timeout=600, env=env)
  assert train.returncode == 0, train.stderr[-3000:]
  assert "step 3/3 (100%)" in train.stderr
  with open(os.path.join(workdir, input_pipeline.CLASSES_FILE)) as f:
    assert json.load(f) == ["ant", "cat", "dog"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2", "3"]
  assert [s for s, _ in curves.read_all(workdir)] == [3]

  # --all_steps: the two checkpoints without an evaluation, then the curve.
  ev = subprocess.run([sys.executable, "-m", "sgan_jax.evaluate", f"--workdir={workdir}",
                       "--all_steps"],
                      capture_output=True, text=True, cwd=root, timeout=600, env=env)
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert "2 checkpoint(s) to evaluate: [1, 2]" in ev.stdout
  evals = curves.read_all(workdir)
  assert [s for s, _ in evals] == [1, 2, 3]
  for _, results in evals:
    assert 0 <= results["d_ema/backbone/knn/top1"] <= 1
    assert 0 <= results["d_ema/backbone/svm/top1"] <= 1
  # The baselines were computed once, by one evaluator, for both new steps.
  for key in ("random_init/backbone/knn/top1", "raw_pixels/pixels/knn/top1"):
    assert evals[0][1][key] == evals[1][1][key]
  assert ev.stderr.count("Evaluating checkpoint") == 2
  with Image.open(os.path.join(workdir, curves.FILE)) as im:
    assert im.format == "PNG" and im.size[0] > 4 * im.size[1] > 0
  again = subprocess.run([sys.executable, "-m", "sgan_jax.evaluate",
                          f"--workdir={workdir}", "--all_steps"],
                         capture_output=True, text=True, cwd=root, timeout=600, env=env)
  assert again.returncode == 0 and "0 checkpoint(s) to evaluate" in again.stdout

  # Another folder whose classes differ: refused before anything is computed.
  other = make_folder(tmp_path / "other", classes=("ant", "bee", "dog"))
  bad = subprocess.run([sys.executable, "-m", "sgan_jax.evaluate", f"--workdir={workdir}",
                        f"--config.data_dir={other}"],
                       capture_output=True, text=True, cwd=root, timeout=600, env=env)
  assert bad.returncode == 2
  errors = [l for l in bad.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "classes that differ from the run's" in errors[0], bad.stderr
  assert "1: 'cat' -> 'bee'" in errors[0]


def test_a_corrupt_image_stops_the_cli_before_any_compute(tmp_path, tfds_dir, root,
                                                          config_path):
  data = make_folder(tmp_path / "d")
  path = _truncated_jpeg(data)
  workdir = str(tmp_path / "run")
  out = subprocess.run(
      [sys.executable, "-m", "sgan_jax.main", f"--config={config_path('tiny')}",
       f"--workdir={workdir}", "--config.dataset=image_folder",
       f"--config.data_dir={data}", "--config.num_classes=3"],
      capture_output=True, text=True, cwd=root, timeout=300,
      env=dict(os.environ, TFDS_DATA_DIR=tfds_dir))
  assert out.returncode == 2
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and f"cannot read image {path}" in errors[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
