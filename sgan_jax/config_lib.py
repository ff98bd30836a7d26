"""The reference configuration (SPEC 6) that every file in `configs/` starts
from, and loading of config files by path.

Config files are Python and are *executed* when loaded: only load files you
trust.
"""
import importlib.util
import os

import ml_collections


def reference_config() -> ml_collections.ConfigDict:
  """CIFAR-10 at the reference code's settings (SPEC 2.1, 2.2, 6)."""
  c = ml_collections.ConfigDict()
  c.dataset = "cifar10"          # TFDS dataset name
  c.data_dir = ""                # TFDS data_dir; "" means TFDS's default
  c.image_size = 32              # square input/output resolution: 16, 32, 64 or 128
  c.num_classes = 10             # classes of the online probe and evaluation
  c.global_batch_size = 512      # images per step over all devices and hosts
  c.num_train_steps = 97_000     # ~1000 epochs of CIFAR's 50k at batch 512
  c.seed = 0                     # seeds init, the step's noise and the input order
  c.queue_size = 10240           # K, memory-queue rows; a multiple of the batch
  c.augment = True               # flip + random resized crop on real images (SPEC 6)
  c.log_every_steps = 100        # progress line and metrics every N steps
  c.checkpoint_every_steps = 1000  # checkpoint every N steps (and at the end)
  c.sample_every_steps = 1000    # G_ema sample grid every N steps (and at the end)
  c.eval_every_steps = 5000      # feature evaluation every N steps (and at the end)

  c.model = m = ml_collections.ConfigDict()
  m.d_widths = (64, 128, 256, 512)  # D stage widths, one per halving to 4x4
  m.d_blocks_per_stage = 2       # basic blocks per D stage (ResNet-18: 2)
  m.embed_dim = 128              # width of the embedding e/z
  m.channels_per_group = 16      # GroupNorm channels per group in D
  m.g_ch = 128                   # G base width; stage widths are multiples of it
  m.g_depth = 2                  # G blocks per up-stage
  m.z_dim = 128                  # G latent size

  c.loss = l = ml_collections.ConfigDict()
  l.eps = 0.5                    # coding-rate distortion of gaussian_jsd
  l.knn_k = 1                    # neighbours per row in knn_similarities
  l.skip_nearest_fake = True     # SPEC 9: fakes also skip their nearest neighbour
  l.renormalize_mean = True      # SPEC 4.1: renormalise the mean to unit length
  l.jacobian_iters = 1           # SPEC 9: power iterations for jacobian_sigma
  l.knn_weight = 3.0             # weight of the fine-scale (k-NN) terms
  l.smoothness_weight = 5.0      # weight of the Jacobian smoothness penalty
  l.norm_hinge_weight = 20.0     # weight of the embedding-norm hinge
  l.probe_weight = 1.0           # weight of the online probe's cross-entropy

  c.optim = o = ml_collections.ConfigDict()
  o.d_lr = 2e-4                  # D (AdamW) learning rate, constant
  o.g_lr = 2e-4                  # G (Adam) learning rate, constant
  o.b1 = 0.5                     # Adam beta1 (both)
  o.b2 = 0.999                   # Adam beta2 (both)
  o.adam_eps = 1e-8              # Adam epsilon (both)
  o.d_weight_decay = 0.1         # AdamW decoupled weight decay on D and probe
  o.ema_decay = 0.99             # per-step EMA momentum of D_ema and G_ema
  return c


def load_config(path: str) -> ml_collections.ConfigDict:
  """Executes the config file at `path` and returns its `get_config()`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location("_sgan_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
