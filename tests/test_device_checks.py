"""The accelerator script, rehearsed on the CPU (`.ci/device_checks
rehearse`): what `.ci/device_bundle` builds (wheels for this Python, a
synthetic image folder prepared as ArrayRecord, the authors' code where
OFFICIAL_DIR is set), run by a Python that cannot import what the GPU
machine lacks (TensorFlow, TFDS, grain, array-record, ml_collections, clu
and their needs), so only the carried wheels supply them."""
import json
import os
import platform
import shlex
import subprocess
import sys

import pytest

import hidden_packages

# Installed here, absent on the GPU machine (the carried wheels bring them).
ABSENT_THERE = [
    "tensorflow-cpu", "tensorflow", "tensorflow-datasets", "grain", "array-record",
    "ml-collections", "clu", "dm-tree", "immutabledict", "promise", "simple-parsing",
    "docstring-parser", "tensorflow-metadata", "googleapis-common-protos", "termcolor",
    "toml", "portpicker", "importlib-resources"]


def _python_without(folder):
  """An executable `python3` in `folder` that lacks the ABSENT_THERE packages."""
  cmd = hidden_packages.command(os.path.join(folder, "site"), ABSENT_THERE)
  path = os.path.join(folder, "python3")
  with open(path, "w") as f:
    f.write("#!/bin/sh\nexec " + " ".join(shlex.quote(c) for c in cmd) + ' "$@"\n')
  os.chmod(path, 0o755)
  return path


def test_the_device_script_times_nothing_itself(root):
  """Every rate it reports is the benchmark's (`sgan_jax.benchmark`,
  `pipeline_rates`): the script runs commands and copies their results."""
  with open(os.path.join(root, ".ci", "device_checks")) as f:
    script = f.read()
  for timer in ("perf_counter", "time.time", "time.monotonic", "date +%", "augment"):
    assert timer not in script.split("set -uo pipefail", 1)[1], timer
  assert "-m sgan_jax.benchmark" in script and "--pipeline_batches" in script


@pytest.mark.slow
def test_the_device_script_rehearses_on_the_cpu_without_tensorflow(tmp_path, root):
  bundle, out = str(tmp_path / "bundle"), str(tmp_path / "out")
  python = _python_without(str(tmp_path / "py"))
  probe = subprocess.run([python, "-c", "import importlib.util as u; print([n for n in "
                          "('tensorflow', 'tensorflow_datasets', 'grain', 'ml_collections', "
                          "'clu') if u.find_spec(n)])"], capture_output=True, text=True)
  assert probe.stdout.strip() == "[]", probe
  official = os.environ.get("OFFICIAL_DIR", "")
  version = ".".join(platform.python_version_tuple()[:2])
  subprocess.run(["bash", ".ci/device_bundle", "--synthetic", f"--python_version={version}"]
                 + ([f"--official_dir={official}"] if official else []),
                 cwd=root, check=True, timeout=600,
                 env=dict(os.environ, BUNDLE_DIR=bundle, PYTHON=sys.executable))
  env = dict(os.environ, PYTHON=python, OUT=out, BUNDLE_DIR=bundle,
             DEVICE_SITE=str(tmp_path / "site"))
  run = subprocess.run(["bash", ".ci/device_checks", "rehearse"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=900)
  log = run.stdout + run.stderr
  assert run.returncode == 0, log[-4000:]
  files = sorted(os.listdir(out))
  assert len(files) <= 8 and all(os.path.getsize(os.path.join(out, f)) < 16 << 20
                                 for f in files), files
  for name in ("bench_float32.json", "train.log", "evals.json", "learning_curve.png",
               "samples.png", "metrics.jsonl", "device_checks.log"):
    assert name in files, (name, files, log[-3000:])
  assert "tensorflow_datasets 4.9.10" in log and "grain 0.2.18" in log   # from the wheels
  bench = json.load(open(os.path.join(out, "bench_float32.json")))
  assert bench["images_per_s"] > 0 and bench["global_batch_size"] == 8
  assert bench["pipeline_uint8_w1_images_per_s"] > 0   # the folder's images share a shape
  assert bench["device_augment_images_per_s"] > 0   # pipeline_rates' rate, not the script's
  evals = json.load(open(os.path.join(out, "evals.json")))
  assert len(evals) >= 4, sorted(evals)
  for results in evals.values():
    for model in ("d_ema", "random_init"):
      assert 0 <= results[f"{model}/embedding/knn/top1"] <= 1
    assert 0 <= results["raw_pixels/pixels/knn/top1"] <= 1
  if official:
    assert bench["reference_images_per_s"] > 0 and bench["reference_device"] == "cpu"
