"""Your own images: a folder `ROOT/<split>/<class>/<image>` as a TFDS dataset.

`--config.dataset=image_folder --config.data_dir=ROOT` trains on it. The
folder is checked first (`scan`): both splits exist, every class folder holds
images, both splits have the same classes. Classes are the sorted class-folder
names; label i is the i-th of them. Image files are those ending in .jpg,
.jpeg or .png (any case); hidden entries (names starting with '.', such as
macOS `._*` files), other files and nested folders are not part of the
dataset, and the log says how many were skipped (a line for each kind).

`ImageFolderBuilder` then prepares an ordinary TFDS copy of the folder once,
in ArrayRecord files (every image decoded in full on the way; unreadable or
corrupt files, and images of more than `max_pixels` pixels, are all found,
then one error names them, before any training), and the input pipeline
reads that copy like any TFDS dataset: the same per-process shards,
shuffling, augmentation and exact resume. JPEG and PNG files in RGB or grey
are stored as they are; other modes (palette, alpha, 16-bit, CMYK) are
stored as RGB PNG. Images of any size up to the pixel limit are kept at
their size: the pipeline crops and resizes them.

The copy lives in `<TFDS data dir>/sgan_image_folder/<fingerprint>/` (the
TFDS data dir is `$TFDS_DATA_DIR`, default `~/tensorflow_datasets`). The
fingerprint hashes every image's path, size and modification time, as one
listing of the folder found them (one stat per image; in parallel threads on
gs://), so a changed folder is prepared again rather than read stale.
"""
import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import threading
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from sgan_jax import storage
from sgan_jax.errors import ConfigError

NAME = "image_folder"
# Written beside the prepared files: the one image shape, if all share one
# (then the device can augment them, `input_pipeline.fixed_image_shape`).
IMAGE_SHAPE_FILE = "image_shape.json"
FILE_FORMAT = "array_record"   # random access for the loader; written without TensorFlow
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# An image with more pixels is refused, before decoding (a small file can
# hold a huge image): PIL's default limit, `Image.MAX_IMAGE_PIXELS`.
MAX_PIXELS = 89_478_485
MAX_NAMED = 20      # bad image files named in the error (if more, all are logged)
LIST_THREADS = 32   # parallel round trips when listing a remote (gs://) folder
_KEEP_AS_IS = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}
_PIL_LIMIT_LOCK = threading.Lock()


class ImageFolderError(ConfigError):
  """The image folder cannot serve as a dataset (one line: what and where)."""


class BadImageError(ImageFolderError):
  """One image file that cannot be stored: its `path` and a short `reason`."""

  def __init__(self, path, reason: str):
    super().__init__(f"cannot read image {path} ({reason}); remove or replace the file")
    self.path, self.reason = path, reason


def bad_images_error(root, bad: Sequence[BadImageError], total: int) -> ImageFolderError:
  """One error for all the bad image files of a folder (in one line): the
  first MAX_NAMED named, each with its reason, and their count. If there are
  more, every one is logged first (a line each), so all can be fixed at once."""
  if len(bad) == 1:
    return bad[0]
  named = "; ".join(f"{b.path} ({b.reason})" for b in bad[:MAX_NAMED])
  more = ""
  if len(bad) > MAX_NAMED:
    for b in bad:
      logging.warning("bad image: %s (%s)", b.path, b.reason)
    more = f"; and {len(bad) - MAX_NAMED} more (all {len(bad)} are in the log above)"
  return ImageFolderError(
      f"cannot read {len(bad)} of the {total} images in image folder {root}: "
      f"{named}{more}; remove or replace them and run again")


class _Entry(NamedTuple):
  """An entry of a folder: its path, whether it is a folder, and for an image
  file its (size in bytes, modification time in whole seconds)."""
  path: epath.Path
  is_dir: bool
  stat: Optional[Tuple[int, int]]


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _local_entries(folder: epath.Path) -> List[_Entry]:
  """One os.scandir pass (it tells folders without a stat) and one stat per
  image file."""
  entries = []
  with os.scandir(folder) as found:
    for e in found:
      is_dir, stat = e.is_dir(), None
      if not is_dir and _is_image_name(e.name):
        st = os.stat(e.path)
        stat = (st.st_size, int(st.st_mtime))   # as epath's stat has them
      entries.append(_Entry(folder / e.name, is_dir, stat))
  return entries


def _remote_entry(path: epath.Path) -> _Entry:
  """One round trip at most: a stat for an image file, else is_dir (none for
  a hidden entry)."""
  if path.name.startswith("."):
    return _Entry(path, False, None)
  if not _is_image_name(path.name):
    return _Entry(path, path.is_dir(), None)
  st = path.stat()
  return _Entry(path, st.is_directory, None if st.is_directory else (st.length, st.mtime))


