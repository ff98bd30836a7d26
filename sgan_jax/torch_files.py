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
"""
import collections
import io
import pickle
import struct
import zipfile
from typing import Dict

import numpy as np

_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
           "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
           "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
           "BoolStorage": np.bool_}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class UnsafeFileError(pickle.UnpicklingError):
  """The file asks for something a tensor `state_dict` never needs."""


class _Storage:
  def __init__(self, key: str, dtype):
    self.key, self.dtype, self.data = key, dtype, None


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def numpy(self) -> np.ndarray:
    data, item = self.storage.data, np.dtype(self.storage.dtype).itemsize
    return np.lib.stride_tricks.as_strided(
        data[self.offset:], shape=tuple(self.size),
        strides=tuple(s * item for s in self.stride)).copy()


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
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise UnsafeFileError(f"unexpected persistent id {pid!r}")
    dtype, key = pid[1], str(pid[2])
    if dtype not in _DTYPES.values():
      raise UnsafeFileError(f"unsupported storage type {dtype!r}")
    return self.storages.setdefault(key, _Storage(key, dtype))


def _read_zip(data: bytes):
  with zipfile.ZipFile(io.BytesIO(data)) as z:
    (pkl,) = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    prefix = pkl[:-len("data.pkl")]
    storages: Dict[str, _Storage] = {}
    obj = _Unpickler(io.BytesIO(z.read(pkl)), storages).load()
    order = z.read(prefix + "byteorder").decode() if prefix + "byteorder" in z.namelist() \
        else "little"
    for key, s in storages.items():
      s.data = np.frombuffer(z.read(f"{prefix}data/{key}"),
                             np.dtype(s.dtype).newbyteorder("<" if order == "little" else ">"))
  return obj


def _read_legacy(data: bytes):
  f = io.BytesIO(data)
  if _Unpickler(f, {}).load() != _LEGACY_MAGIC:
    raise ValueError("not a PyTorch file (bad magic number)")
  _Unpickler(f, {}).load()   # protocol version
  _Unpickler(f, {}).load()   # system info (a dict of plain values)
  storages: Dict[str, _Storage] = {}
  obj = _Unpickler(f, storages).load()
  for key in _Unpickler(f, {}).load():
    s = storages[str(key)]
    (numel,) = struct.unpack("<q", f.read(8))
    size = numel * np.dtype(s.dtype).itemsize
    s.data = np.frombuffer(f.read(size), np.dtype(s.dtype).newbyteorder("<"))
  return obj


def load_state_dict(data: bytes) -> Dict[str, np.ndarray]:
  """`{name: array}` of a `torch.save`d `state_dict`, given the file's bytes."""
  obj = _read_zip(data) if zipfile.is_zipfile(io.BytesIO(data)) else _read_legacy(data)
  if not isinstance(obj, dict):
    raise ValueError(f"the file holds a {type(obj).__name__}, not a state_dict")
  return {k: v.numpy() if isinstance(v, _Tensor) else np.asarray(v) for k, v in obj.items()}
