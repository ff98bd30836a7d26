"""ImageNet-10 (the deep-clustering literature's 10 classes; the packaged
list `imagenet10`) at 64x64, with both networks grown one stage, from an
ImageNet folder (docs/method.md §5, "ImageNet-10 and ImageNet-100").

  python -m sgan_jax.main --config=configs/imagenet10.py --workdir=DIR \
      --config.data_dir=IMAGENET

IMAGENET holds `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG` (the official
archives, validation images sorted into class folders). Only the 10 listed
class folders are read; the prepared copy holds them at a short side of
2 x image_size. From TFDS instead: `--config.dataset=imagenet2012
--config.data_dir=TFDS_DIR --config.test_split=validation`.
"""
from sgan_jax import config_lib


def get_config():
  c = config_lib.reference_config()
  c.dataset = "image_folder"            # an ImageNet folder (or imagenet2012, see above)
  c.train_split = "train"               # its train/ folder: 13,000 images of these classes
  c.test_split = "val"                  # its val/ folder: 500 images
  c.class_subset = "imagenet10"         # the packaged list, in its order
  c.num_classes = 10
  c.image_size = 64                     # one doubling over CIFAR
  c.num_train_steps = 25_000            # ~985 epochs of 13,000 images at 512 (CIFAR's ~1000)
  c.model.d_widths = (64, 128, 256, 512, 512)  # one more D stage (64 -> 4)
  c.model.g_ch = 64                     # BigGAN 64x64 schedule: 1024 -> 128 channels
  return c
