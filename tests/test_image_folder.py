"""Image-folder datasets (ROOT/<split>/<class>/<image>): listing, bad input
named in one line before any compute, pixels as stored, classes kept with the
run; training, evaluation and learning curves through the CLIs."""
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
from PIL import Image
import pytest

import helpers
from sgan_jax import config_lib, dataset_builders, errors, input_pipeline, reporting, train
from sgan_jax.datasets import folder_listing, image_folder

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


def folder_config(tiny_config, root, **overrides):
  return tiny_config(dataset="image_folder", data_dir=root, num_classes=len(CLASSES),
                     **overrides)


def test_classes_are_the_sorted_folder_names_and_labels_follow_them(tmp_path):
  classes, listing = folder_listing.scan(make_folder(tmp_path / "d"), ("train", "test"))
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
    dataset_builders.get_builder(folder_config(tiny_config, root))
  text = str(err.value)
  assert message.format(root=root, path=path) in text
  assert "\n" not in text
  # Nothing half-prepared is left to be read as a dataset later.
  prepared = os.path.join(tfds_dir, "sgan_image_folder")
  assert not os.path.exists(prepared) or not any(
      d == str(image_folder.ImageFolderBuilder.VERSION) or d.startswith("incomplete")
      for _, dirs, _ in os.walk(prepared) for d in dirs)


def test_folder_config_errors(tmp_path, tfds_dir, tiny_config):
  root = make_folder(tmp_path / "d")
  with pytest.raises(errors.ConfigError, match="num_classes is 10 but image folder "
                     f"{root} has 3 classes; pass --config.num_classes=3"):
    dataset_builders.get_builder(tiny_config(dataset="image_folder", data_dir=root))
  with pytest.raises(errors.ConfigError, match="needs --config.data_dir=ROOT"):
    config_lib.validate(tiny_config(dataset="image_folder"))
  with pytest.raises(image_folder.ImageFolderError, match="does not exist"):
    dataset_builders.get_builder(folder_config(tiny_config, str(tmp_path / "nowhere")))


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
  builder = dataset_builders.get_builder(config)
  assert input_pipeline.fixed_image_shape(builder) == (16, 16, 3)
  batch = next(iter(input_pipeline.EvalBatches(config, builder, "test", 8)))
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
  with open(os.path.join(workdir, dataset_builders.CLASSES_FILE)) as f:
    assert json.load(f) == ["ant", "cat", "dog"]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2", "3"]
  assert [s for s, _ in reporting.read_all_results(workdir)] == [3]

  # --all_steps: the two checkpoints without an evaluation, then the curve.
  ev = subprocess.run([sys.executable, "-m", "sgan_jax.evaluate", f"--workdir={workdir}",
                       "--all_steps"],
                      capture_output=True, text=True, cwd=root, timeout=600, env=env)
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert "2 checkpoint(s) to evaluate: [1, 2]" in ev.stdout
  evals = reporting.read_all_results(workdir)
  assert [s for s, _ in evals] == [1, 2, 3]
  for _, results in evals:
    assert 0 <= results["d_ema/backbone/knn/top1"] <= 1
    assert 0 <= results["d_ema/backbone/svm/top1"] <= 1
  # The baselines were computed once, by one evaluator, for both new steps
  # (each fit logs one line; D_ema's come once per step).
  assert ev.stderr.count("Evaluating checkpoint") == 2
  assert ev.stderr.count("d_ema backbone knn:") == 2
  assert ev.stderr.count("random_init backbone knn:") == 1
  assert ev.stderr.count("raw_pixels pixels knn:") == 1
  for key in ("random_init/backbone/knn/top1", "raw_pixels/pixels/knn/top1"):
    assert evals[0][1][key] == evals[1][1][key]
  # One panel per evaluator score of the newest evaluation, and G's if any.
  newest = evals[-1][1]
  drawn = sum(any(metric in k for k in newest) for metric, _ in reporting.CURVE_PANELS)
  drawn += any(k.startswith("gen/g_ema/") for k in newest)
  assert drawn >= 2
  assert helpers.panels_in_png(os.path.join(workdir, reporting.CURVE_FILE)) == drawn
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


