"""Listing an image folder `ROOT/<split>/<class>/<image>`: which entries are
images and classes, the checks of its layout, and its fingerprint.

Classes are the sorted class-folder names (or, with `classes`, the named
folders in the given order); label i is the i-th of them. Image files are
those ending in .jpg, .jpeg or .png (any case); hidden entries (names
starting with '.', such as macOS `._*` files), other files and nested
folders are not part of the dataset, and the log says how many were skipped
(a line for each kind). A local folder is listed with one os.scandir per
folder and one stat per image; a remote one (gs://) in parallel threads.
"""
import collections
import concurrent.futures
import dataclasses
import hashlib
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
from etils import epath

from sgan_jax import storage
from sgan_jax.errors import ConfigError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LIST_THREADS = 32   # parallel round trips when listing a remote (gs://) folder


class ImageFolderError(ConfigError):
  """The image folder cannot serve as a dataset (one line: what and where)."""


class _Entry(NamedTuple):
  """An entry of a folder: its path, whether it is a folder, and for an image
  file its (size in bytes, modification time in whole seconds)."""
  path: epath.Path
  is_dir: bool
  stat: Optional[Tuple[int, int]]


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _local_entries(folder: epath.Path) -> List[_Entry]:
  """One os.scandir pass (it tells folders without a stat) and one stat per
  image file."""
  entries = []
  with os.scandir(folder) as found:
    for e in found:
      is_dir, stat = e.is_dir(), None
      if not is_dir and _is_image_name(e.name):
        st = os.stat(e.path)
        stat = (st.st_size, int(st.st_mtime))   # as epath's stat has them
      entries.append(_Entry(folder / e.name, is_dir, stat))
  return entries


def _remote_entry(path: epath.Path) -> _Entry:
  """One round trip at most: a stat for an image file, else is_dir (none for
  a hidden entry)."""
  if path.name.startswith("."):
    return _Entry(path, False, None)
  if not _is_image_name(path.name):
    return _Entry(path, path.is_dir(), None)
  st = path.stat()
  return _Entry(path, st.is_directory, None if st.is_directory else (st.length, st.mtime))


def _list_folders(folders: Sequence[epath.Path]) -> List[List[_Entry]]:
  """The entries of each folder. Local folders: one os.scandir each. Others
  (gs://...): all listed, then all entries checked, in parallel threads."""
  if not folders or not storage.is_remote(folders[0]):
    return [_local_entries(f) for f in folders]
  with concurrent.futures.ThreadPoolExecutor(LIST_THREADS) as pool:
    listed = list(pool.map(lambda f: list(f.iterdir()), folders))
    entries = iter(pool.map(_remote_entry, [p for paths in listed for p in paths]))
    return [[next(entries) for _ in paths] for paths in listed]


def _subfolders(folder: epath.Path) -> List[epath.Path]:
  """The folders in `folder`, sorted by name; hidden ones (`.ipynb_checkpoints`,
  `.DS_Store`-like names) are no split or class."""
  return sorted((e.path for e in _list_folders([folder])[0]
                 if e.is_dir and not e.path.name.startswith(".")),
                key=lambda p: p.name)


@dataclasses.dataclass
class _Skipped:
  """What class folders hold besides images; logged, a line for each kind."""
  hidden: int = 0
  types: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  folders: List[str] = dataclasses.field(default_factory=list)

  def images(self, entries: Sequence[_Entry], root: epath.Path) -> List[_Entry]:
    """The image files among a class folder's entries, sorted by name; the
    others are counted here."""
    images = []
    for e in entries:
      if e.path.name.startswith("."):
        self.hidden += 1
      elif e.is_dir:
        self.folders.append(os.fspath(e.path)[len(os.fspath(root)):].lstrip("/"))
      elif _is_image_name(e.path.name):
        images.append(e)
      else:
        self.types[os.path.splitext(e.path.name)[1].lower() or "no extension"] += 1
    return sorted(images, key=lambda e: e.path.name)

  def log(self, root: epath.Path):
    if self.hidden:
      logging.info("image folder %s: skipped %d hidden file(s) or folder(s) (names "
                   "starting with '.', such as macOS ._* files)", root, self.hidden)
    parts = []
    if self.types:
      counts = ", ".join(f"{t}: {n}" for t, n in sorted(self.types.items()))
      parts.append(f"{sum(self.types.values())} file(s) of types not read ({counts})")
    if self.folders:
      names = ", ".join(sorted(self.folders)[:5]) + (", ..." if len(self.folders) > 5 else "")
      parts.append(f"{len(self.folders)} nested folder(s) ({names})")
    if parts:
      logging.warning("image folder %s: skipped %s in class folders (only .jpg, .jpeg "
                      "and .png files directly in a class folder are images)",
                      root, " and ".join(parts))


