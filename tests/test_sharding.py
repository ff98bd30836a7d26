"""Scale-out: 8 devices vs 1, checkpoints across device counts, two processes."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import multidevice_worker

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multidevice_worker.py")


pytestmark = pytest.mark.slow   # subprocesses that compile; see .ci/run


@pytest.fixture
def run_worker(config_path):
  """`run_worker(args, devices=1)`: the worker on the tiny config, as a process."""
  return lambda args, devices=1: _start_worker([f"--config={config_path('tiny')}", *args],
                                               devices)


def _start_worker(args, devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"   # the session's compilation cache is inherited
  return subprocess.Popen([sys.executable, WORKER, *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=400):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-4000:]
  return out


def test_eight_devices_match_one_and_checkpoints_cross_device_counts(tmp_path, run_worker):
  a, b, c = (str(tmp_path / n) for n in "abc")
  out = finish(run_worker(["--mode=compare", f"--ckpt_out={a}",
                           f"--npz_out={a}.npz"], devices=8))
  assert "8-device step == 1-device step" in out
  # Saved on 8 devices, restored on 1 ...
  out = finish(run_worker(["--mode=restore", f"--ckpt_in={a}", f"--npz_in={a}.npz",
                           f"--ckpt_out={b}", f"--npz_out={b}.npz"], devices=1))
  assert "restored on 1 device(s)" in out
  # ... and saved on 1, restored on 8.
  out = finish(run_worker(["--mode=restore", f"--ckpt_in={b}", f"--npz_in={b}.npz"],
                          devices=8))
  assert "restored on 8 device(s)" in out


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_hold_identical_parameters_equal_to_one(tmp_path, run_worker,
                                                              tiny_config):
  port = _free_port()
  procs = [run_worker(["--mode=train", "--num_processes=2", f"--process_id={i}",
                       f"--port={port}", f"--npz_out={tmp_path}/p{i}.npz"])
           for i in range(2)]
  try:
    outs = [finish(p) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert "process 0 of 2 done" in outs[0] and "process 1 of 2 done" in outs[1]
  finish(run_worker(["--mode=train", f"--npz_out={tmp_path}/single.npz"], devices=1))
  load = lambda n: dict(np.load(tmp_path / n))
  p0, p1, single = load("p0.npz"), load("p1.npz"), load("single.npz")
  assert p0.keys() == p1.keys() and len(p0) > 10
  for path in p0:
    np.testing.assert_array_equal(p0[path], p1[path], err_msg=path)  # exact agreement
  multidevice_worker.compare_arrays(p0, single, tiny_config().optim.g_lr, 3)
