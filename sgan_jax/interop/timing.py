"""Times the authors' PyTorch training step next to sgan_jax's
(`python -m sgan_jax.benchmark --official_dir=DIR`, which times `ReferenceTimer.step`).

The authors' step is `ReferenceTrainer.step` (their modules, loss functions
and optimisers; `collect=False`, so nothing is copied out) on random images
in [-1, 1] and random z, u and labels, float32. Their networks exist at one
architecture only, the reference's (`configs/cifar10.py`: ResNet-18 D, BigGAN
G at 32x32), so only that model config can be compared. PyTorch runs where
JAX runs: on the CPU (in PyTorch's default thread count) when JAX does, on the
CUDA GPU when JAX runs on a GPU (each step synchronised before its time is
taken); on other backends (TPU) the comparison is refused rather than timed
on another device.
"""
import statistics

import numpy as np

from sgan_jax import config_lib, errors
from sgan_jax.interop import comparison
from sgan_jax.state import StepSpec


def check_comparable(config, backend: str) -> None:
  """Raises ConfigError, in one line, when the authors' step cannot be timed
  against `config`'s on `backend`."""
  reference = config_lib.reference_config()
  if (config.model.to_dict() != reference.model.to_dict()
      or config.image_size != reference.image_size):
    raise errors.ConfigError(
        "--official_dir times the authors' networks, which exist only at the "
        "reference architecture (configs/cifar10.py: image_size 32 and its "
        "model.* fields); drop the --config.model.* / image_size overrides")
  if backend not in ("cpu", "gpu"):
    raise errors.ConfigError(
        f"--official_dir runs the authors' step with PyTorch on the CPU or a "
        f"CUDA GPU, but JAX runs on '{backend}': timing them on different "
        f"devices compares nothing; run with JAX_PLATFORMS=cpu")


def torch_device(backend: str) -> str:
  """Where the authors' step runs to be compared with JAX on `backend`.
  Raises ConfigError if PyTorch cannot run there."""
  if backend != "gpu":
    return "cpu"
  import torch  # pylint: disable=import-outside-toplevel
  if not torch.cuda.is_available():
    raise errors.ConfigError(
        "JAX runs on a GPU but this PyTorch sees no CUDA device "
        f"(torch {torch.__version__}): install a CUDA build of torch, or run "
        "with JAX_PLATFORMS=cpu")
  return "cuda"


class ReferenceTimer:
  """The authors' trainer at `config`'s batch, timed step by step."""

  def __init__(self, official_dir: str, config, seed: int = 0, device: str = "cpu"):
    # torch only here: the benchmark runs without it when not comparing.
    import torch  # pylint: disable=import-outside-toplevel
    from sgan_jax.interop import reference  # pylint: disable=import-outside-toplevel
    self.torch = torch
    spec = StepSpec.from_config(config)
    self.trainer = reference.ReferenceTrainer(
        reference.import_reference(official_dir), spec, seed, "float32", device)
    self.device = device
    inputs = comparison.draw_step_inputs(np.random.default_rng(seed), spec,
                                         config.global_batch_size)
    # float32 already, so the timed step does not also convert the batch.
    self.args = tuple(a.astype(np.float32) if a.dtype == np.float64 else a
                      for a in inputs)

  @property
  def threads(self) -> int:
    return self.torch.get_num_threads()

  def step(self):
    """One step of the authors' code on the fixed inputs (nothing copied out)."""
    self.trainer.step(*self.args, collect=False)
    if self.device != "cpu":   # CUDA runs asynchronously: time the work, not the launch
      self.torch.cuda.synchronize()


def paired_figures(own_times, reference_times, batch: int):
  """The figures of paired rounds: per-round medians of each, the overall
  medians and the ratio sgan_jax / authors (below 1: sgan_jax is faster)."""
  own = [statistics.median(t) for t in own_times]
  ref = [statistics.median(t) for t in reference_times]
  own_all = statistics.median([x for t in own_times for x in t])
  ref_all = statistics.median([x for t in reference_times for x in t])
  return {"paired_rounds": len(own), "round_medians_s": own,
          "reference_round_medians_s": ref,
          "reference_step_time_median_s": ref_all,
          "reference_images_per_s": batch / ref_all,
          "paired_step_time_median_s": own_all,
          "step_time_ratio_to_reference": own_all / ref_all}