def _list_folders(folders: Sequence[epath.Path]) -> List[List[_Entry]]:
  """The entries of each folder. Local folders: one os.scandir each. Others
  (gs://...): all listed, then all entries checked, in parallel threads."""
  if not folders or not storage.is_remote(folders[0]):
    return [_local_entries(f) for f in folders]
  with concurrent.futures.ThreadPoolExecutor(LIST_THREADS) as pool:
    listed = list(pool.map(lambda f: list(f.iterdir()), folders))
    entries = iter(pool.map(_remote_entry, [p for paths in listed for p in paths]))
    return [[next(entries) for _ in paths] for paths in listed]


def _subfolders(folder: epath.Path) -> List[epath.Path]:
  """The folders in `folder`, sorted by name; hidden ones (`.ipynb_checkpoints`,
  `.DS_Store`-like names) are no split or class."""
  return sorted((e.path for e in _list_folders([folder])[0]
                 if e.is_dir and not e.path.name.startswith(".")),
                key=lambda p: p.name)


@dataclasses.dataclass
class _Skipped:
  """What class folders hold besides images; logged, a line for each kind."""
  hidden: int = 0
  types: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  folders: List[str] = dataclasses.field(default_factory=list)

  def images(self, entries: Sequence[_Entry], root: epath.Path) -> List[_Entry]:
    """The image files among a class folder's entries, sorted by name; the
    others are counted here."""
    images = []
    for e in entries:
      if e.path.name.startswith("."):
        self.hidden += 1
      elif e.is_dir:
        self.folders.append(os.fspath(e.path)[len(os.fspath(root)):].lstrip("/"))
      elif _is_image_name(e.path.name):
        images.append(e)
      else:
        self.types[os.path.splitext(e.path.name)[1].lower() or "no extension"] += 1
    return sorted(images, key=lambda e: e.path.name)

  def log(self, root: epath.Path):
    if self.hidden:
      logging.info("image folder %s: skipped %d hidden file(s) or folder(s) (names "
                   "starting with '.', such as macOS ._* files)", root, self.hidden)
    parts = []
    if self.types:
      counts = ", ".join(f"{t}: {n}" for t, n in sorted(self.types.items()))
      parts.append(f"{sum(self.types.values())} file(s) of types not read ({counts})")
    if self.folders:
      names = ", ".join(sorted(self.folders)[:5]) + (", ..." if len(self.folders) > 5 else "")
      parts.append(f"{len(self.folders)} nested folder(s) ({names})")
    if parts:
      logging.warning("image folder %s: skipped %s in class folders (only .jpg, .jpeg "
                      "and .png files directly in a class folder are images)",
                      root, " and ".join(parts))


def _split_classes(root: epath.Path, split: str) -> List[epath.Path]:
  """The class folders of `root/split`, sorted by name; ImageFolderError if
  there is no such folder or it has none."""
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
  return classes


def _check_classes(root: epath.Path, found: Dict[str, Dict[str, list]]):
  """ImageFolderError for a class folder without images, or splits whose
  class sets differ."""
  for split, per_class in found.items():
    for name, images in per_class.items():
      if not images:
        raise ImageFolderError(
            f"class folder {root / split / name} has no images (.jpg, .jpeg or "
            f".png); add images or remove the folder")
  first, *others = found
  for split in others:
    a, b = set(found[first]), set(found[split])
    if a != b:
      raise ImageFolderError(
          f"image folder {root}: splits '{first}' and '{split}' have different "
          f"classes (only in '{first}': {sorted(a - b) or 'none'}; only in "
          f"'{split}': {sorted(b - a) or 'none'}); both need the same class folders")


def scan(root, splits: Sequence[str]) -> Tuple[List[str], Dict[str, List[Tuple[epath.Path, int]]]]:
  """Checks `root` and lists it: `(classes, {split: [(image path, label)]})`.

  Raises ImageFolderError for a missing root or split folder, a split without
  class folders, a class folder without images, or splits whose class sets
  differ. Hidden entries, files of other types and nested folders in class
  folders are skipped, and said so in the log (a line for each kind).
  """
  classes, listing, _ = _scan(root, splits)
  return classes, listing


