"""Your own images: a folder `ROOT/<split>/<class>/<image>` as a TFDS dataset.

`--config.dataset=image_folder --config.data_dir=ROOT` trains on it. The
folder is listed and checked first (`folder_listing.scan`: both splits exist,
every class folder holds images, both splits have the same classes; which
files are images; labels are the sorted class folders, or the classes of
`class_subset` in its order, and only those folders are listed).

`ImageFolderBuilder` then prepares an ordinary TFDS copy of the folder once,
in ArrayRecord files, and the input pipeline reads that copy like any TFDS
dataset: the same per-process shards, shuffling, augmentation and exact
resume. On the way every image is decoded in full: unreadable or corrupt
files, and images of more than `max_pixels` pixels, are all found, then one
error names them, before any training. Images whose short side is larger
than `short_side` (the config's `prepare_size`) are resized to it; JPEG and
PNG files in RGB or grey that need no resizing are stored as they are;
other modes (palette, alpha, 16-bit, CMYK) are stored as RGB. Images are
read, decoded and resized in threads (`default_threads`), with progress
lines on a large folder.

The copy lives in `<TFDS data dir>/sgan_image_folder/<fingerprint>/` (the
TFDS data dir is `$TFDS_DATA_DIR`, default `~/tensorflow_datasets`). The
fingerprint hashes every image's path, size and modification time, as one
listing of the folder found them (one stat per image; in parallel threads on
gs://), and the class subset and preparation size where set, so a changed
folder or setting is prepared again rather than read stale.
"""
import collections
import concurrent.futures
import functools
import io
import json
import os
import threading
from typing import Optional, Sequence, Tuple

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from sgan_jax import progress
from sgan_jax.datasets import folder_listing
from sgan_jax.datasets.folder_listing import ImageFolderError

NAME = "image_folder"
# Written beside the prepared files: the one image shape, if all share one
# (then the device can augment them, `input_pipeline.fixed_image_shape`).
IMAGE_SHAPE_FILE = "image_shape.json"
FILE_FORMAT = "array_record"   # random access for the loader; written without TensorFlow
# An image with more pixels is refused, before decoding (a small file can
# hold a huge image): PIL's default limit, `Image.MAX_IMAGE_PIXELS`.
MAX_PIXELS = 89_478_485
MAX_NAMED = 20      # bad image files named in the error (if more, all are logged)
JPEG_QUALITY = 95   # of a JPEG stored resized (the prepare_size), chroma not subsampled
_KEEP_AS_IS = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}
_PIL_LIMIT_LOCK = threading.Lock()


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


def _target(height: int, width: int, short_side: int) -> Optional[Tuple[int, int]]:
  """(width, height) with the short side at `short_side`, the aspect kept;
  None if the short side is at most that already (images are never enlarged)."""
  short = min(height, width)
  if not short_side or short <= short_side:
    return None
  scale = short_side / short
  return (max(1, round(width * scale)), max(1, round(height * scale)))


def _encoded(image: Image.Image, fmt: str) -> bytes:
  out = io.BytesIO()
  if fmt == "JPEG":
    image.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0)   # 4:4:4
  else:
    image.save(out, format="PNG")
  return out.getvalue()


