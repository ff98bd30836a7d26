"""Your own images: a folder `ROOT/<split>/<class>/<image>` as a TFDS dataset.

`--config.dataset=image_folder --config.data_dir=ROOT` trains on it. The
folder is checked first (`scan`): both splits exist, every class folder holds
images, both splits have the same classes. Classes are the sorted class-folder
names; label i is the i-th of them. Image files are those ending in .jpg,
.jpeg or .png (any case); other files are not part of the dataset.

`ImageFolderBuilder` then prepares an ordinary TFDS copy of the folder once,
in ArrayRecord files (every image decoded in full on the way, so that an
unreadable or corrupt file stops the preparation with its path, before any
training), and the input pipeline reads that copy like any TFDS dataset: the
same per-process shards, shuffling, augmentation and exact resume. JPEG and PNG files
in RGB or grey are stored as they are; other modes (palette, alpha, 16-bit,
CMYK) are stored as RGB PNG. Images of any size are kept at their size: the
pipeline crops and resizes them.

The copy lives in `<TFDS data dir>/sgan_image_folder/<fingerprint>/` (the
TFDS data dir is `$TFDS_DATA_DIR`, default `~/tensorflow_datasets`). The
fingerprint hashes every image's path, size and modification time, so a
changed folder is prepared again rather than read stale.
"""
import hashlib
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from sgan_jax import config_lib

NAME = "image_folder"
# Written beside the prepared files: the one image shape, if all share one
# (then the device can augment them, `input_pipeline.fixed_image_shape`).
IMAGE_SHAPE_FILE = "image_shape.json"
FILE_FORMAT = "array_record"   # random access for the loader; written without TensorFlow
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_KEEP_AS_IS = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}


class ImageFolderError(config_lib.ConfigError):
  """The image folder cannot serve as a dataset (one line: what and where)."""


def _subfolders(folder: epath.Path) -> List[epath.Path]:
  return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)


def _images(folder: epath.Path) -> List[epath.Path]:
  return sorted((p for p in folder.iterdir()
                 if p.name.lower().endswith(IMAGE_SUFFIXES) and not p.is_dir()),
                key=lambda p: p.name)


def scan(root, splits: Sequence[str]) -> Tuple[List[str], Dict[str, List[Tuple[epath.Path, int]]]]:
  """Checks `root` and lists it: `(classes, {split: [(image path, label)]})`.

  Raises ImageFolderError for a missing root or split folder, a split without
  class folders, a class folder without images, or splits whose class sets
  differ.
  """
  root = epath.Path(root)
  if not root.is_dir():
    raise ImageFolderError(f"image folder {root} does not exist (data_dir of "
                           f"dataset '{NAME}': ROOT/<split>/<class>/<image>)")
  found = {}
  for split in dict.fromkeys(splits):
    folder = root / split
    if not folder.is_dir():
      present = ", ".join(p.name for p in _subfolders(root)) or "none"
      raise ImageFolderError(
          f"image folder {root} has no '{split}' folder (expected "
          f"{folder}/<class>/<image>; folders there: {present}); set "
          f"--config.train_split / --config.test_split to the split folders' names")
    classes = _subfolders(folder)
    if not classes:
      raise ImageFolderError(f"split folder {folder} has no class folders "
                             f"(expected {folder}/<class>/<image>)")
    found[split] = {c.name: _images(c) for c in classes}
    for name, images in found[split].items():
      if not images:
        raise ImageFolderError(
            f"class folder {folder / name} has no images (.jpg, .jpeg or .png); "
            f"add images or remove the folder")
  first, *others = found
  for split in others:
    a, b = set(found[first]), set(found[split])
    if a != b:
      raise ImageFolderError(
          f"image folder {root}: splits '{first}' and '{split}' have different "
          f"classes (only in '{first}': {sorted(a - b) or 'none'}; only in "
          f"'{split}': {sorted(b - a) or 'none'}); both need the same class folders")
  classes = sorted(found[first])
  listing = {split: [(p, label) for label, name in enumerate(classes)
                     for p in per_class[name]]
             for split, per_class in found.items()}
  return classes, listing


def fingerprint(listing: Dict[str, List[Tuple[epath.Path, int]]]) -> str:
  """A short hash of every image's split, label, name, size and mtime."""
  h = hashlib.sha256()
  for split in sorted(listing):
    for p, label in listing[split]:
      st = p.stat()
      h.update(f"{split}/{label}/{p.name}/{st.length}/{st.mtime}\n".encode())
  return h.hexdigest()[:16]


def read_image(path: epath.Path) -> Tuple[bytes, Tuple[int, int]]:
  """The encoded image to store (the file's bytes for RGB or grey JPEG/PNG,
  else the image converted to RGB PNG) and its (height, width). Raises
  ImageFolderError naming the file if it cannot be read and decoded in full."""
  try:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
      image.load()   # decodes every pixel: truncated or corrupt files fail here
      size = (image.height, image.width)
      if (image.format, image.mode) in _KEEP_AS_IS:
        return data, size
      out = io.BytesIO()
      image.convert("RGB").save(out, format="PNG")
      return out.getvalue(), size
  except Exception as e:  # PIL raises many types for bad files
    raise ImageFolderError(
        f"cannot read image {path} ({type(e).__name__}: {e}); replace or "
        f"remove the file") from None


def stored_image_shape(data_dir) -> Optional[Tuple[int, int, int]]:
  """The (H, W, 3) all images of a prepared folder share, from its
  `IMAGE_SHAPE_FILE` (None if they vary, or if it has none)."""
  path = epath.Path(data_dir) / IMAGE_SHAPE_FILE
  if not path.exists():
    return None
  shape = json.loads(path.read_text())["image_shape"]
  return None if shape is None else tuple(shape)


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


class ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder for `ROOT/<split>/<class>/<image>` (see the module
  docstring). `classes` are the sorted class names."""
  name = "sgan_image_folder"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "2.0.0": "ArrayRecord files; the shared image shape recorded."}

  def __init__(self, root_dir, splits: Sequence[str], data_dir=None):
    self.root_dir = epath.Path(root_dir)
    self.classes, self._listing = scan(self.root_dir, splits)
    self._sizes = set()
    config = tfds.core.BuilderConfig(name=fingerprint(self._listing),
                                     description=f"images of {self.root_dir}")
    super().__init__(data_dir=data_dir or default_data_dir(), config=config,
                     file_format=FILE_FORMAT)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"The image folder {self.root_dir} (ROOT/<split>/<class>/<image>).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=self.classes),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in self._listing}

  def _generate_examples(self, split):
    for i, (path, label) in enumerate(self._listing[split]):
      data, size = read_image(path)
      self._sizes.add(size)
      yield i, {"image": data, "label": np.int64(label)}
    if split == list(self._listing)[-1]:   # every split is done: note the shape
      shape = [*self._sizes.pop(), 3] if len(self._sizes) == 1 else None
      (epath.Path(self.data_dir) / IMAGE_SHAPE_FILE).write_text(
          json.dumps({"image_shape": shape}))
