"""Progress the user sees: lines with a rate and an ETA for long work, none
for short work. (That training shows its progress in a notebook, where no
`absl.app.run` sets a verbosity, is checked by tests/test_notebooks.py on
the Colab notebook's own output.)"""
from absl import logging

from sgan_jax import progress


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_lines_have_the_count_rate_and_eta(monkeypatch):
  lines, clock = [], FakeClock()
  monkeypatch.setattr(logging, "info", lambda msg, *a: lines.append(msg % a if a else msg))
  report = progress.Progress("features", 1000, "images", every=10.0, after=5.0, clock=clock)
  clock.now += 2.0
  report.update(100)            # 2 s in: short work stays silent
  clock.now += 3.0
  report.update(100)            # 5 s in, 200 done: 40 images/s, 800 left = 20 s
  clock.now += 1.0
  report.update(100)            # 1 s after the last line: not yet
  assert lines == ["features: 200/1,000 images (20%) | 40.0 images/s | 00:00:05 elapsed"
                   " | ETA 00:00:20"]
  clock.now += 10.0
  report.update(100)            # 16 s, 400 done: 25/s, 600 left = 24 s
  assert lines[-1] == ("features: 400/1,000 images (40%) | 25.0 images/s | "
                       "00:00:16 elapsed | ETA 00:00:24")


def test_progress_without_a_total_has_no_eta():
  clock = FakeClock()
  report = progress.Progress("rows", None, "rows", clock=clock)
  clock.now += 4.0
  report.update(10)
  assert report.line() == "rows: 10 rows | 2.5 rows/s | 00:00:04 elapsed"


def test_info_lines_show_without_app_run_and_libraries_keep_to_warnings(root):
  """A fresh process that never parses flags (a notebook, a script): the
  library's INFO lines are shown once it is entered; others' are not."""
  import subprocess
  import sys
  code = ("from absl import logging\n"
          "from sgan_jax import progress\n"
          "progress.show_info_logs()\n"
          "progress.Progress('work', 4, 'items', every=0.0, after=0.0).update(2)\n"
          "logging.info('a library line')\n"
          "logging.warning('a library warning')\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=root, timeout=120)
  assert out.returncode == 0, out.stderr
  assert "work: 2/4 items (50%)" in out.stderr
  assert "a library warning" in out.stderr and "a library line" not in out.stderr


def test_evaluation_reports_extraction_evaluators_and_each_linear_fit(monkeypatch,
                                                                      mock_tfds, tiny_config):
  """With every piece of work counted as long (`QUIET_SECONDS` 0): feature
  extraction per split, the evaluators, and each fit of the linear models'
  C search and refit say how far they are, with an ETA."""
  import numpy as np
  from sgan_jax import dataset_builders, evaluation, sharding
  from sgan_jax.state import StepSpec, init_discriminator
  import jax
  lines = []
  monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)
  monkeypatch.setattr(logging, "info", lambda msg, *a: lines.append(msg % a if a else msg))
  config = tiny_config()
  config.eval.evaluators = ("knn", "linear")
  with mock_tfds(num_examples=24):
    builder = dataset_builders.get_builder(config)
    spec = StepSpec.from_config(config)
    mesh = sharding.make_mesh()
    params = {"d": init_discriminator(spec, np.asarray(jax.random.PRNGKey(0)))}
    splits = [evaluation.extract_features(spec, params, config, builder, s, mesh)
              for s in ("train", "test")]
  evaluation.run_evaluators(config, *splits, models=("d",))
  extraction = [l for l in lines if l.startswith("  features of the train split (d): ")]
  assert extraction and extraction[-1].startswith(
      "  features of the train split (d): 24/24 images (100%)")
  fits = [l for l in lines if l.startswith("    softmax fits on ")]
  assert len(fits) == 2 * (len(config.eval.c_grid) + 1)   # backbone, embedding
  assert "3/3 fits (100%)" in fits[2] and "ETA" in fits[0]
  runs = [l for l in lines if l.startswith("  evaluators: ")]
  assert [r.split(" fits")[0] for r in runs] == [f"  evaluators: {i}/4" for i in range(1, 5)]