def _write(path, data=b"not an image"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return path


def _prepare(root, data_dir, **kwargs):
  builder = image_folder.ImageFolderBuilder(root, ("train", "test"), data_dir=data_dir,
                                            **kwargs)
  builder.download_and_prepare()
  return builder


def _absl_records(caplog):
  return [r.getMessage() for r in caplog.records if r.name == "absl"]


def test_every_bad_image_is_named_in_one_error(tmp_path, tfds_dir, tiny_config):
  root = make_folder(tmp_path / "d")
  bad = [_truncated_jpeg(root), _text_named_png(root),
         _write(os.path.join(root, "train", "dog", "000.jpg"), b"")]
  with pytest.raises(image_folder.ImageFolderError) as err:
    dataset_builders.get_builder(folder_config(tiny_config, root))
  text = str(err.value)
  assert "\n" not in text and "cannot read 3 of the 36 images" in text
  assert all(f"{path} (" in text for path in bad), text
  assert "remove or replace them" in text


def test_many_bad_images_the_first_twenty_named_and_the_count(tmp_path, tfds_dir, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  root = make_folder(tmp_path / "d", per_class=1)
  bad = [_write(os.path.join(root, "train", "cat", f"bad{i:02d}.png")) for i in range(25)]
  with pytest.raises(image_folder.ImageFolderError) as err:
    _prepare(root, tfds_dir)
  text = str(err.value)
  assert "cannot read 25 of the 43 images" in text and "and 5 more" in text, text
  assert [p for p in bad if f"{p} (" in text] == bad[:20]
  assert [m for m in _absl_records(caplog) if m.startswith("bad image: ")] == [
      f"bad image: {p} (not an image file PIL can read)" for p in bad]


def test_hidden_files_are_skipped_with_one_log_line(tmp_path, tfds_dir, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  root = make_folder(tmp_path / "d")
  for split in ("train", "test"):
    _write(os.path.join(root, split, "cat", "._x.png"), b"\x00\x05\x16\x07garbage")
    _write(os.path.join(root, split, "cat", ".hidden.png"))
    # A notebook's checkpoint folder beside the class folders is no class.
    Image.new("RGB", (8, 8)).save(
        _write(os.path.join(root, split, ".ipynb_checkpoints", "x.png")))
  builder = _prepare(root, tfds_dir)
  assert builder.info.features["label"].names == sorted(CLASSES)
  assert builder.info.splits["train"].num_examples == 3 * 6
  assert [p.name for p, _ in builder._listing["train"]].count("alpha.png") == 3
  lines = [m for m in _absl_records(caplog) if "hidden file" in m]
  assert lines == [f"image folder {root}: skipped 4 hidden file(s) or folder(s) "
                   f"(names starting with '.', such as macOS ._* files)"]


def test_other_file_types_and_nested_folders_are_named_in_one_log_line(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  root = make_folder(tmp_path / "d")
  _write(os.path.join(root, "train", "cat", "a.webp"))
  _write(os.path.join(root, "train", "dog", "b.bmp"))
  _write(os.path.join(root, "test", "ant", "c.BMP"))
  Image.new("RGB", (8, 8)).save(_write(os.path.join(root, "train", "cat", "more", "x.png")))
  classes, listing = folder_listing.scan(root, ("train", "test"))
  assert len(listing["train"]) == len(listing["test"]) == 3 * 6
  lines = [m for m in _absl_records(caplog) if "not read" in m]
  assert len(lines) == 1, _absl_records(caplog)
  assert (f"image folder {root}: skipped 9 file(s) of types not read (.bmp: 2, .txt: 6, "
          f".webp: 1) and 1 nested folder(s) (train/cat/more)") in lines[0]


def test_a_dangling_link_in_an_image_folder_is_a_user_error(tmp_path, tfds_dir,
                                                           tiny_config):
  """An I/O error while the run is set up names the file, for the CLI to
  print in one line with exit code 2 (not 3, a stopped run)."""
  root = make_folder(tmp_path / "d")
  link = os.path.join(root, "train", "cat", "gone.jpg")
  os.symlink(os.path.join(root, "no_such_file.jpg"), link)
  with pytest.raises(errors.UserError, match="gone.jpg") as err:
    train.train_and_evaluate(folder_config(tiny_config, root), str(tmp_path / "run"))
  assert "\n" not in str(err.value)


def test_the_default_pixel_limit_is_pils():
  assert image_folder.MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(
    tmp_path, tfds_dir, tiny_config, monkeypatch):
  root = make_folder(tmp_path / "d")
  bomb = os.path.join(root, "train", "cat", "bomb.png")
  Image.new("1", (10_000, 10_000)).save(bomb)   # 100 megapixels in a few KB
  loaded = []
  load = Image.Image.load
  monkeypatch.setattr(Image.Image, "load", lambda im: loaded.append(im.size) or load(im))
  with pytest.raises(image_folder.ImageFolderError) as err:
    dataset_builders.get_builder(folder_config(tiny_config, root))
  assert (f"cannot read image {bomb} (100,000,000 pixels, over the limit of 89,478,485"
          in str(err.value))
  assert (10_000, 10_000) not in loaded


def test_the_pixel_limit_is_a_builder_argument_and_pil_does_not_decide(
    tmp_path, tfds_dir, monkeypatch):
  # PIL's own limit far lower: it would warn, or raise at twice its limit.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
  root = make_folder(tmp_path / "d", per_class=1)
  big = os.path.join(root, "test", "dog", "big.png")
  Image.new("P", (600, 400)).save(big)   # 240,000 pixels
  with pytest.raises(image_folder.ImageFolderError) as err:
    _prepare(root, tfds_dir, max_pixels=200_000)
  assert f"cannot read image {big} (240,000 pixels, over the limit of 200,000" in str(
      err.value)
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    builder = _prepare(root, tfds_dir, max_pixels=240_000)
  assert builder.info.splits["test"].num_examples == 3 * 3 + 1
  assert Image.MAX_IMAGE_PIXELS == 50_000


def test_the_pixel_limit_is_the_config_field_max_image_pixels(tmp_path, tfds_dir,
                                                              tiny_config):
  root = make_folder(tmp_path / "d", per_class=1)
  big = os.path.join(root, "test", "dog", "big.png")
  Image.new("P", (600, 400)).save(big)   # 240,000 pixels
  with pytest.raises(image_folder.ImageFolderError, match="240,000 pixels, over the limit "
                     "of 239,999: a larger --config.max_image_pixels admits it"):
    dataset_builders.get_builder(folder_config(tiny_config, root, max_image_pixels=239_999))
  builder = dataset_builders.get_builder(
      folder_config(tiny_config, root, max_image_pixels=240_000))
  assert builder.info.splits["test"].num_examples == 3 * 3 + 1


def _count_stats(monkeypatch):
  calls = []
  stat = os.stat
  monkeypatch.setattr(os, "stat", lambda p, *a, **k: calls.append(os.fspath(p))
                      or stat(p, *a, **k))
  return calls


def _old_fingerprint(listing):
  """The fingerprint as first defined (a stat per image): prepared copies
  stay valid."""
  h = hashlib.sha256()
  for split in sorted(listing):
    for p, label in listing[split]:
      st = p.stat()
      h.update(f"{split}/{label}/{p.name}/{st.length}/{st.mtime}\n".encode())
  return h.hexdigest()[:16]


def test_one_stat_per_image_at_a_start(tmp_path, tfds_dir, monkeypatch):
  root = make_folder(tmp_path / "d")
  calls = _count_stats(monkeypatch)
  builder = image_folder.ImageFolderBuilder(root, ("train", "test"))
  images = {str(p) for split in builder._listing.values() for p, _ in split}
  assert len(images) == 36
  assert len([c for c in calls if c in images]) <= len(images)
  monkeypatch.undo()
  assert builder.builder_config.name == _old_fingerprint(builder._listing)


def test_the_parallel_remote_listing_gives_the_same_dataset(tmp_path, tfds_dir, monkeypatch):
  root = make_folder(tmp_path / "d")
  _write(os.path.join(root, "train", "cat", "._x.png"))
  local = image_folder.ImageFolderBuilder(root, ("train", "test"))
  monkeypatch.setattr(folder_listing.storage, "is_remote", lambda path: True)   # as for gs://
  calls = _count_stats(monkeypatch)
  remote = image_folder.ImageFolderBuilder(root, ("train", "test"))
  images = {str(p) for split in remote._listing.values() for p, _ in split}
  assert len([c for c in calls if c in images]) <= len(images)
  assert remote._listing == local._listing and remote.classes == local.classes
  assert remote.builder_config.name == local.builder_config.name


def test_other_processes_see_the_same_dataset_identity_as_process_0(tmp_path, tfds_dir,
                                                                    tiny_config):
  """In a multi-host run process 0 lists and prepares the folder and the
  others open the prepared copy from its folder: both must describe it
  alike, or the start-up check (`processes.check_same_storage`) would stop
  every such run."""
  import tensorflow_datasets as tfds
  root = make_folder(tmp_path / "d")
  listed = dataset_builders.get_builder(folder_config(tiny_config, root))
  opened = tfds.builder_from_directory(os.fspath(listed.data_dir))
  assert (dataset_builders.dataset_identity(listed) ==
          dataset_builders.dataset_identity(opened))
  assert dataset_builders.dataset_identity(listed).startswith(
      f"sgan_image_folder/{listed.builder_config.name}/2.0.0 in {listed.data_dir} "
      f"(test 18, train 18)")
