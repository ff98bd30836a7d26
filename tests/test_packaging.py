"""What a `pip install` of the project ships (README "Where it runs")."""
import shutil
import subprocess
import sys
import zipfile

import pytest

from sgan_jax import cli, config_lib


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, root):
  out = tmp_path_factory.mktemp("wheel")
  # Built from a copy: setuptools writes build/ and *.egg-info/ beside the source.
  source = tmp_path_factory.mktemp("source") / "sgan_jax"
  shutil.copytree(root, source, ignore=shutil.ignore_patterns(
      ".git", ".venv", "build", "*.egg-info", "__pycache__", "workdirs"))
  proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                         "--no-build-isolation", "-q", "-w", str(out), str(source)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (path,) = out.glob("sgan_jax-*.whl")
  return zipfile.ZipFile(path)


def test_the_wheel_ships_the_configs(wheel):
  names = set(wheel.namelist())
  for config in ("cifar10", "cifar100", "digits", "imagenet_subset", "tiny"):
    assert f"sgan_jax/configs/{config}.py" in names, config


def test_tensorflow_and_the_gcs_client_are_extras_not_requirements(wheel):
  (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
  requires = [l for l in wheel.read(metadata).decode().splitlines()
              if l.startswith("Requires-Dist:")]
  tf = [l for l in requires if "tensorflow-cpu" in l]
  gcs = [l for l in requires if "google-cloud-storage" in l]
  # Installing the package installs no TensorFlow: only the tf extra (for
  # preparing TFDS catalog datasets) and the tests' extra name it.
  assert tf and all('extra == "tf"' in l or 'extra == "test"' in l for l in tf), tf
  assert any('extra == "tf"' in l for l in tf), tf
  assert gcs and all('extra == "gcs"' in l for l in gcs), gcs
  assert not any(l.split(":")[1].strip().startswith("tensorflow ") for l in requires)


def test_configs_load_by_name_and_unknown_names_are_refused():
  assert config_lib.load_config("digits").dataset == "sklearn_digits"
  assert sorted(config_lib.packaged_configs()) == ["cifar10", "cifar100", "cifar10_cpu",
                                                   "digits", "imagenet_subset", "tiny"]
  with pytest.raises(FileNotFoundError, match="neither a file nor a packaged config"):
    config_lib.config_file("cifar11")
  with pytest.raises(SystemExit):
    cli.parse_flags(["prog", "--config=cifar11"])
