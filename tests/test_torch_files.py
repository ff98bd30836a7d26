"""The torch-free `.pth` reader against crafted files: a tensor that points
outside its storage, or a storage whose bytes are missing, is refused in one
line that names the tensor, never read (heap garbage, or a crash).

The files are written here without torch: `_Pickler` emits the same pickle
torch.save does (torch's globals, storages as persistent ids), in the zip
layout and in the legacy one.
"""
import collections
import io
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from sgan_jax import errors, fid, torch_files

_KINDS = {"FloatStorage": np.float32, "LongStorage": np.int64}


class _Global:
  """Pickled as a reference to the global `module.name` (a torch class or
  function, which need not be importable here)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):   # pickle's save_reduce wants a callable
    raise NotImplementedError


class _Storage:
  def __init__(self, key, kind, values):
    self.key, self.kind = key, kind
    self.values = np.asarray(values, _KINDS[kind])


class _Tensor:
  """Pickled as torch pickles a tensor: `_rebuild_tensor_v2(storage, offset,
  size, stride, requires_grad, backward_hooks)`."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def __reduce__(self):
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, self.offset, self.size, self.stride, False,
             collections.OrderedDict()))


class _Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Protocol 2, storages as torch's persistent ids (the legacy layout adds
  a view field), `_Global`s as GLOBAL opcodes."""
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy

  def persistent_id(self, obj):
    if not isinstance(obj, _Storage):
      return None
    pid = ("storage", _Global("torch", obj.kind), obj.key, "cpu", len(obj.values))
    return pid + (None,) if self.legacy else pid

  def _save_global(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  dispatch[_Global] = _save_global


def _storages(tensors):
  return list({t.storage.key: t.storage for t in tensors.values()}.values())


def _pickled(tensors, legacy: bool) -> bytes:
  f = io.BytesIO()
  _Pickler(f, legacy).dump(collections.OrderedDict(tensors))
  return f.getvalue()


def zip_file(tensors, drop=(), short=(), date_time=(2026, 1, 1, 0, 0, 0)) -> bytes:
  """torch's zip layout; storages in `drop` have no `data/<key>` member,
  those in `short` lose their last element's bytes. Members carry
  `date_time` (the bytes of the file depend on it)."""
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as z:
    put = lambda name, data: z.writestr(zipfile.ZipInfo(name, date_time), data)
    put("archive/data.pkl", _pickled(tensors, legacy=False))
    put("archive/byteorder", "little")
    for s in _storages(tensors):
      raw = s.values.tobytes()
      if s.key not in drop:
        put(f"archive/data/{s.key}", raw[:-s.values.itemsize] if s.key in short else raw)
  return buf.getvalue()


def legacy_file(tensors, cut: int = 0) -> bytes:
  """torch's legacy layout, less its last `cut` bytes."""
  f = io.BytesIO()
  for header in (torch_files._LEGACY_MAGIC, 1001,  # pylint: disable=protected-access
                 {"protocol_version": 1001, "little_endian": True}):
    pickle.dump(header, f, protocol=2)
  f.write(_pickled(tensors, legacy=True))
  storages = _storages(tensors)
  pickle.dump([s.key for s in storages], f, protocol=2)
  for s in storages:
    f.write(struct.pack("<q", len(s.values)) + s.values.tobytes())
  data = f.getvalue()
  return data[:len(data) - cut]


WRITERS = {"zip": zip_file, "legacy": legacy_file}


def _weight(offset=0, size=(3, 4), stride=(4, 1)):
  """'weight', a 3x4 float view of a 12-element storage; the arguments
  replace its layout."""
  return {"weight": _Tensor(_Storage("0", "FloatStorage", np.arange(12)), offset,
                            size, stride)}


def _refused(data: bytes, match: str) -> str:
  with pytest.raises(torch_files.TorchFileError, match=match) as err:
    torch_files.load_state_dict(data)
  message = str(err.value)
  assert "\n" not in message and isinstance(err.value, ValueError)
  return message


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_hand_written_files_read_back(layout):
  """The writer above is right: valid layouts (a transposed view, an offset,
  a broadcast stride 0, an empty tensor) read back as torch would give them."""
  floats = _Storage("0", "FloatStorage", np.arange(12))
  longs = _Storage("1", "LongStorage", [7])
  got = torch_files.load_state_dict(WRITERS[layout]({
      "weight": _Tensor(floats, 0, (3, 4), (4, 1)),
      "transposed": _Tensor(floats, 0, (4, 3), (1, 4)),
      "tail": _Tensor(floats, 9, (3,), (1,)),
      "broadcast": _Tensor(longs, 0, (2, 3), (0, 0)),
      "empty": _Tensor(floats, 12, (0, 5), (5, 1))}))
  np.testing.assert_array_equal(got["weight"], np.arange(12.0).reshape(3, 4))
  np.testing.assert_array_equal(got["transposed"], np.arange(12.0).reshape(3, 4).T)
  np.testing.assert_array_equal(got["tail"], [9, 10, 11])
  np.testing.assert_array_equal(got["broadcast"], np.full((2, 3), 7))
  assert got["empty"].shape == (0, 5) and got["weight"].dtype == np.float32