def read_image(path: epath.Path, max_pixels: int = MAX_PIXELS, short_side: int = 0
               ) -> Tuple[bytes, Tuple[int, int]]:
  """The encoded image to store and its (height, width).

  Stored: the file's bytes for an RGB or grey JPEG/PNG whose short side is at
  most `short_side` (or `short_side` 0); else the image, converted to RGB if
  it is in another mode, resized (antialiased bicubic) to that short side if
  it is larger, and encoded as JPEG (quality JPEG_QUALITY) if it was one,
  else as PNG. A JPEG to be resized is decoded at a reduced DCT scale first
  (at least twice the target size, as PIL's `thumbnail` does). Raises
  BadImageError naming the file if it cannot be read and decoded in full, or
  if it has more than `max_pixels` pixels (known from its header, before any
  decoding: a small file can hold a huge image).
  """
  try:
    data = path.read_bytes()
    with _open_image(data) as image:
      pixels = image.width * image.height
      if pixels > max_pixels:
        raise BadImageError(path, f"{pixels:,} pixels, over the limit of {max_pixels:,}: "
                                  f"a larger --config.max_image_pixels admits it")
      fmt, target = image.format, _target(image.height, image.width, short_side)
      if target is not None and fmt == "JPEG":
        image.draft(image.mode if image.mode in ("RGB", "L") else None,
                    (2 * target[0], 2 * target[1]))
      image.load()   # decodes every pixel: truncated or corrupt files fail here
      if target is None and (fmt, image.mode) in _KEEP_AS_IS:
        return data, (image.height, image.width)
      out = image if image.mode in ("RGB", "L") else image.convert("RGB")
      if target is not None:
        out = out.resize(target, Image.Resampling.BICUBIC)
      return _encoded(out, "JPEG" if fmt == "JPEG" else "PNG"), (out.height, out.width)
  except BadImageError:
    raise
  except Exception as e:  # PIL raises many types for bad files
    raise BadImageError(path, _reason(e)) from None


def _read_or_error(path, max_pixels: int, short_side: int):
  """`read_image`'s result, or the BadImageError (returned, not raised, so
  that one bad file does not stop the others)."""
  try:
    return read_image(path, max_pixels, short_side)
  except BadImageError as e:
    return e


def _in_order(pool, fn, items, ahead: int):
  """`fn(item)` for each item, run in `pool`, yielded in order, with at most
  `ahead` results waiting (memory stays bounded on any folder size)."""
  pending = collections.deque()
  for item in items:
    pending.append(pool.submit(fn, item))
    if len(pending) >= ahead:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


def stored_image_shape(data_dir) -> Optional[Tuple[int, int, int]]:
  """The (H, W, 3) all images of a prepared folder share, from its
  `IMAGE_SHAPE_FILE` (None if they vary, or if it has none)."""
  path = epath.Path(data_dir) / IMAGE_SHAPE_FILE
  if not path.exists():
    return None
  shape = json.loads(path.read_text())["image_shape"]
  return None if shape is None else tuple(shape)


def default_threads() -> int:
  """Threads that read, decode and resize images while a folder is prepared:
  two per core (PIL releases the GIL while it decodes, resizes and encodes;
  the second hides file reads)."""
  return 2 * (os.cpu_count() or 1)


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


class ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder for `ROOT/<split>/<class>/<image>` (see the module
  docstring). `classes`: the class folders to keep, in label order (default:
  all, sorted); `short_side`: the prepared images' short side at most (0:
  kept at their size); `threads`: readers while preparing."""
  name = "sgan_image_folder"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "2.0.0": "ArrayRecord files; the shared image shape recorded."}

  def __init__(self, root_dir, splits: Sequence[str], data_dir=None,
               max_pixels: int = MAX_PIXELS, classes: Optional[Sequence[str]] = None,
               short_side: int = 0, threads: Optional[int] = None):
    self.root_dir = epath.Path(root_dir)
    self.max_pixels, self.short_side = max_pixels, short_side
    self.threads = threads or default_threads()
    self.classes, self._listing, stats = folder_listing._scan(self.root_dir, splits, classes)
    self._sizes, self._bad, self._splits_done = set(), [], 0
    extra = ([f"classes {','.join(self.classes)}"] if classes is not None else []) + (
        [f"short side {short_side}"] if short_side else [])
    config = tfds.core.BuilderConfig(name=folder_listing.fingerprint(self._listing, stats, extra),
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
    listing = self._listing[split]
    report = progress.Progress(f"preparing {split} of image folder {self.root_dir}",
                               len(listing), "images")
    read = functools.partial(_read_or_error, max_pixels=self.max_pixels,
                             short_side=self.short_side)
    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
      results = _in_order(pool, read, [path for path, _ in listing], 8 * self.threads)
      for i, ((_, label), result) in enumerate(zip(listing, results)):
        report.update()
        if isinstance(result, BadImageError):
          self._bad.append(result)
          continue
        data, size = result
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
