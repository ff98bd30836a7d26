"""TFDS datasets that live in this project: the embedded digits (registered
with TFDS on import) and image folders (built from `config.data_dir`)."""
from sgan_jax.datasets.folder_listing import ImageFolderError
from sgan_jax.datasets.image_folder import ImageFolderBuilder
from sgan_jax.datasets.sklearn_digits import SklearnDigits

__all__ = ["ImageFolderBuilder", "ImageFolderError", "SklearnDigits"]
