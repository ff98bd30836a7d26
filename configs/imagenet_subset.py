"""A quick start on ImageNet images at 64x64, with both networks grown one
stage (docs/method.md §2.3): imagenette (10 ImageNet classes fast.ai chose),
which TFDS downloads by itself (~100 MB).

The paper's subsets are `configs/imagenet10.py` and `configs/imagenet100.py`
(from an ImageNet folder or TFDS imagenet2012).
"""
from sgan_jax import config_lib


def get_config():
  c = config_lib.reference_config()
  c.dataset = "imagenette/160px-v2"     # TFDS fetches it (~100 MB)
  c.test_split = "validation"           # imagenette has no test split
  c.num_classes = 10                    # imagenette's classes
  c.image_size = 64                     # one doubling over CIFAR
  c.num_train_steps = 100_000           # ~5,300 epochs of 9,469 images at 512
  c.model.d_widths = (64, 128, 256, 512, 512)  # one more D stage (64 -> 4)
  c.model.g_ch = 64                     # BigGAN 64x64 schedule: 1024 -> 128 channels
  return c
