"""G's samples: images of a batch of latents, and sample grids from G_ema as
PNG files and TensorBoard images."""
import functools
import io

import jax
import numpy as np
from PIL import Image

from sgan_jax import storage
from sgan_jax.state import StepSpec
from sgan_jax.step import generate


def fixed_latents(spec: StepSpec, seed: int, num: int = 64):
  """The same latents at every call, so that grids over a run are comparable."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5A3)
  # NumPy: the same host value on every process, replicated by jit.
  return np.asarray(jax.random.normal(key, (num, spec.model.z_dim)))


@functools.partial(jax.jit, static_argnums=0)
def generate_batch(spec: StepSpec, g_params, g_state, z):
  """G(z) for one batch of latents. G runs with batch statistics (as the
  reference always does); its state is read, not advanced."""
  return generate(spec, g_params, g_state, z)[0]


def make_grid(images: np.ndarray, pad: int = 1) -> np.ndarray:
  """[N, H, W, 3] in [-1, 1] -> one uint8 image of a near-square grid."""
  n, h, w, c = images.shape
  cols = int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  pixels = np.clip((np.asarray(images) + 1.0) * 127.5, 0, 255).astype(np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    grid[y:y + h, x:x + w] = pixels[i]
  return grid


def samples_path(workdir: storage.PathLike, step: int):
  return storage.path(workdir) / "samples" / f"samples_{step:07d}.png"


def save_samples(state, z, workdir: storage.PathLike, logger=None):
  """Writes G_ema(z) as `workdir/samples/samples_<step>.png`; returns the path."""
  images = jax.device_get(generate_batch(state.spec, state.g_ema_params,
                                          state.g_state, z))
  grid = make_grid(images)
  step = int(state.step)
  path = samples_path(workdir, step)
  if jax.process_index() == 0:
    storage.makedirs(path.parent)
    png = io.BytesIO()
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2),
                                 Image.NEAREST).save(png, "PNG")
    storage.write_bytes(path, png.getvalue())
  if logger is not None:
    logger.images(step, {"samples": grid[None]})
  return path
