"""A tiny model for tests: 16x16 inputs, a few thousand parameters."""
from sgan_jax import config_lib


def get_config():
  c = config_lib.reference_config()
  c.image_size = 16                 # smallest supported resolution
  c.global_batch_size = 8           # tiny batch
  c.num_train_steps = 4             # a few steps
  c.queue_size = 32                 # 4 batches of history
  c.log_every_steps = 2             # log, sample, checkpoint every 2 steps
  c.checkpoint_every_steps = 2
  c.sample_every_steps = 2
  c.eval_every_steps = 4            # evaluate at the end
  c.model.d_widths = (8, 16, 16)    # 3 D stages at 16x16
  c.model.d_blocks_per_stage = 1    # one block per stage
  c.model.embed_dim = 16            # small embedding
  c.model.g_ch = 4                  # G stage width 16, hidden 4
  c.model.g_depth = 1               # one (upsampling) block per stage
  c.model.z_dim = 16                # small latent
  c.eval.c_grid = (0.01, 1.0)       # two candidate Cs for the linear models
  c.eval.classifier_epochs = 2      # a quick classifier for G's metrics
  return c
