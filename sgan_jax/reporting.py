"""An evaluation's results as others see them: the names of the results, the
table, the `eval_<step>.json` files and the learning curve.

Results are a flat map from keys to numbers. D's features:
`"<model>/<features>/<evaluator>/<metric>"` (e.g. `d_ema/backbone/knn/top1`;
the evaluators and their metrics are those of `sgan_jax.evaluators`); G's
images: `"gen/<images>/<metric>"` (e.g. `gen/g_ema/classifier_fd`, from
`generator_eval` and `fid`) and `gen/classifier/test_top1`.

The learning curve, `learning_curve.png`, draws the headline metric of each
evaluator (and G's classifier_fd when measured) of every `eval_<step>.json`
in a folder against the step, one panel per metric. D_ema and D are curves,
one per feature set; the baselines are horizontal lines (they do not change
with the step; the newest evaluation's values are drawn).
"""
import io
import re
from typing import Dict, List, Optional, Tuple

import jax
# A bare Figure draws to a file without pyplot, so the backend a user (or a
# notebook) has chosen is left alone.
from matplotlib.figure import Figure

from sgan_jax import evaluators, storage

Results = Dict[str, float]

# D's side. The table's rows come in this order.
MODELS = ("d_ema", "d", "random_init", "raw_pixels")
TRAINED = ("d_ema", "d")                 # the checkpoint's networks
BASELINES = ("random_init", "raw_pixels")  # unchanged by training: computed once
D_FEATURES = ("backbone", "embedding")   # of D's models; raw_pixels' are PIXELS
PIXELS = "pixels"
# The table's columns: every score of every evaluator, then the online probe's.
D_COLUMNS = tuple(f"{name}/{metric}" for name in evaluators.NAMES + (evaluators.ONLINE_PROBE,)
                  for metric in evaluators.SCORES[name])

# G's side (`gen/*`): the image sets, in the table's order, and the metrics
# of `generator_eval` and of `fid`.
GENERATOR_ROWS = ("g_ema", "random_init", "real_train", "real_test")
CLASSIFIER_METRICS = ("classifier_fd", "classifier_score")
INCEPTION_METRICS = ("fid", "inception_score")
CLASSIFIER_TOP1 = "gen/classifier/test_top1"

CURVE_FILE = "learning_curve.png"
# The learning curve's panels, in this order: each evaluator's headline score
# (its first in `evaluators.SCORES`), then G's classifier_fd.
CURVE_TITLES = {"knn": "k-NN top-1", "svm": "linear SVM top-1",
                "linear": "linear probe top-1", "kmeans": "k-means accuracy"}
CURVE_PANELS = tuple((f"{name}/{evaluators.SCORES[name][0]}", title)
                     for name, title in CURVE_TITLES.items())
GENERATOR_PANEL = (CLASSIFIER_METRICS[0], "G: classifier Fréchet distance (lower is better)")
_EVAL_FILE = re.compile(r"eval_(\d+)\.json")


def format_table(results: Results) -> str:
  """D's features: one row per (model, features), one column per evaluator
  metric; then G's metrics (`gen/*`), one row per image set."""
  rows = sorted({tuple(k.split("/")[:2]) for k in results if not k.startswith("gen/")},
                key=lambda r: (MODELS.index(r[0]), r[1]))
  cell = lambda v: f"{'-' if v is None else f'{v:.4f}':>17}"
  head = f"{'model':<12} {'features':<10} " + " ".join(f"{c:>17}" for c in D_COLUMNS)
  lines = [head, "-" * len(head)]
  for model, feature in rows:
    lines.append(f"{model:<12} {feature:<10} " + " ".join(
        cell(results.get(f"{model}/{feature}/{c}")) for c in D_COLUMNS))
  lines.append("(test split; the k-NN bank, the linear probe and the SVM use the "
               "train split)")
  if CLASSIFIER_TOP1 in results:
    gen_columns = list(CLASSIFIER_METRICS)
    if any(k.endswith(f"/{INCEPTION_METRICS[0]}") for k in results):
      gen_columns += INCEPTION_METRICS
    lines += ["", f"{'G / images':<23} " + " ".join(f"{c:>17}" for c in gen_columns)]
    lines += [f"{row:<23} " + " ".join(cell(results.get(f"gen/{row}/{c}"))
                                       for c in gen_columns) for row in GENERATOR_ROWS]
    lines.append(f"(classifier_*: against the test split, in the features of a small "
                 f"classifier trained on the train split, test top-1 "
                 f"{results[CLASSIFIER_TOP1]:.4f}; not FID"
                 + ("; fid: InceptionV3, against the train split)"
                    if INCEPTION_METRICS[0] in gen_columns else ")"))
  return "\n".join(lines)