BAD_LAYOUTS = {
    "offset_out_of_range": (dict(offset=12), r"offset 12.* beyond its storage of 12"),
    "offset_negative": (dict(offset=-1), r"must be integers from 0"),
    "offset_bool": (dict(offset=True), r"must be integers from 0"),
    "stride_negative": (dict(stride=(4, -1)), r"must be integers from 0"),
    "stride_overflowing": (dict(stride=(2**62, 1)), r"beyond its storage of 12"),
    "stride_beyond_int64": (dict(size=(1, 4), stride=(2**64, 1)),
                            r"must be integers from 0 to 2\*\*63-1"),
    "size_beyond_storage": (dict(size=(4, 4)), r"element 15, beyond its storage of 12"),
    "size_float": (dict(size=(3.0, 4)), r"must be integers from 0"),
    "size_absurd": (dict(size=(2**40, 1), stride=(0, 0)), r"need 4398046511104 bytes"),
    "ranks_differ": (dict(stride=(4,)), r"2 sizes but 1 strides"),
}


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("case", sorted(BAD_LAYOUTS))
def test_a_tensor_outside_its_storage_is_refused(layout, case):
  changes, match = BAD_LAYOUTS[case]
  message = _refused(WRITERS[layout](_weight(**changes)), match)
  assert message.startswith("tensor 'weight': ")


@pytest.mark.parametrize("data,match", [
    (lambda: zip_file(_weight(), drop={"0"}), r"storage '0' is missing: the archive "
                                              r"has no data/0"),
    (lambda: zip_file(_weight(), short={"0"}), r"storage '0' has 44 bytes, fewer than "
                                               r"the 48 its header declares"),
    (lambda: legacy_file(_weight(), cut=4), r"storage '0' has 44 bytes, fewer than "
                                            r"the 48 its header declares"),
    (lambda: legacy_file(_weight(), cut=48 + 8), r"storage '0' has no bytes in the file"),
], ids=["zip_member_missing", "zip_member_short", "legacy_short", "legacy_cut"])
def test_a_storage_without_its_bytes_is_refused(data, match):
  message = _refused(data(), match)
  assert message.startswith("tensor 'weight': ")


# A member written at 07:08:20 has a newline byte in its zip header (DOS
# time 0x380a): a reader that took a truncated zip for a pickle read "PK..."
# as a persistent id up to that newline, and the message depended on the
# clock (the CI of 2026-12-03 saw it once).
@pytest.mark.parametrize("date_time", [(2026, 1, 1, 0, 0, 0), (2026, 12, 3, 7, 8, 20)])
def test_a_damaged_or_foreign_file_is_refused_in_one_line(date_time):
  data = zip_file(_weight(), date_time=date_time)
  for damaged in (data[:len(data) // 2], legacy_file(_weight())[:30], b"",
                  pickle.dumps(12345, protocol=2), b"PK\x03\x04" + b"\n" * 40):
    _refused(damaged, r"^not a file torch.save writes \(")
  _refused(zip_file(_weight(size=(1,) * 33, stride=(0,) * 33)), "33 dimensions, more than 32")


def test_a_far_stride_is_refused_not_read_in_a_fresh_process(tmp_path):
  """Reading 2 elements 4 TiB apart would crash the process (SIGSEGV)."""
  path = tmp_path / "far.pth"
  path.write_bytes(zip_file(_weight(size=(2,), stride=(2**40,))))
  code = ("import sys; from sgan_jax import torch_files\n"
          "try:\n  torch_files.load_state_dict(open(sys.argv[1], 'rb').read())\n"
          "except torch_files.TorchFileError as e:\n  print(e); sys.exit(7)\n")
  run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                       text=True, timeout=120, check=False)
  assert run.returncode == 7, (run.returncode, run.stderr[-2000:])
  assert run.stdout.startswith("tensor 'weight': ") and "beyond its storage" in run.stdout


def test_a_crafted_inception_weights_file_stops_the_run_at_start(tmp_path, tiny_config):
  """Through the project's own use of the reader: FID's weights are read at
  start-up, and a crafted file is a one-line config error (exit 2 in the
  CLIs), not a crash at the first evaluation."""
  path = tmp_path / "pt_inception.pth"
  path.write_bytes(zip_file(_weight(offset=10 ** 6)))
  config = tiny_config()
  config.eval.inception_weights = str(path)
  with pytest.raises(errors.ConfigError, match="eval.inception_weights=.*tensor 'weight'") as e:
    fid.check_weights(config)
  assert "\n" not in str(e.value)
