"""FID and Inception Score of G, as the field computes them (docs/method.md §6).

Features are those of `inception.FIDInceptionV3` with pytorch-fid's weights
(`pt_inception-2015-12-05-6726825d.pth`, named by `eval.inception_weights`;
read by `torch_files`, which runs nothing the file names). FID is the
Fréchet distance between Gaussians fitted to the 2048-d pool features of
`eval.fid_num_samples` G_ema images and of the whole train split (the
un-augmented evaluation view at the run's `image_size`); the train split's
statistics are computed once and cached as `.npz` in `eval.fid_cache_dir`
(default: the workdir). The Inception Score is the mean over 10 equal splits
of `exp(E KL(p(y|x) || p(y)))` of the 1008-way softmax.
"""
import functools
import io
from typing import Dict, Optional

from absl import logging
import jax
import numpy as np

from sgan_jax import errors, inception, storage, torch_files
from sgan_jax.generator_eval import frechet_distance, gaussian_stats, kl_score
from sgan_jax.utils import map_in_batches

IS_SPLITS = 10
SKIP_MESSAGE = ("FID and Inception Score skipped: set --config.eval.inception_weights="
                "PATH to pytorch-fid's pt_inception-2015-12-05-6726825d.pth to compute them")


def load_variables(path: storage.PathLike) -> Dict:
  """The network's variables from pytorch-fid's weights file; a file that is
  not that (damaged, crafted, another network) is a one-line ConfigError."""
  try:
    return inception.variables_from_torch(
        torch_files.load_state_dict(storage.path(path).read_bytes()))
  except ValueError as e:   # torch_files' refusals, inception's shape/key checks
    raise errors.ConfigError(f"eval.inception_weights={path}: {e}") from None


def check_weights(config) -> None:
  """Reads `eval.inception_weights` (if set) at start-up, so that a bad file
  stops the run before training rather than at its first evaluation."""
  if config.eval.inception_weights:
    load_variables(config.eval.inception_weights)


@jax.jit
def _inception_batch(variables, images):
  """(pool features, class probabilities) of one batch of images."""
  pool, logits = inception.FIDInceptionV3().apply(variables, images)
  return pool, jax.nn.softmax(logits)


def inception_outputs(variables, images, batch: int):
  """(pool features [N, 2048], class probabilities [N, 1008]) of [-1, 1]
  images, in batches of `batch`."""
  return map_in_batches(functools.partial(_inception_batch, variables),
                        np.asarray(images, np.float32), batch)


def inception_score(probs, splits: int = IS_SPLITS) -> float:
  return float(np.mean([kl_score(p) for p in np.array_split(np.asarray(probs), splits)]))


class InceptionMetrics:
  """FID and IS of image sets; `None` from `create` when no weights are set."""

  def __init__(self, config, variables, cache_dir: storage.PathLike):
    self.config, self.variables = config, variables
    self.cache_dir = storage.path(cache_dir)
    self.train_stats = None

  @classmethod
  def create(cls, config, workdir) -> Optional["InceptionMetrics"]:
    if not config.eval.inception_weights:
      logging.info(SKIP_MESSAGE)
      return None
    return cls(config, load_variables(config.eval.inception_weights),
               config.eval.fid_cache_dir or workdir)

  def _cache_path(self):
    c = self.config
    return self.cache_dir / f"fid_stats_{c.dataset}_{c.train_split}_{c.image_size}.npz"

  def fit(self, train_images_fn) -> None:
    """Loads the train statistics from the cache, or computes them from
    `train_images_fn()` and caches them."""
    path = self._cache_path()
    if storage.exists(path):
      stats = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
      self.train_stats = (stats["mu"], stats["sigma"])
      return
    pool, _ = inception_outputs(self.variables, train_images_fn(), self.config.eval.batch_size)
    self.train_stats = gaussian_stats(pool)
    if jax.process_index() == 0:
      buffer = io.BytesIO()
      np.savez(buffer, mu=self.train_stats[0], sigma=self.train_stats[1], n=len(pool))
      storage.makedirs(path.parent)
      storage.write_bytes(path, buffer.getvalue())

  def score(self, name: str, images) -> Dict[str, float]:
    pool, probs = inception_outputs(self.variables, images, self.config.eval.batch_size)
    return {f"gen/{name}/fid": frechet_distance(*gaussian_stats(pool), *self.train_stats),
            f"gen/{name}/inception_score": inception_score(probs)}
