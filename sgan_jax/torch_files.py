"""Reads PyTorch `state_dict` files (`torch.save`) into NumPy without torch,
and without running anything the file names.

A `.pth` file is a pickle. Unpickling an arbitrary pickle can call any
Python function, so this reader accepts only what a saved `state_dict` of
tensors needs (an `OrderedDict`, torch's tensor rebuild functions and its
storage types) and refuses every other global with `UnsafeFileError`. Both
of torch's layouts are read: the zip archive (torch >= 1.6, `data.pkl` and
one `data/<key>` member per storage) and the older sequential one (magic
number, protocol, system info, the object pickle, the storage keys, then
each storage's bytes).

The file also gives each tensor's storage offset, sizes and strides. They
are checked before any view is taken: integers from 0 to 2**63 - 1, and
every element inside the storage's bytes that are actually there. Anything
else (a tensor reaching outside its storage, a storage whose bytes are
missing or short, a file that is not torch.save's) is a one-line
`TorchFileError`, never a read of other memory.
"""
import collections
import io
import math
import pickle
import reprlib
import struct
import zipfile
import zlib
from typing import Dict, Optional

import numpy as np

from sgan_jax import errors

_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
           "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
           "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
           "BoolStorage": np.bool_}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_PICKLE_PROTO = b"\x80"   # a pickle of protocol 2 or later (torch.save's) begins so
# Offsets, sizes and strides are int64 in torch.
_MAX_INT = 2**63 - 1
_MAX_DIMS = 32
# A tensor may hold more bytes than its storage (a broadcast stride of 0)
# up to this much; more is refused rather than allocated.
_MAX_EXPANDED_BYTES = 2**28
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother = 120, 120


class TorchFileError(errors.UserError, ValueError):
  """The file is not a tensor `state_dict` this reader can read safely. The
  message is one line; it names the tensor and says what is wrong."""


class UnsafeFileError(TorchFileError, pickle.UnpicklingError):
  """The file asks for something a tensor `state_dict` never needs."""


class _Storage:
  """A storage's element type and bytes; `problem` says why it has none."""

  def __init__(self, key: str, dtype, numel):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.data: Optional[np.ndarray] = None
    self.problem: Optional[str] = "has no bytes in the file"

  def set_bytes(self, raw: bytes, byteorder: str):
    """Takes `raw` as the storage's elements, or records why not."""
    item = np.dtype(self.dtype).itemsize
    if not _is_count(self.numel):
      self.problem = f"declares {_REPR.repr(self.numel)} elements"
    elif len(raw) < self.numel * item:
      self.problem = (f"has {len(raw)} bytes, fewer than the {self.numel * item} its "
                      f"header declares")
    elif len(raw) % item:
      self.problem = f"has {len(raw)} bytes, not a whole number of {item}-byte elements"
    else:
      self.problem = None
      self.data = np.frombuffer(raw, np.dtype(self.dtype).newbyteorder(byteorder))


def _is_count(value) -> bool:
  """Whether `value` is an int (not a bool) from 0 to 2**63 - 1."""
  return type(value) is int and 0 <= value <= _MAX_INT  # pylint: disable=unidiomatic-typecheck


def _is_shape(value) -> bool:
  return isinstance(value, (tuple, list)) and all(_is_count(v) for v in value)


def _layout_problem(t) -> Optional[str]:
  """What is wrong with tensor `t`'s storage or layout, or None: every
  element it views must lie in its storage (checked with Python ints)."""
  s = t.storage
  if not isinstance(s, _Storage):
    return f"its storage is a {type(s).__name__}, not a storage"
  if s.problem:
    return f"its storage {_REPR.repr(s.key)} {s.problem}"
  if not (_is_count(t.offset) and _is_shape(t.size) and _is_shape(t.stride)):
    return (f"storage offset {_REPR.repr(t.offset)}, sizes {_REPR.repr(t.size)} and "
            f"strides {_REPR.repr(t.stride)} must be integers from 0 to 2**63-1")
  if len(t.size) != len(t.stride):
    return f"{len(t.size)} sizes but {len(t.stride)} strides"
  if len(t.size) > _MAX_DIMS:
    return f"{len(t.size)} dimensions, more than {_MAX_DIMS}"
  numel, item = len(s.data), s.data.itemsize
  need = math.prod(max(n, 1) for n in t.size) * item
  if need > max(numel * item, _MAX_EXPANDED_BYTES):
    return (f"sizes {_REPR.repr(tuple(t.size))} need {need} bytes, its storage has "
            f"{numel * item}")
  if 0 in t.size:
    last = t.offset - 1
  else:
    last = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride))
  if last >= numel:
    return (f"storage offset {t.offset}, sizes {tuple(t.size)} and strides "
            f"{tuple(t.stride)} reach element {last}, beyond its storage of {numel}")
  return None


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def numpy(self, name) -> np.ndarray:
    """A copy of the values, once their layout is checked; raises
    TorchFileError naming the tensor `name` otherwise."""
    problem = _layout_problem(self)
    if problem:
      raise TorchFileError(f"tensor {_REPR.repr(name)}: {problem} (the file is damaged, "
                           f"or was not written by torch.save)")
    data, shape = self.storage.data, tuple(self.size)
    if 0 in shape:
      return np.empty(shape, data.dtype)
    strides = tuple(0 if n == 1 else st * data.itemsize for n, st in zip(shape, self.stride))
    return np.lib.stride_tricks.as_strided(data[self.offset:], shape=shape,
                                           strides=strides).copy()


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
  return data


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}
_ALLOWED.update({("torch", name): dtype for name, dtype in _DTYPES.items()})


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, storages: Dict[str, _Storage]):
    super().__init__(file)
    self.storages = storages

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise UnsafeFileError(f"refusing '{module}.{name}': a tensor state_dict never "
                            f"needs it (the file may run code when loaded by torch)")
    return _ALLOWED[(module, name)]

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise UnsafeFileError(f"unexpected persistent id {_REPR.repr(pid)}")
    dtype, key = pid[1], str(pid[2])
    if dtype not in _DTYPES.values():
      raise UnsafeFileError(f"unsupported storage type {_REPR.repr(dtype)}")
    return self.storages.setdefault(key, _Storage(key, dtype, pid[4]))