def _split_classes(root: epath.Path, split: str) -> List[epath.Path]:
  """The class folders of `root/split`, sorted by name; ImageFolderError if
  there is no such folder or it has none."""
  folder = root / split
  if not folder.is_dir():
    present = ", ".join(p.name for p in _subfolders(root)) or "none"
    raise ImageFolderError(
        f"image folder {root} has no '{split}' folder (expected "
        f"{folder}/<class>/<image>; folders there: {present}); set "
        f"--config.train_split / --config.test_split to the split folders' names")
  classes = _subfolders(folder)
  if not classes:
    raise ImageFolderError(f"split folder {folder} has no class folders "
                           f"(expected {folder}/<class>/<image>)")
  return classes


def _check_classes(root: epath.Path, found: Dict[str, Dict[str, list]]):
  """ImageFolderError for a class folder without images, or splits whose
  class sets differ."""
  for split, per_class in found.items():
    for name, images in per_class.items():
      if not images:
        raise ImageFolderError(
            f"class folder {root / split / name} has no images (.jpg, .jpeg or "
            f".png); add images or remove the folder")
  first, *others = found
  for split in others:
    a, b = set(found[first]), set(found[split])
    if a != b:
      raise ImageFolderError(
          f"image folder {root}: splits '{first}' and '{split}' have different "
          f"classes (only in '{first}': {sorted(a - b) or 'none'}; only in "
          f"'{split}': {sorted(b - a) or 'none'}); both need the same class folders")


def _root(root) -> epath.Path:
  root = epath.Path(root)
  if not root.is_dir():
    raise ImageFolderError(f"image folder {root} does not exist (data_dir of "
                           f"dataset 'image_folder': ROOT/<split>/<class>/<image>)")
  return root


def class_folders(root, split: str) -> List[str]:
  """The class-folder names of `root/split`, sorted (one listing, no stat of
  any image); ImageFolderError if there is no such folder or it has none."""
  return [p.name for p in _split_classes(_root(root), split)]


def _chosen(root: epath.Path, split: str, classes: Sequence[str]) -> List[epath.Path]:
  """The folders of `classes` in `root/split`, in that order;
  ImageFolderError naming those that are missing."""
  present = {p.name for p in _split_classes(root, split)}
  missing = [c for c in classes if c not in present]
  if missing:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise ImageFolderError(
        f"image folder {root / split} has no class folder {', '.join(missing[:5])}{more} "
        f"(class_subset names them); every split needs a folder for each listed class")
  return [root / split / c for c in classes]


def scan(root, splits: Sequence[str], classes: Optional[Sequence[str]] = None
         ) -> Tuple[List[str], Dict[str, List[Tuple[epath.Path, int]]]]:
  """Checks `root` and lists it: `(classes, {split: [(image path, label)]})`.

  `classes`: only these class folders, labelled in this order (other
  folders are not listed at all); default: every class folder, sorted.
  Raises ImageFolderError for a missing root or split folder, a split without
  class folders, a missing listed class, a class folder without images, or
  splits whose class sets differ. Hidden entries, files of other types and
  nested folders in class folders are skipped, and said so in the log (a
  line for each kind).
  """
  classes, listing, _ = _scan(root, splits, classes)
  return classes, listing


def _scan(root, splits: Sequence[str], classes: Optional[Sequence[str]] = None):
  """`scan`'s result and every image's (size, mtime), all from one listing
  of the folder (one stat per image file at most)."""
  root = _root(root)
  found, stats, skipped = {}, {}, _Skipped()
  for split in dict.fromkeys(splits):
    class_dirs = (_split_classes(root, split) if classes is None
                  else _chosen(root, split, classes))
    found[split] = {}
    for folder, entries in zip(class_dirs, _list_folders(class_dirs)):
      images = skipped.images(entries, root)
      found[split][folder.name] = [e.path for e in images]
      stats.update((e.path, e.stat) for e in images)
  skipped.log(root)
  _check_classes(root, found)
  names = sorted(found[next(iter(found))]) if classes is None else list(classes)
  listing = {split: [(p, label) for label, name in enumerate(names)
                     for p in per_class[name]]
             for split, per_class in found.items()}
  return names, listing, stats


def fingerprint(listing: Dict[str, List[Tuple[epath.Path, int]]],
                stats: Dict[epath.Path, Tuple[int, int]],
                extra: Sequence[str] = ()) -> str:
  """A short hash of every image's split, label, name, size and mtime (the
  last two from `stats`, as the listing found them: nothing is stat'ed again),
  and of the `extra` lines (settings that change the prepared copy: the
  listed classes, the preparation size). Without `extra` it is the hash that
  copies prepared before those settings existed carry."""
  h = hashlib.sha256()
  for split in sorted(listing):
    for p, label in listing[split]:
      size, mtime = stats[p]
      h.update(f"{split}/{label}/{p.name}/{size}/{mtime}\n".encode())
  for line in extra:
    h.update(f"{line}\n".encode())
  return h.hexdigest()[:16]
