"""Class subsets by name, id or packaged list (sgan_jax.class_subsets), on an
ImageNet-like folder (WordNet-id class folders, a `val` split, JPEGs and
PNGs of different sizes and modes) and on a TFDS dataset with label names;
the image folder's preparation size."""
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from sklearn.datasets import load_sample_images

from sgan_jax import class_subsets, config_lib, dataset_builders, errors, input_pipeline
from sgan_jax.datasets import folder_listing, image_folder

# ImageNet-10 of DAC (Chang et al., 2017), as its repository lists it: king
# penguin, Maltese dog, snow leopard, airliner, airship, container ship,
# soccer ball, sports car, trailer truck, orange.
DAC_IMAGENET10 = ("n02056570", "n02085936", "n02128757", "n02690373", "n02692877",
                  "n03095699", "n04254680", "n04285008", "n04467665", "n07747607")
EXTRA = ("n01440764", "n09999999")   # classes of the folder that no list names


def _photo(rng, height, width):
  """A crop of one of scikit-learn's two sample photos (427 x 640)."""
  photo = load_sample_images().images[int(rng.integers(2))]
  y = int(rng.integers(0, photo.shape[0] - height + 1))
  x = int(rng.integers(0, photo.shape[1] - width + 1))
  return photo[y:y + height, x:x + width]


