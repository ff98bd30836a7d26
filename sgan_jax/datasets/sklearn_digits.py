"""The embedded default dataset: scikit-learn's bundled 8x8 digits as TFDS.

No network is needed: `download_and_prepare` reads the copy that ships inside
scikit-learn and writes an ordinary TFDS dataset in ArrayRecord files (a few
hundred KB). Images are stored PNG-encoded, so no TensorFlow is needed to
prepare or read it.
"""
import io

import numpy as np
from PIL import Image
from sklearn import datasets
import tensorflow_datasets as tfds

NUM_TEST = 297   # of 1,797 images; the rest (1,500) is the train split


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's digits (UCI optdigits test set), 8x8 RGB uint8, 10 classes."""
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "2.0.0": "ArrayRecord files, PNG-encoded images (no TensorFlow)."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=("scikit-learn's bundled 8x8 handwritten digits, grey "
                     "levels 0-16 scaled to 0-255 and repeated over RGB."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {"train": self._generate_examples(False),
            "test": self._generate_examples(True)}

  def _generate_examples(self, test):
    digits = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    chosen = order[:NUM_TEST] if test else order[NUM_TEST:]
    for i in chosen:
      grey = np.round(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
      png = io.BytesIO()
      Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(png, format="PNG")
      yield int(i), {"image": png.getvalue(), "label": int(digits.target[i])}
