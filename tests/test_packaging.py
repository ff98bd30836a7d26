"""What a `pip install` of the project ships (docs/platforms.md, "Where it runs")."""
import os
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
  for config in ("cifar10", "cifar100", "digits", "imagenet_subset", "imagenet10",
                 "imagenet100"):
    assert f"sgan_jax/configs/{config}.py" in names, config
  # The tests' own config (tests/configs/tiny.py) is not shipped.
  assert not [n for n in names if "tiny" in n], sorted(names)
  for listed in ("imagenet10", "imagenet100"):   # class_subset names them
    assert f"sgan_jax/configs/{listed}.txt" in names, listed


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
  assert sorted(config_lib.packaged_configs()) == [
      "cifar10", "cifar100", "cifar10_cpu", "digits", "imagenet10", "imagenet100",
      "imagenet_subset"]
  with pytest.raises(FileNotFoundError, match="neither a file nor a packaged config"):
    config_lib.config_file("cifar11")
  with pytest.raises(SystemExit):
    cli.parse_flags(["prog", "--config=cifar11"])


def _imported_top_level_modules(package_dir):
  import ast
  import pathlib
  names = set()
  for path in pathlib.Path(package_dir).rglob("*.py"):
    if "interop" in path.parts:   # torch and the authors' modules: the interop extra
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names |= {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names.add(node.module.split(".")[0])
  return names


def test_every_third_party_import_is_a_declared_requirement(wheel, root):
  """What the package imports (outside `interop`, whose torch is the
  `interop` extra) is installed by `pip install sgan_jax`."""
  import importlib.metadata
  import os
  import re
  (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
  declared = {re.split(r"[ <>=!;\[]", l.split(":", 1)[1].strip())[0].lower().replace("_", "-")
              for l in wheel.read(metadata).decode().splitlines()
              if l.startswith("Requires-Dist:") and "extra ==" not in l}
  modules = _imported_top_level_modules(os.path.join(root, "sgan_jax")) - set(
      sys.stdlib_module_names) - {"sgan_jax"}
  owners = importlib.metadata.packages_distributions()
  missing = {m: owners.get(m) for m in modules
             if not {d.lower().replace("_", "-") for d in owners.get(m, [])} & declared}
  assert not missing, f"imported but not declared in install_requires: {missing}"


def test_the_colab_notebook_says_how_to_install_when_the_package_is_missing(tmp_path, root):
  """With INSTALL_FROM empty and no sgan_jax, the install cell stops with a
  hint instead of the next cell failing on the import."""
  import nbformat
  nb = nbformat.read(os.path.join(root, "notebooks", "colab_tpu.ipynb"), as_version=4)
  code = [c.source for c in nb.cells if c.cell_type == "code"]
  # -S -I: no site-packages, no environment, no current folder on the path,
  # so no sgan_jax (the cells need only the standard library).
  out = subprocess.run([sys.executable, "-S", "-I", "-c", "\n".join(code[:2])],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
  assert out.returncode == 1
  assert "sgan_jax is not installed: set INSTALL_FROM" in out.stderr, out.stderr[-2000:]
