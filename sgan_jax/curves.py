"""Learning curves: the headline metrics of every `eval_<step>.json` in a
workdir against the step, drawn as `learning_curve.png`.

One panel per metric (k-NN top-1, SVM and linear-probe top-1, k-means
accuracy; G's classifier_fd when measured). D_ema and D are curves, one per
feature set; the random-init D and raw pixels are horizontal lines (they do
not change with the step; the newest evaluation's values are drawn).
"""
import io
import re
from typing import Dict, List, Tuple

# A bare Figure draws to a file without pyplot, so the backend a user (or a
# notebook) has chosen is left alone.
from matplotlib.figure import Figure

from sgan_jax import storage

FILE = "learning_curve.png"
PANELS = (("knn/top1", "k-NN top-1"), ("svm/top1", "linear SVM top-1"),
          ("linear/top1", "linear probe top-1"), ("kmeans/acc", "k-means accuracy"))
GENERATOR_PANEL = ("classifier_fd", "G: classifier Fréchet distance (lower is better)")
_EVAL_FILE = re.compile(r"eval_(\d+)\.json")
_CURVES = (("d_ema", "backbone", "-"), ("d_ema", "embedding", "-"),
           ("d", "backbone", ":"), ("d", "embedding", ":"))
_BASELINES = (("random_init", "backbone"), ("random_init", "embedding"),
              ("raw_pixels", "pixels"))


def read_all(folder: storage.PathLike) -> List[Tuple[int, Dict[str, float]]]:
  """`(step, results)` of every `eval_<step>.json` in `folder`, by step."""
  found = [(int(m.group(1)), p) for p in storage.path(folder).glob("eval_*.json")
           if (m := _EVAL_FILE.fullmatch(p.name))]
  return [(step, storage.read_json(p)) for step, p in sorted(found)]


def _label(ax, title):
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("step", fontsize=8)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)


def _panel(ax, evals, metric, title):
  steps = [s for s, _ in evals]
  for model, feature, style in _CURVES:
    key = f"{model}/{feature}/{metric}"
    points = [(s, r[key]) for s, r in evals if key in r]
    if points:
      ax.plot(*zip(*points), style, marker="o", ms=3, label=f"{model} {feature}")
  newest = evals[-1][1]
  for i, (model, feature) in enumerate(_BASELINES):
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


def plot(folder: storage.PathLike):
  """Draws `folder/learning_curve.png` from its `eval_<step>.json` files;
  returns its path, or None when there is no evaluation yet."""
  evals = read_all(folder)
  if not evals:
    return None
  panels = [p for p in PANELS if any(p[0] in k for k in evals[-1][1])]
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
  out = io.BytesIO()
  fig.savefig(out, format="png", dpi=110)
  path = storage.path(folder) / FILE
  storage.write_bytes(path, out.getvalue())
  return path
