"""What the host does to each image on its way to the model: grain transforms
that run in the loader's worker processes (NumPy and grain only, no JAX, no
TensorFlow; `sgan_jax.input_pipeline` builds the loaders from them).

- `Records`: one split as random-access `{"image": uint8 [H, W, 3], "label":
  int32}` records, restricted to a class subset and renumbered if asked;
  `read_many` reads a batch of them at once (the file reads in parallel).
- `ReadBatch`: a batch of record keys -> the batch the model sees: uint8
  images for the device's augmentation (`sgan_jax.device_augment`), or the
  training view (`random_crop_flip`: random resized crop and flip,
  `sgan_jax.image_ops`), or the test view (the central square resized),
  float32 in [-1, 1].
"""
import dataclasses
from typing import Optional, Sequence

import numpy as np

from sgan_jax import image_ops


class Records:
  """A random-access view of a TFDS data source (or any sequence of
  `{"image", "label"}` dicts): grey images become RGB, `indices` restrict it
  to some records, `label_map` renumbers labels (an array, old -> new)."""

  def __init__(self, source, indices: Optional[Sequence[int]] = None,
               label_map: Optional[np.ndarray] = None):
    self._source = source
    self._indices = None if indices is None else np.asarray(indices, np.int64)
    self._label_map = label_map

  def __len__(self) -> int:
    return len(self._source) if self._indices is None else len(self._indices)

  def __getitem__(self, i):
    return self.read_many([i])[0]

  def read_many(self, keys):
    """The records at `keys`, read together (one call of the source's
    `__getitems__` where it has one: ArrayRecord reads them in parallel)."""
    keys = [int(k) if self._indices is None else int(self._indices[int(k)]) for k in keys]
    getitems = getattr(self._source, "__getitems__", None)
    examples = getitems(keys) if getitems else [self._source[k] for k in keys]
    return [self._record(e) for e in examples]

  def _record(self, example):
    image = np.asarray(example["image"], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    label = int(example["label"])
    if self._label_map is not None:
      label = int(self._label_map[label])
    return {"image": image, "label": np.int32(label)}

  def __repr__(self):   # grain logs it; the default repr is unreadable
    return f"Records({len(self)} records)"


def random_crop_flip(images, size: int, rng: np.random.Generator) -> np.ndarray:
  """Random resized crop and flip of each uint8 image of `images` (a list)
  to `size` x `size`: [N, size, size, 3] float32 in [0, 255]. The boxes and
  flips are drawn from `rng` first ([N, attempts, 4] uniforms, [N] flips);
  images of one shape are resampled together."""
  n = len(images)
  u = rng.random((n, image_ops.MAX_ATTEMPTS, image_ops.DRAWS_PER_ATTEMPT), dtype=np.float32)
  flips = rng.random(n) < 0.5
  if len({im.shape for im in images}) == 1:
    boxes = image_ops.crop_box(u, images[0].shape[0], images[0].shape[1])
    return image_ops.crop_and_resize_np(np.stack(images), boxes, size, flips)
  return np.stack([image_ops.crop_and_resize_np(
      im, image_ops.crop_box(u[i], im.shape[0], im.shape[1]), size, flips[i])
                   for i, im in enumerate(images)])


def center_resize(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> its central square resized to `size` (0-255 float32).
  At `size` x `size` already this is the image itself (the cubic kernel
  interpolates exactly at the pixel centres)."""
  if image.shape[:2] == (size, size):
    return image.astype(np.float32)
  box = image_ops.center_box(image.shape[0], image.shape[1])
  return image_ops.crop_and_resize_np(image, box, size, False)


UINT8, AUGMENT, CENTER = "uint8", "augment", "center"   # what ReadBatch makes


@dataclasses.dataclass(frozen=True)
class ReadBatch:
  """`(batch_index, keys) -> {"image", "label"}`: reads the records at `keys`
  and makes each image `view`: UINT8 (as stored; the images must share one
  size), AUGMENT (`random_crop_flip`, float32 in [-1, 1]; the batch at
  position `batch_index` of the stream draws from the generator seeded by
  (seed, stream, batch_index), so a resumed stream repeats the same crops;
  `stream` tells the processes' shards apart) or CENTER
  (`center_resize`, float32 in [-1, 1])."""
  records: Records
  view: str
  size: int
  seed: int = 0
  stream: int = 0

  def __call__(self, batch_index: int, keys):
    rows = self.records.read_many(keys)
    images = [r["image"] for r in rows]
    if self.view == UINT8:
      images = np.stack(images)
    elif self.view == AUGMENT:
      rng = np.random.default_rng([self.seed, self.stream, int(batch_index)])
      images = image_ops.to_unit_range(random_crop_flip(images, self.size, rng))
    else:
      images = image_ops.to_unit_range(
          np.stack([center_resize(image, self.size) for image in images]))
    return {"image": images, "label": np.asarray([r["label"] for r in rows], np.int32)}