def make_imagenet_like(root, wnids, per_class=2, seed=0, corrupt=()):
  """ROOT/{train,val}/<wnid>/: JPEGs of several sizes (RGB, grey, CMYK) and
  an RGBA PNG in each train class folder, one JPEG per val class folder.
  The classes in `corrupt` hold a truncated JPEG (a listing that reads them
  fails)."""
  rng = np.random.default_rng(seed)
  sizes = [(90, 120), (120, 96), (70, 70), (40, 52)]
  for wnid in wnids:
    folder = os.path.join(root, "train", wnid)
    os.makedirs(folder)
    for i in range(per_class):
      h, w = sizes[i % len(sizes)]
      Image.fromarray(_photo(rng, h, w)).save(os.path.join(folder, f"{wnid}_{i}.JPEG"))
    Image.fromarray(_photo(rng, 80, 60)).convert("L").save(os.path.join(folder, "grey.JPEG"))
    Image.fromarray(_photo(rng, 50, 90)).convert("CMYK").save(os.path.join(folder, "cmyk.JPEG"))
    Image.fromarray(_photo(rng, 30, 36)).convert("RGBA").save(os.path.join(folder, "alpha.png"))
    val = os.path.join(root, "val", wnid)
    os.makedirs(val)
    Image.fromarray(_photo(rng, 100, 84)).save(os.path.join(val, f"val_{wnid}.JPEG"))
    if wnid in corrupt:
      with open(os.path.join(folder, "broken.JPEG"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
  return str(root)


def _config(tiny_config, root, subset, n, **overrides):
  return tiny_config(dataset="image_folder", data_dir=root, train_split="train",
                     test_split="val", class_subset=subset, num_classes=n, **overrides)


# ------------------------------------------------------------- the lists

def test_the_packaged_lists_are_the_literatures_subsets():
  lists = class_subsets.packaged_lists()
  assert sorted(lists) == ["imagenet10", "imagenet100"]
  assert class_subsets.tokens("imagenet10") == DAC_IMAGENET10
  ids = class_subsets.tokens("imagenet100")
  assert len(ids) == len(set(ids)) == 100
  assert all(re.fullmatch(r"n\d{8}", i) for i in ids)
  # CMC's file (HobbitLong/CMC, imagenet100.txt) begins and ends so, and its
  # 100 ids joined by commas have this SHA-256.
  assert ids[:2] == ("n02869837", "n01749939") and ids[-1] == "n02090622"
  assert hashlib.sha256(",".join(ids).encode()).hexdigest() == (
      "5e2cecb2e6caec6aba32bdf4091025509511908a5131af2a6b8e328b17a8c9bb")
  for name, path in lists.items():   # each file names its source first
    assert path.read_text().startswith("# ImageNet-"), name


def test_the_lists_name_classes_of_tfds_imagenet2012(tmp_path):
  """TFDS's imagenet2012 labels are WordNet ids (known without its data)."""
  import tensorflow_datasets as tfds
  names = tfds.builder("imagenet2012", data_dir=str(tmp_path)).info.features["label"].names
  for name, n in (("imagenet10", 10), ("imagenet100", 100)):
    ids = class_subsets.resolve(name, names, "imagenet2012")
    assert len(set(ids)) == n and [names[i] for i in ids] == list(class_subsets.tokens(name))


def test_lists_are_parsed_from_strings_and_files_with_comments(tmp_path):
  assert class_subsets.tokens("") is None
  assert class_subsets.tokens("3, 7,9") == ("3", "7", "9")
  path = tmp_path / "ids.txt"
  path.write_text("# my classes\nn02085936  # Maltese dog\n\nn01440764,n02056570\n")
  assert class_subsets.tokens(str(path)) == ("n02085936", "n01440764", "n02056570")
  for bad, message in [("# nothing", "lists no classes"),
                       ("a,b,a", "lists a more than once")]:
    with pytest.raises(errors.ConfigError, match=message):
      class_subsets.tokens(bad)


def test_names_win_over_ids_and_unknown_entries_are_named():
  names = ["0", "1", "10", "2", "cat"]      # a sorted folder of numbered classes
  assert class_subsets.resolve("10,2", names, "x") == (2, 3)   # the folders, not ids
  assert class_subsets.resolve("cat,1", names, "x") == (4, 1)
  with pytest.raises(errors.ConfigError) as err:
    class_subsets.resolve("cat,dog,7,n0", names, "image folder R")
  assert str(err.value).startswith("class_subset: dog, 7, n0 not among the 5 classes of "
                                   "image folder R")
  assert "\n" not in str(err.value)
  with pytest.raises(errors.ConfigError, match="names one class twice"):
    class_subsets.resolve("cat,4", names, "x")


def test_the_count_must_match_num_classes(tiny_config):
  with pytest.raises(errors.ConfigError,
                     match="class_subset keeps 10 classes but num_classes is 3; pass "
                           "--config.num_classes=10"):
    config_lib.validate(tiny_config(class_subset="imagenet10", num_classes=3))


# ----------------------------------------------------- on an image folder

def test_subset_by_packaged_name_lists_only_its_classes_in_list_order(
    tmp_path, tfds_dir, tiny_config):
  # The extra classes hold a corrupt file: preparing them would fail.
  root = make_imagenet_like(tmp_path / "in", sorted(DAC_IMAGENET10 + EXTRA), corrupt=EXTRA)
  config = _config(tiny_config, root, "imagenet10", 10, prepare_size=0)
  builder = dataset_builders.get_builder(config)
  assert dataset_builders.class_names(config, builder) == list(DAC_IMAGENET10)
  assert builder.info.splits["train"].num_examples == 10 * 5
  assert builder.info.splits["val"].num_examples == 10
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  dataset_builders.check_classes(config, builder, str(workdir), write=True)
  assert json.loads((workdir / "classes.json").read_text()) == list(DAC_IMAGENET10)
  # Each val image arrives with the label of its list position.
  records = input_pipeline.records(config, builder, "val")
  want = [np.asarray(Image.open(os.path.join(root, "val", w, f"val_{w}.JPEG")))
          for w in DAC_IMAGENET10]
  seen = {}
  for i in range(len(records)):
    seen[int(records[i]["label"])] = records[i]["image"]
  assert sorted(seen) == list(range(10))
  for label, image in seen.items():
    np.testing.assert_array_equal(image, want[label])   # stored as it is


def test_subset_by_wnids_and_by_label_ids_of_the_sorted_folders(tmp_path, tfds_dir,
                                                                tiny_config):
  wnids = sorted(DAC_IMAGENET10[:3] + EXTRA)
  root = make_imagenet_like(tmp_path / "in", wnids, per_class=1)
  chosen = [DAC_IMAGENET10[2], EXTRA[0]]
  by_name = _config(tiny_config, root, ",".join(chosen), 2)
  by_id = _config(tiny_config, root, ",".join(str(wnids.index(w)) for w in chosen), 2)
  names = [dataset_builders.class_names(c, dataset_builders.get_builder(c))
           for c in (by_name, by_id)]
  assert names == [chosen, chosen]


def test_an_unknown_class_is_refused_in_one_line_before_any_image_is_read(
    tmp_path, tfds_dir, tiny_config, monkeypatch):
  root = make_imagenet_like(tmp_path / "in", EXTRA, per_class=1)
  monkeypatch.setattr(image_folder, "read_image", lambda *a, **k: pytest.fail("read"))
  with pytest.raises(errors.ConfigError) as err:
    dataset_builders.get_builder(_config(tiny_config, root, "n01440764,n02056570", 2))
  assert str(err.value) == (
      f"class_subset: n02056570 not among the 2 classes of image folder {root}/train "
      f"(neither a class name nor a label id 0-1); check the list against the "
      f"dataset's classes")


def test_a_class_missing_from_one_split_is_named(tmp_path, tfds_dir, tiny_config):
  root = make_imagenet_like(tmp_path / "in", EXTRA, per_class=1)
  os.rename(os.path.join(root, "val", EXTRA[1]), os.path.join(root, "val", ".hidden"))
  with pytest.raises(folder_listing.ImageFolderError,
                     match=f"has no class folder {EXTRA[1]} \\(class_subset names them\\)"):
    dataset_builders.get_builder(_config(tiny_config, root, ",".join(EXTRA), 2))


# ------------------------------------------------ on a TFDS dataset's names

def test_a_tfds_subset_by_label_names_and_unknown_names(tiny_digits):
  config = tiny_digits(class_subset="8,zero,1", num_classes=3)
  with pytest.raises(errors.ConfigError, match="class_subset: zero not among the 10 "
                                                   "classes of dataset 'sklearn_digits'"):
    dataset_builders.get_builder(config)
  config = tiny_digits(class_subset="8 1", num_classes=2)
  builder = dataset_builders.get_builder(config)
  assert dataset_builders.class_names(config, builder) == ["8", "1"]


# -------------------------------------------------------- preparation size

def _expected_shape(height, width, short_side):
  short = min(height, width)
  if not short_side or short <= short_side:
    return (height, width)
  return (int(height * short_side / short + 0.5), int(width * short_side / short + 0.5))


def test_the_preparation_size_bounds_the_short_side_and_keeps_the_aspect(
    tmp_path, tfds_dir, tiny_config):
  root = make_imagenet_like(tmp_path / "in", EXTRA, per_class=4)
  originals = {}   # label -> [RGB original]
  for label, wnid in enumerate(EXTRA):
    folder = os.path.join(root, "train", wnid)
    originals[label] = [Image.open(os.path.join(folder, n)).convert("RGB")
                        for n in sorted(os.listdir(folder))]
  dirs = set()
  for prepare_size, short_side in [(-1, 32), (48, 48), (0, 0)]:
    config = _config(tiny_config, root, "", 2, image_size=16, prepare_size=prepare_size)
    builder = dataset_builders.get_builder(config)
    dirs.add(os.fspath(builder.data_dir))
    stored = list(builder.as_data_source("train"))
    for label, images in originals.items():
      want = {_expected_shape(im.height, im.width, short_side): im for im in images}
      got = {e["image"].shape[:2]: e["image"] for e in stored if e["label"] == label}
      assert sorted(got) == sorted(want), prepare_size
      for shape, image in got.items():
        original = want[shape]
        if shape == (original.height, original.width):
          continue   # kept at its size (its pixels: test_image_folder.py)
        reference = np.asarray(original.resize(shape[::-1], Image.Resampling.BICUBIC),
                               np.float64)
        # Antialiased bicubic like PIL's own, then JPEG at quality 95.
        assert np.abs(image - reference).mean() < 3.0, (prepare_size, shape)
  assert len(dirs) == 3   # each setting has a prepared copy of its own


def test_a_prepare_size_below_image_size_is_refused(tiny_config):
  with pytest.raises(errors.ConfigError,
                     match="prepare_size 12 is below image_size 16: training would "
                           "enlarge every image; pass at least --config.prepare_size=16"):
    config_lib.validate(tiny_config(image_size=16, prepare_size=12))
  with pytest.raises(errors.ConfigError, match="prepare_size must be at least -1"):
    config_lib.validate(tiny_config(prepare_size=-2))


def test_a_run_that_predates_prepare_size_keeps_its_full_size_copy(tmp_path, tiny_config):
  stored = tiny_config().to_dict()
  del stored["prepare_size"]
  (tmp_path / "config.json").write_text(json.dumps(stored))
  assert config_lib.read_run_config(str(tmp_path)).prepare_size == 0
  assert config_lib.reference_config().prepare_size == -1


def test_threads_prepare_the_same_copy_and_report_progress(tmp_path, tfds_dir, monkeypatch,
                                                           caplog):
  root = make_imagenet_like(tmp_path / "in", EXTRA, per_class=4)
  monkeypatch.setattr(image_folder.progress, "QUIET_SECONDS", 0.0)
  caplog.set_level("INFO")
  copies = []
  for threads in (1, 3):
    builder = image_folder.ImageFolderBuilder(root, ("train", "val"), short_side=40,
                                              data_dir=str(tmp_path / f"t{threads}"),
                                              threads=threads)
    builder.download_and_prepare()
    copies.append([(e["image"], e["label"]) for e in builder.as_data_source("train")])
  assert len(copies[0]) == len(copies[1]) == 2 * 7
  for (a, la), (b, lb) in zip(*copies):
    assert la == lb
    np.testing.assert_array_equal(a, b)
  lines = [r.getMessage() for r in caplog.records if "preparing train" in r.getMessage()]
  assert lines and re.search(r"preparing train of image folder .*: \d+/14 images", lines[0])


# ------------------------------------------- the paper's configs, by the CLI

@pytest.mark.slow
def test_the_imagenet_configs_train_and_evaluate_an_imagenet_folder(tmp_path, tfds_dir, root):
  """Each config as shipped (its list, split names, 64x64 and preparation
  size), with the networks and batch shrunk so that two steps run in CI, on
  one ImageNet-like folder that holds both lists' classes and two more. The
  two runs go side by side (they mostly compile, one core each)."""
  names = ("imagenet10", "imagenet100")
  lists = {name: class_subsets.tokens(name) for name in names}
  data = tmp_path / "imagenet"
  rng = np.random.default_rng(1)
  classes = list(dict.fromkeys(lists["imagenet10"] + lists["imagenet100"] + EXTRA))
  for split in ("train", "val"):
    for i, wnid in enumerate(classes):
      os.makedirs(data / split / wnid)
      size = (160, 200) if i % 2 else (150, 130)
      Image.fromarray(_photo(rng, *size)).save(data / split / wnid / f"{split}_{i}.JPEG")
  for wnid in EXTRA:   # never read: a listing of all classes would fail on it
    (data / "train" / wnid / "broken.JPEG").write_bytes(b"\xff\xd8\xff truncated")
  small = ["--config.global_batch_size=8", "--config.queue_size=16",
           "--config.num_train_steps=2", "--config.log_every_steps=1",
           "--config.checkpoint_every_steps=2", "--config.sample_every_steps=1000",
           "--config.eval_every_steps=2", "--config.model.d_widths=(8,8,16,16,16)",
           "--config.model.d_blocks_per_stage=1", "--config.model.embed_dim=16",
           "--config.model.g_ch=4", "--config.model.g_depth=1", "--config.model.z_dim=16",
           "--config.eval.evaluators=('knn',)", "--config.eval.knn_k=5",
           "--config.eval.generator_metrics=False", "--config.eval.batch_size=8"]
  runs = {name: subprocess.Popen(
      [sys.executable, "-m", "sgan_jax.main", f"--config={name}",
       f"--workdir={tmp_path / name}", f"--config.data_dir={data}", *small],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=root,
      env=dict(os.environ, TFDS_DATA_DIR=tfds_dir)) for name in names}
  errs = {name: run.communicate(timeout=600)[1] for name, run in runs.items()}
  for name, run in runs.items():
    assert run.returncode == 0, errs[name][-3000:]
    assert "step 2/2 (100%)" in errs[name]
    workdir = tmp_path / name
    assert json.loads((workdir / "classes.json").read_text()) == list(lists[name])
    results = json.loads((workdir / "eval_2.json").read_text())
    assert 0 <= results["d_ema/embedding/knn/top1"] <= 1
    # The prepared copy: the listed classes only, short side 2 x 64.
    builder = dataset_builders.get_builder(config_lib.read_run_config(str(workdir)))
    assert builder.info.splits["train"].num_examples == len(lists[name])
    shapes = {e["image"].shape for e in builder.as_data_source("val")}
    assert shapes == {(128, 160, 3), (148, 128, 3)}   # 160x200, 150x130 resized
