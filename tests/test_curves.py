"""learning_curve.png from a folder of eval_<step>.json files."""
import json
import os
import subprocess
import sys

from PIL import Image

from sgan_jax import curves


def _write_evals(folder, steps):
  for i, step in enumerate(steps):
    results = {f"{m}/{f}/{e}": 0.1 * i + 0.05 * j
               for j, (m, f) in enumerate([("d_ema", "backbone"), ("d_ema", "embedding"),
                                           ("d", "backbone"), ("d", "embedding")])
               for e in ("knn/top1", "svm/top1", "linear/top1", "kmeans/acc")}
    results.update({"random_init/backbone/knn/top1": 0.3, "raw_pixels/pixels/knn/top1": 0.4,
                    "gen/g_ema/classifier_fd": 300.0 - step, "gen/random_init/classifier_fd": 350.0,
                    "gen/real_train/classifier_fd": 4.0})
    with open(os.path.join(folder, f"eval_{step}.json"), "w") as f:
      json.dump(results, f)


def test_curves_read_every_evaluation_in_step_order_and_draw_one_png(tmp_path):
  assert curves.plot(str(tmp_path)) is None           # nothing evaluated yet
  _write_evals(str(tmp_path), [10, 9, 100])
  (tmp_path / "eval_final.json").write_text("{}")     # not an eval_<step>.json
  evals = curves.read_all(str(tmp_path))
  assert [s for s, _ in evals] == [9, 10, 100]         # by number, not by name
  assert evals[2][1]["gen/g_ema/classifier_fd"] == 200.0
  path = curves.plot(str(tmp_path))
  assert os.fspath(path) == str(tmp_path / curves.FILE)
  with Image.open(path) as im:
    # Four D panels and G's, side by side.
    assert im.format == "PNG" and im.size[0] > 4 * im.size[1]


def test_drawing_a_curve_leaves_the_matplotlib_backend_alone(tmp_path):
  # A notebook's inline plots stop showing if a library switches the backend.
  _write_evals(str(tmp_path), [1, 2])
  code = ("import matplotlib; from sgan_jax import curves; "
          f"curves.plot({str(tmp_path)!r}); "
          "print(matplotlib.rcParams._get_backend_or_none())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in os.environ.items()
                                         if k != "MPLBACKEND"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "None"