def _scan(root, splits: Sequence[str]):
  """`scan`'s result and every image's (size, mtime), all from one listing
  of the folder (one stat per image file at most)."""
  root = epath.Path(root)
  if not root.is_dir():
    raise ImageFolderError(f"image folder {root} does not exist (data_dir of "
                           f"dataset '{NAME}': ROOT/<split>/<class>/<image>)")
  found, stats, skipped = {}, {}, _Skipped()
  for split in dict.fromkeys(splits):
    class_dirs = _split_classes(root, split)
    found[split] = {}
    for folder, entries in zip(class_dirs, _list_folders(class_dirs)):
      images = skipped.images(entries, root)
      found[split][folder.name] = [e.path for e in images]
      stats.update((e.path, e.stat) for e in images)
  skipped.log(root)
  _check_classes(root, found)
  classes = sorted(found[next(iter(found))])
  listing = {split: [(p, label) for label, name in enumerate(classes)
                     for p in per_class[name]]
             for split, per_class in found.items()}
  return classes, listing, stats


def fingerprint(listing: Dict[str, List[Tuple[epath.Path, int]]],
                stats: Dict[epath.Path, Tuple[int, int]]) -> str:
  """A short hash of every image's split, label, name, size and mtime (the
  last two from `stats`, as the listing found them: nothing is stat'ed again)."""
  h = hashlib.sha256()
  for split in sorted(listing):
    for p, label in listing[split]:
      size, mtime = stats[p]
      h.update(f"{split}/{label}/{p.name}/{size}/{mtime}\n".encode())
  return h.hexdigest()[:16]


def _open_image(data: bytes) -> Image.Image:
  """`Image.open` (it reads the header only) with PIL's own pixel limit off,
  so that neither its DecompressionBombWarning nor its DecompressionBombError
  decides: `read_image` applies its own limit. PIL's limit is a module
  global: unset and restored under a lock."""
  with _PIL_LIMIT_LOCK:
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
      return Image.open(io.BytesIO(data))
    finally:
      Image.MAX_IMAGE_PIXELS = saved


def _reason(e: Exception) -> str:
  """Why a file could not be read, short and in one line."""
  if isinstance(e, Image.UnidentifiedImageError):
    return "not an image file PIL can read"   # its message names a BytesIO
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:100]}" if text else type(e).__name__


def read_image(path: epath.Path, max_pixels: int = MAX_PIXELS) -> Tuple[bytes, Tuple[int, int]]:
  """The encoded image to store (the file's bytes for RGB or grey JPEG/PNG,
  else the image converted to RGB PNG) and its (height, width). Raises
  BadImageError naming the file if it cannot be read and decoded in full, or
  if it has more than `max_pixels` pixels (known from its header, before any
  decoding: a small file can hold a huge image)."""
  try:
    data = path.read_bytes()
    with _open_image(data) as image:
      pixels = image.width * image.height
      if pixels > max_pixels:
        raise BadImageError(path, f"{pixels:,} pixels, over the limit of {max_pixels:,}: "
                                  f"a larger --config.max_image_pixels admits it")
      image.load()   # decodes every pixel: truncated or corrupt files fail here
      size = (image.height, image.width)
      if (image.format, image.mode) in _KEEP_AS_IS:
        return data, size
      out = io.BytesIO()
      image.convert("RGB").save(out, format="PNG")
      return out.getvalue(), size
  except BadImageError:
    raise
  except Exception as e:  # PIL raises many types for bad files
    raise BadImageError(path, _reason(e)) from None


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

  def __init__(self, root_dir, splits: Sequence[str], data_dir=None,
               max_pixels: int = MAX_PIXELS):
    self.root_dir = epath.Path(root_dir)
    self.max_pixels = max_pixels
    self.classes, self._listing, stats = _scan(self.root_dir, splits)
    self._sizes, self._bad, self._splits_done = set(), [], 0
    config = tfds.core.BuilderConfig(name=fingerprint(self._listing, stats),
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
    self._sizes, self._bad, self._splits_done = set(), [], 0
    return {split: self._generate_examples(split) for split in self._listing}

  def _generate_examples(self, split):
    """The split's images. A bad file is noted, not stored, and the check
    goes on: after the last split one error names them all (and TFDS keeps
    nothing of this preparation)."""
    for i, (path, label) in enumerate(self._listing[split]):
      try:
        data, size = read_image(path, self.max_pixels)
      except BadImageError as e:
        self._bad.append(e)
        continue
      self._sizes.add(size)
      yield i, {"image": data, "label": np.int64(label)}
    self._splits_done += 1
    if self._splits_done == len(self._listing):
      self._finish()

  def _finish(self):
    """After every split: the error for bad files, if any; else the shared
    image shape noted beside the prepared files."""
    if self._bad:
      total = sum(len(images) for images in self._listing.values())
      raise bad_images_error(self.root_dir, self._bad, total)
    shape = [*self._sizes.pop(), 3] if len(self._sizes) == 1 else None
    (epath.Path(self.data_dir) / IMAGE_SHAPE_FILE).write_text(
        json.dumps({"image_shape": shape}))
