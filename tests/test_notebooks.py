"""Both notebooks run top to bottom on the tiny config (CPU, offline data)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import TINY_CONFIG

pytestmark = pytest.mark.slow   # a kernel that trains; see .ci/run

def execute(root, name, parameters, cwd):
  """Runs notebooks/<name> with a cell of `parameters` after its parameter
  cell (as papermill does); any failing cell raises."""
  nb = nbformat.read(os.path.join(root, "notebooks", name), as_version=4)
  index = next(i for i, c in enumerate(nb.cells)
               if "parameters" in c.metadata.get("tags", []))
  source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
  nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": cwd}}).execute()
  return nb


def outputs_text(nb):
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))


def images_shown(nb):
  return sum("image/png" in o.get("data", {}) for c in nb.cells
             if c.cell_type == "code" for o in c.get("outputs", []))


def test_colab_then_explore_notebooks(tmp_path, root):
  workdir = str(tmp_path / "run")
  colab = execute(root, "colab_tpu.ipynb", {
      "CONFIG": TINY_CONFIG, "WORKDIR": workdir,
      "REQUIRE_TPU": False, "COMPILATION_CACHE": str(tmp_path / "xla"),
      "OVERRIDES": {"dataset": "sklearn_digits", "data_dir": str(tmp_path / "tfds"),
                    "eval.knn_k": 20}}, str(tmp_path))
  text = outputs_text(colab)
  assert "finished at step 4" in text
  # Progress shows in the notebook (no app.run there to set absl's verbosity).
  assert "step 2/4 (50%)" in text and "Evaluation at step 4" in text, text[-3000:]
  assert f"compilation cache {tmp_path / 'xla'}: 0 program(s) loaded" in text
  assert "raw_pixels" in text and "d_ema" in text   # the evaluation table
  assert images_shown(colab) >= 2                   # samples and losses
  explore = execute(root, "explore.ipynb", {"WORKDIR": workdir, "NUM_QUERIES": 4},
                    str(tmp_path))
  assert "checkpoint step 4" in outputs_text(explore)
  assert images_shown(explore) == 3   # samples, retrieval grid, projection
