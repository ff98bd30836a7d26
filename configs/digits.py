"""The embedded default: scikit-learn's digits (no download), small networks
sized so that the whole job finishes in minutes on a 2-core CPU."""
from sgan_jax import config_lib


def get_config():
  c = config_lib.reference_config()
  c.dataset = "sklearn_digits"      # project-local TFDS builder, built offline
  c.image_size = 16                 # the 8x8 digits, upsampled (bicubic)
  c.global_batch_size = 32          # a CPU-sized batch
  c.num_train_steps = 400           # ~8.5 epochs of the 1,500 train images
  c.queue_size = 1024               # 32 batches of history
  c.log_every_steps = 50            # progress line every 50 steps
  c.checkpoint_every_steps = 200    # two checkpoints
  c.sample_every_steps = 200        # two sample grids
  c.eval_every_steps = 400          # evaluate at the end only
  c.model.d_widths = (32, 64, 128)  # 3 stages at 16x16
  c.model.d_blocks_per_stage = 1    # one block per stage
  c.model.g_ch = 16                 # G stages of 64 channels (hidden 16)
  c.model.g_depth = 1               # one upsampling block per stage
  c.optim.g_lr = 1e-3               # 5x D's: at 2e-4, G is still colour noise at step 400 (docs/results.md)
  return c
