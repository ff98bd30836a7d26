"""Which classes a run keeps: `config.class_subset`.

The value lists classes by name (an image folder's class-folder names,
e.g. ImageNet's WordNet ids `n01440764`; a TFDS dataset's label names) or by
label id, separated by commas, spaces or newlines. It may also be the path of
a text file holding such a list, or the name of a list shipped with the
package (`imagenet10`, `imagenet100`: files `<name>.txt` beside the packaged
configs). In a file, `#` starts a comment.

A token that is one of the dataset's class names is that class; otherwise an
integer token is a label id (the dataset's own numbering: for an image folder
the position of the folder among the sorted class folders). Names win: a
folder of classes `0`, `1`, ... `10` is named, not numbered. The run's labels
follow the list's order: label i is the list's i-th class.
"""
import importlib.resources
import os
import re
from typing import Optional, Sequence, Tuple

from sgan_jax.errors import ConfigError

LISTS_PACKAGE = "sgan_jax.configs"   # where the named lists are shipped
_SEPARATORS = re.compile(r"[\s,]+")


def packaged_lists() -> dict:
  """{name: file} of the class lists shipped with the package."""
  folder = importlib.resources.files(LISTS_PACKAGE)
  return {f.name[:-4]: f for f in folder.iterdir() if f.name.endswith(".txt")}


def _text(spec: str) -> str:
  """The list itself: a file's text, a packaged list's, or `spec`."""
  if os.path.isfile(spec):
    with open(spec) as f:
      return f.read()
  lists = packaged_lists()
  if spec in lists:
    return lists[spec].read_text()
  return spec


def tokens(spec: str) -> Optional[Tuple[str, ...]]:
  """The class names or ids `spec` lists, in order; None for "" (all
  classes). ConfigError (one line) for an empty list or a repeated class."""
  if not spec:
    return None
  text = "\n".join(line.split("#", 1)[0] for line in _text(spec).splitlines())
  found = tuple(t for t in _SEPARATORS.split(text) if t)
  if not found:
    raise ConfigError(f"class_subset {spec!r} lists no classes; give names or ids "
                      f"(\"n01440764,n01443537\", \"3,7,9\"), a file of them, or one "
                      f"of the packaged lists ({', '.join(sorted(packaged_lists()))})")
  repeated = sorted({t for t in found if found.count(t) > 1})
  if repeated:
    raise ConfigError(f"class_subset {spec!r} lists {', '.join(repeated[:5])} more than "
                      f"once; each class may appear once")
  return found


def resolve(spec: str, names: Sequence[str], where: str) -> Optional[Tuple[int, ...]]:
  """The label ids (in the dataset's `names`) of the classes `spec` lists,
  in the list's order; None for "". ConfigError (one line) naming the
  tokens that are neither a class name nor a label id of the dataset
  (`where` says which one)."""
  listed = tokens(spec)
  if listed is None:
    return None
  index = {str(name): i for i, name in enumerate(names)}
  ids, unknown = [], []
  for t in listed:
    if t in index:
      ids.append(index[t])
    elif re.fullmatch(r"\d+", t) and int(t) < len(names):
      ids.append(int(t))
    else:
      unknown.append(t)
  if unknown:
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    raise ConfigError(
        f"class_subset: {', '.join(unknown[:5])}{more} not among the {len(names)} "
        f"classes of {where} (neither a class name nor a label id 0-{len(names) - 1}); "
        f"check the list against the dataset's classes")
  if len(set(ids)) != len(ids):
    raise ConfigError(f"class_subset {spec!r} names one class twice (by name and by "
                      f"label id); list each class once")
  return tuple(ids)
