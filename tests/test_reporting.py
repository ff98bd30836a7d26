"""The results table, the eval_<step>.json files and learning_curve.png."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

import helpers
from sgan_jax import evaluators, reporting


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
  assert reporting.plot_curves(str(tmp_path)) is None           # nothing evaluated yet
  _write_evals(str(tmp_path), [10, 9, 100])
  (tmp_path / "eval_final.json").write_text("{}")     # not an eval_<step>.json
  evals = reporting.read_all_results(str(tmp_path))
  assert [s for s, _ in evals] == [9, 10, 100]         # by number, not by name
  assert evals[2][1]["gen/g_ema/classifier_fd"] == 200.0
  path = reporting.plot_curves(str(tmp_path))
  assert os.fspath(path) == str(tmp_path / reporting.CURVE_FILE)
  with Image.open(path) as im:
    assert im.format == "PNG"
  # Four D panels and G's, side by side.
  assert helpers.panels_in_png(path) == 5


def test_each_panel_draws_its_metric_for_every_step_and_the_baselines():
  folder_evals = [(1, {}), (2, {})]
  for i, (step, results) in enumerate(folder_evals):
    for j, (model, feature) in enumerate([("d_ema", "backbone"), ("d", "embedding")]):
      for k, (metric, _) in enumerate(reporting.CURVE_PANELS):
        results[f"{model}/{feature}/{metric}"] = 0.1 * i + 0.01 * j + 0.001 * k
    results["random_init/backbone/knn/top1"] = 0.3 + step   # the newest is drawn
    results["gen/g_ema/classifier_fd"] = 10.0 * step
    results["gen/real_train/classifier_fd"] = 1.5
  fig = reporting.curve_figure(folder_evals)
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ["k-NN top-1", "linear SVM top-1", "linear probe top-1",
                    "k-means accuracy", reporting.GENERATOR_PANEL[1]]
  for k, ax in enumerate(fig.axes[:4]):
    curves = {line.get_label(): line for line in ax.get_lines()
              if not line.get_label().startswith("_")}
    expected = {"d_ema backbone", "d embedding"} | (
        {"random_init backbone"} if k == 0 else set())
    assert set(curves) == expected, (k, set(curves))
    np.testing.assert_allclose(curves["d_ema backbone"].get_xydata(),
                               [[1, 0.001 * k], [2, 0.1 + 0.001 * k]])
    np.testing.assert_allclose(curves["d embedding"].get_ydata(),
                               [0.01 + 0.001 * k, 0.11 + 0.001 * k])
    if k == 0:
      assert curves["random_init backbone"].get_ydata()[0] == 2.3
  g = {line.get_label(): line for line in fig.axes[4].get_lines()}
  np.testing.assert_allclose(g["g_ema"].get_xydata(), [[1, 10.0], [2, 20.0]])
  assert g["real train images"].get_ydata()[0] == 1.5
  # Without G's metric and the k-means score: three panels.
  for _, results in folder_evals:
    for key in [k for k in results if "kmeans" in k or k.startswith("gen/")]:
      del results[key]
  assert [ax.get_title() for ax in reporting.curve_figure(folder_evals).axes] == [
      "k-NN top-1", "linear SVM top-1", "linear probe top-1"]


def test_drawing_a_curve_leaves_the_matplotlib_backend_alone(tmp_path):
  # A notebook's inline plots stop showing if a library switches the backend.
  _write_evals(str(tmp_path), [1, 2])
  code = ("import matplotlib; from sgan_jax import reporting; "
          f"reporting.plot_curves({str(tmp_path)!r}); "
          "print(matplotlib.rcParams._get_backend_or_none())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in os.environ.items()
                                         if k != "MPLBACKEND"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "None"


def test_the_table_shows_g_and_fid_columns_only_when_measured():
  results = {"d_ema/backbone/knn/top1": 0.5, "d_ema/backbone/svm/top1": 0.25,
             "gen/classifier/test_top1": 0.9, "gen/g_ema/classifier_fd": 12.5,
             "gen/real_train/classifier_fd": 1.5}
  table = reporting.format_table(results)
  assert "0.2500" in table.splitlines()[2]   # the svm column of d_ema's row
  g_ema = [l for l in table.splitlines() if l.startswith("g_ema")]
  assert g_ema and "12.5000" in g_ema[0] and "fid " not in table.replace("_fd", "")
  assert "test top-1 0.9000" in table
  results.update({"gen/g_ema/fid": 33.0, "gen/g_ema/inception_score": 2.5})
  table = reporting.format_table(results)
  assert "inception_score" in table and "33.0000" in table
  assert "classifier_fd" not in reporting.format_table({"d/embedding/knn/top1": 0.1})




def test_the_table_has_a_column_per_declared_score_and_a_row_per_model_and_features():
  results = {f"{m}/{f}/{c}": 0.1 for m, f in [("raw_pixels", "pixels"), ("d", "embedding"),
                                              ("d_ema", "backbone")]
             for c in reporting.D_COLUMNS}
  results["d_ema/backbone/svm/c"] = 0.01   # not a score: not shown
  lines = reporting.format_table(results).splitlines()
  assert lines[0].split() == ["model", "features", "knn/top1", "linear/top1", "svm/top1",
                              "kmeans/acc", "kmeans/nmi", "kmeans/ari", "online_probe/top1"]
  assert [l.split()[:2] for l in lines[2:5]] == [["d_ema", "backbone"], ["d", "embedding"],
                                                 ["raw_pixels", "pixels"]]
  assert all(l.split()[2:] == ["0.1000"] * 7 for l in lines[2:5])
  assert len(reporting.D_COLUMNS) == sum(len(s) for s in evaluators.SCORES.values())


def test_results_are_written_and_read_back_by_step(tmp_path):
  assert reporting.read_results(str(tmp_path), 3) is None
  path = reporting.write_results({"d/backbone/knn/top1": 0.25}, str(tmp_path), 3)
  assert os.fspath(path) == str(tmp_path / "eval_3.json")
  assert reporting.read_results(str(tmp_path), 3) == {"d/backbone/knn/top1": 0.25}
  assert reporting.read_all_results(str(tmp_path)) == [(3, {"d/backbone/knn/top1": 0.25})]
