"""ImageNet-100 (CMC's 100 classes, the self-supervised literature's; the
packaged list `imagenet100`): `imagenet10.py` with the other list and a
longer schedule (docs/method.md §5, "ImageNet-10 and ImageNet-100").

  python -m sgan_jax.main --config=configs/imagenet100.py --workdir=DIR \
      --config.data_dir=IMAGENET

IMAGENET holds `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`; only the 100
listed class folders are read (about 126,700 train and 5,000 val images).
"""
from sgan_jax.configs import imagenet10


def get_config():
  c = imagenet10.get_config()
  c.class_subset = "imagenet100"        # the packaged list, in its order
  c.num_classes = 100
  c.num_train_steps = 100_000           # ~400 epochs of ~126,700 images at 512
  return c