def results_path(folder: storage.PathLike, step: int):
  """Where the results of step `step` go in `folder`: `eval_<step>.json`."""
  return storage.path(folder) / f"eval_{step}.json"


def write_results(results: Results, folder: storage.PathLike, step: int):
  """Writes `eval_<step>.json` in `folder` (from the first process only);
  returns its path."""
  path = results_path(folder, step)
  if jax.process_index() == 0:
    storage.write_json(path, results)
  return path


def read_results(folder: storage.PathLike, step: int) -> Optional[Results]:
  """The results of `eval_<step>.json` in `folder`, or None if there is none."""
  path = results_path(folder, step)
  return storage.read_json(path) if storage.exists(path) else None


def read_all_results(folder: storage.PathLike) -> List[Tuple[int, Results]]:
  """`(step, results)` of every `eval_<step>.json` in `folder`, by step."""
  found = [(int(m.group(1)), p) for p in storage.path(folder).glob("eval_*.json")
           if (m := _EVAL_FILE.fullmatch(p.name))]
  return [(step, storage.read_json(p)) for step, p in sorted(found)]


def _label(ax, title):
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("step", fontsize=8)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)


def _features_of(model: str) -> Tuple[str, ...]:
  return (PIXELS,) if model == "raw_pixels" else D_FEATURES


def _panel(ax, evals, metric, title):
  steps = [s for s, _ in evals]
  for model, style in zip(TRAINED, ("-", ":")):
    for feature in D_FEATURES:
      key = f"{model}/{feature}/{metric}"
      points = [(s, r[key]) for s, r in evals if key in r]
      if points:
        ax.plot(*zip(*points), style, marker="o", ms=3, label=f"{model} {feature}")
  newest = evals[-1][1]
  baselines = [(model, feature) for model in BASELINES for feature in _features_of(model)]
  for i, (model, feature) in enumerate(baselines):
    key = f"{model}/{feature}/{metric}"
    if key in newest:
      ax.axhline(newest[key], color=f"C{4 + i}", ls="--", lw=1,
                 label=f"{model} {feature}")
  _label(ax, title)
  ax.set_xlim(0, max(steps) * 1.05 or 1)


def _generator_panel(ax, evals):
  metric, title = GENERATOR_PANEL
  points = [(s, r[f"gen/g_ema/{metric}"]) for s, r in evals if f"gen/g_ema/{metric}" in r]
  ax.plot(*zip(*points), "-", marker="o", ms=3, label="g_ema")
  newest = evals[-1][1]
  for i, row in enumerate(("random_init", "real_train")):
    if f"gen/{row}/{metric}" in newest:
      ax.axhline(newest[f"gen/{row}/{metric}"], color=f"C{4 + i}", ls="--", lw=1,
                 label=f"{row} G" if row == "random_init" else "real train images")
  _label(ax, title)
  ax.legend(fontsize=6)


def curve_figure(evals: List[Tuple[int, Results]]) -> Figure:
  """The learning curve of `evals` (`read_all_results`' list, not empty): a
  panel per metric the newest evaluation has."""
  panels = [p for p in CURVE_PANELS if any(p[0] in k for k in evals[-1][1])]
  has_g = f"gen/g_ema/{GENERATOR_PANEL[0]}" in evals[-1][1]
  n = len(panels) + has_g
  fig = Figure(figsize=(3.6 * n, 3.4))
  axes = fig.subplots(1, n, squeeze=False)
  for ax, (metric, title) in zip(axes[0], panels):
    _panel(ax, evals, metric, title)
  axes[0][0].legend(fontsize=6)
  if has_g:
    _generator_panel(axes[0][-1], evals)
  fig.tight_layout()
  return fig


def plot_curves(folder: storage.PathLike):
  """Draws `folder/learning_curve.png` from its `eval_<step>.json` files;
  returns its path, or None when there is no evaluation yet."""
  evals = read_all_results(folder)
  if not evals:
    return None
  out = io.BytesIO()
  curve_figure(evals).savefig(out, format="png", dpi=110)
  path = storage.path(folder) / CURVE_FILE
  storage.write_bytes(path, out.getvalue())
  return path