def _read_zip(data: bytes):
  with zipfile.ZipFile(io.BytesIO(data)) as z:
    names = set(z.namelist())
    pkls = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkls) != 1:
      raise TorchFileError(f"the archive has {len(pkls)} data.pkl members, not one: not "
                           f"a file torch.save writes")
    prefix = pkls[0][:-len("data.pkl")]
    storages: Dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(z.read(pkls[0])), storages).load()
    order = z.read(prefix + "byteorder").decode() if prefix + "byteorder" in names \
        else "little"
    for key, s in storages.items():
      if f"{prefix}data/{key}" not in names:
        s.problem = f"is missing: the archive has no data/{_REPR.repr(key)[1:-1]}"
      else:
        s.set_bytes(z.read(f"{prefix}data/{key}"), "<" if order == "little" else ">")
  return obj


def _read_legacy(data: bytes):
  if not data.startswith(_PICKLE_PROTO):
    # E.g. a truncated zip archive ("PK..."), which a pickle reader would
    # take for opcodes (P: a persistent id, up to the next newline byte).
    raise TorchFileError(f"not a file torch.save writes (neither a zip archive nor a "
                         f"pickle: it begins {_REPR.repr(data[:4])})")
  f = io.BytesIO(data)
  if _Unpickler(f, {}).load() != _LEGACY_MAGIC:
    raise TorchFileError("not a file torch.save writes (bad magic number)")
  _Unpickler(f, {}).load()   # protocol version
  _Unpickler(f, {}).load()   # system info (a dict of plain values)
  storages: Dict[str, _Storage] = {}
  obj = _Unpickler(f, storages).load()
  keys = _Unpickler(f, {}).load()
  if not isinstance(keys, list) or any(str(k) not in storages for k in keys):
    raise TorchFileError("the list of storage keys does not match the tensors' storages")
  for key in keys:
    header = f.read(8)
    if len(header) < 8:
      break   # the file ends here: the storages left keep "has no bytes"
    s = storages[str(key)]
    (s.numel,) = struct.unpack("<q", header)
    if s.numel < 0:
      s.problem = f"declares {s.numel} elements"
      break
    s.set_bytes(f.read(min(s.numel * np.dtype(s.dtype).itemsize, len(data))), "<")
  return obj


def _read(data: bytes):
  """The unpickled object; any way the file is malformed is a TorchFileError."""
  try:
    if zipfile.is_zipfile(io.BytesIO(data)):
      return _read_zip(data)
    return _read_legacy(data)
  except TorchFileError:
    raise
  except (pickle.UnpicklingError, zipfile.BadZipFile, zlib.error, NotImplementedError,
          EOFError, struct.error, ValueError, TypeError, AttributeError, IndexError,
          KeyError, UnicodeError) as e:
    detail = " ".join(f"{type(e).__name__}: {e}".split())
    raise TorchFileError(f"not a file torch.save writes ({detail[:300]})") from e


def load_state_dict(data: bytes) -> Dict[str, np.ndarray]:
  """`{name: array}` of a `torch.save`d `state_dict`, given the file's bytes.

  Raises TorchFileError (one line) for a file this reader refuses: one that
  names a global a state_dict never needs (UnsafeFileError), a tensor that
  reaches outside its storage, a storage whose bytes are missing, or a file
  that is not torch.save's at all.
  """
  obj = _read(data)
  if not isinstance(obj, dict):
    raise TorchFileError(f"the file holds a {type(obj).__name__}, not a state_dict")
  return {k: v.numpy(k) if isinstance(v, _Tensor) else np.asarray(v) for k, v in obj.items()}
