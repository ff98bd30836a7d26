"""Scale-out: 8 devices vs 1, checkpoints across device counts, two processes."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from helpers import TINY_CONFIG
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


# ------------------------------------------------------ coordinated stops

def _cli_pair(root, workdir, data_dir, port, *flags):
  """The training CLI as two processes of one run (one CPU device each)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  procs = []
  for i in range(2):
    cmd = [sys.executable, "-m", "sgan_jax.main", f"--config={TINY_CONFIG}",
           f"--workdir={workdir}",
           "--config.dataset=sklearn_digits", f"--config.data_dir={data_dir}",
           "--config.log_every_steps=1", "--config.eval_every_steps=1000",
           # What is checked is the stop and the resume: a cheap final evaluation.
           "--config.eval.evaluators=('knn',)", "--config.eval.generator_metrics=False",
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}", *flags]
    procs.append(subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  logs = [[], []]
  readers = [threading.Thread(target=lambda p=p, log=log: log.extend(p.stdout), daemon=True)
             for p, log in zip(procs, logs)]
  for r in readers:
    r.start()
  return procs, logs, readers


def _finish_pair(procs, readers, timeout=600):
  for p in procs:
    p.wait(timeout=timeout)
  for r in readers:
    r.join(timeout=30)
  return [p.returncode for p in procs]


def _restore(workdir, config):
  from sgan_jax import checkpointing, sharding
  from sgan_jax.state import abstract_train_state
  ckpt = checkpointing.Checkpointer(workdir, 3)
  try:
    return jax.device_get(ckpt.restore(abstract_train_state(config, sharding.make_mesh())))
  finally:
    ckpt.close()


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path, root,
                                                                     tiny_digits):
  """One process is preempted; both save the same step and exit 0; both
  restarted continue bit-identically. Only process 0 builds the dataset."""
  stopped, data_dir = str(tmp_path / "stopped"), str(tmp_path / "fresh_tfds")
  procs, logs, readers = _cli_pair(root, stopped, data_dir, _free_port(),
                                   "--config.num_train_steps=1000",
                                   "--config.checkpoint_every_steps=500")
  deadline = time.time() + 600
  while not all(any("step 3/" in l for l in list(log)) for log in logs):
    assert time.time() < deadline and all(p.poll() is None for p in procs), logs
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  assert _finish_pair(procs, readers) == [0, 0], ["".join(l[-30:]) for l in logs]
  saved = []
  for log in logs:
    lines = [l for l in log if "received: saved checkpoint" in l]
    assert len(lines) == 1, "".join(log[-30:])
    saved.append(int(lines[0].split("saved checkpoint ")[1].split()[0]))
  assert saved[0] == saved[1] >= 3, saved
  building = ["Downloading and preparing dataset" in "".join(log) for log in logs]
  assert building == [True, False]   # process 1 waited for process 0's build
  final = saved[0] + 2
  procs, logs, readers = _cli_pair(root, stopped, data_dir, _free_port(),
                                   f"--config.num_train_steps={final}")
  assert _finish_pair(procs, readers) == [0, 0], ["".join(l[-30:]) for l in logs]
  assert all(f"at step {saved[0]}" in "".join(log) for log in logs)
  straight = str(tmp_path / "straight")
  procs, logs, readers = _cli_pair(root, straight, data_dir, _free_port(),
                                   f"--config.num_train_steps={final}")
  assert _finish_pair(procs, readers) == [0, 0], ["".join(l[-30:]) for l in logs]
  config = tiny_digits()
  resumed, uninterrupted = _restore(stopped, config), _restore(straight, config)
  assert int(resumed.step) == int(uninterrupted.step) == final
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)


# ------------------------------------------------------ storage all hosts share

def _pair_until_exit(root, tmp_path, workdirs, data_flags, env=None):
  """Two training processes of one run; returns (return codes, outputs)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  env.pop("XLA_FLAGS", None)
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "sgan_jax.main", f"--config={TINY_CONFIG}",
       f"--workdir={workdirs[i]}",
       *data_flags[i], f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"],
      env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:   # before the check existed, such a pair hung until killed here
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [p.returncode for p in procs], outs


def _error_lines(out):
  return [l for l in out.splitlines() if l.startswith("error:")]


def test_two_processes_that_see_different_workdirs_both_stop_in_one_line(tmp_path, root):
  """Each process is given its own workdir (as on hosts whose local disks
  differ): both stop before training, exit 2, and process 1 says why. The
  data is an image folder: process 0 lists and prepares it, process 1 opens
  the copy process 0 names."""
  from test_image_folder import make_folder
  data = make_folder(tmp_path / "images")
  folder = ["--config.dataset=image_folder", f"--config.data_dir={data}",
            "--config.num_classes=3"]
  codes, outs = _pair_until_exit(root, tmp_path, [tmp_path / f"host{i}" / "run" for i in (0, 1)],
                                 [folder, folder], env={"TFDS_DATA_DIR": str(tmp_path / "tfds")})
  assert codes == [2, 2], [o[-3000:] for o in outs]
  assert _error_lines(outs[1]) == [
      f"error: process 1 does not see the workdir that process 0 writes "
      f"({tmp_path / 'host1' / 'run' / '.process_0_marker.json'} is missing there): every "
      f"process needs the same workdir, on storage all hosts share (a network file "
      f"system or gs://)"], outs[1][-3000:]
  (error,) = _error_lines(outs[0])
  assert "process(es) [1] failed the check that all processes share" in error
  assert "Traceback" not in outs[0] + outs[1]
  assert not os.path.exists(tmp_path / "host0" / "run" / "checkpoints")
  # Only process 0 listed the folder (its log names what it skipped there).
  assert "notes.txt" not in outs[1] and ".txt: 6" in outs[0]


def test_two_processes_that_see_different_data_both_stop_in_one_line(tmp_path, root):
  digits = [["--config.dataset=sklearn_digits", f"--config.data_dir={tmp_path / f'tfds{i}'}"]
            for i in (0, 1)]
  codes, outs = _pair_until_exit(root, tmp_path, [tmp_path / "run"] * 2, digits)
  assert codes == [2, 2], [o[-3000:] for o in outs]
  (error,) = _error_lines(outs[1])
  assert error.startswith("error: process 1 sees the dataset as 'sklearn_digits/2.0.0 in "
                          f"{tmp_path / 'tfds1'}")
  assert f"process 0 as 'sklearn_digits/2.0.0 in {tmp_path / 'tfds0'}" in error
  assert "every process needs the same data" in error
