"""Evaluators against known structure, NumPy brute force and scikit-learn;
feature extraction and the training-time evaluator."""
import collections
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from helpers import digits_as_images
from sgan_jax import (config_lib, dataset_builders, evaluation, evaluators, generator_eval,
                      input_pipeline, reporting, sharding, train)
from sgan_jax.evaluators import kmeans, knn, linear_probe, svm
from sgan_jax.state import StepSpec, create_train_state, init_generator


def eval_config(**overrides):
  config = config_lib.reference_config().eval
  config.update(overrides)
  return config


def scores(evaluator_class, train, test, num_classes, config):
  """`{metric: value}` of one evaluator's run."""
  return dict(evaluator_class(num_classes, config).run(train, test))


def gaussian_clusters(seed, per_class=30, classes=4, dim=16, spread=0.05):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((classes, dim)) * 3
  x = np.concatenate([c + spread * rng.standard_normal((per_class, dim)) for c in centres])
  y = np.repeat(np.arange(classes), per_class)
  return x.astype(np.float32), y


def test_separated_clusters_are_recovered():
  x, y = gaussian_clusters(0)
  cfg = eval_config(knn_k=10)
  assert scores(knn.KNearestNeighbours, (x, y), (x, y), 4, cfg)["top1"] == 1.0
  assert scores(linear_probe.LinearProbe, (x, y), (x, y), 4, cfg)["top1"] == 1.0
  assert scores(svm.LinearSVM, (x, y), (x, y), 4, cfg)["top1"] == 1.0
  clusters = scores(kmeans.SphericalKMeans, None, (x, y), 4, cfg)
  assert clusters["acc"] == 1.0 and clusters["nmi"] == pytest.approx(1.0)
  assert clusters["ari"] == pytest.approx(1.0)


def test_evaluators_are_built_from_the_config_and_yield_their_declared_scores():
  """`evaluators.SCORES` (the table's columns, the curve's panels) names
  what each evaluator's `run` yields, in order; the linear models add `c`."""
  x, y = gaussian_clusters(1)
  cfg = eval_config(knn_k=10, evaluators=("svm", "knn"), svm_c=0.1)
  built = evaluators.from_config(4, cfg)
  assert list(built) == ["knn", "svm"]   # NAMES' order, only those configured
  assert isinstance(built["svm"], svm.LinearSVM) and built["svm"].num_classes == 4
  cfg.evaluators = evaluators.NAMES
  for name, evaluator in evaluators.from_config(4, cfg).items():
    yielded = [metric for metric, _ in evaluator.run((x, y), (x, y))]
    extra = ["c"] if name in ("linear", "svm") else []
    assert yielded == list(evaluators.SCORES[name]) + extra, name
  with pytest.raises(ValueError, match="unknown evaluator 'svn'"):
    evaluators.get("svn")


def numpy_weighted_knn(train_x, train_y, test_x, k, temperature, classes):
  a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
  sims = b.astype(np.float64) @ a.T.astype(np.float64)
  preds = []
  for row in sims:
    top = np.argsort(-row, kind="stable")[:k]
    votes = np.zeros(classes)
    np.add.at(votes, train_y[top], np.exp(row[top] / temperature))
    preds.append(np.argmax(votes))
  return np.array(preds)


@pytest.mark.parametrize("k,chunk", [(1, 7), (20, 16), (200, 64)])
def test_knn_matches_numpy_brute_force(k, chunk):
  rng = np.random.default_rng(k)
  train_x = rng.standard_normal((300, 12)).astype(np.float32)
  train_y = rng.integers(0, 5, 300)
  test_x = rng.standard_normal((101, 12)).astype(np.float32)
  got = knn.predict(train_x, train_y, test_x, 5, k=k, temperature=0.1, chunk=chunk)
  want = numpy_weighted_knn(train_x, train_y, test_x, k, 0.1, 5)
  assert got.shape == (101,)
  np.testing.assert_array_equal(got, want)


def _digits_split():
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(y))
  return (x[order[:1200]], y[order[:1200]]), (x[order[1200:]], y[order[1200:]])


def _cifar_like(seed=0, n_train=2500, n_test=1000, dim=3072, classes=10):
  """Hard, CIFAR-sized vectors: weak class means in a 30-d subspace under
  strong correlated noise (100 factors) and pixel noise, so that
  regularisation matters (raw CIFAR pixels behave alike)."""
  rng = np.random.default_rng(seed)
  means = rng.standard_normal((classes, 30)) @ rng.standard_normal((30, dim)) * 0.008
  mixing = rng.standard_normal((100, dim)) * 0.1
  def draw(n):
    y = rng.integers(0, classes, n)
    x = means[y] + rng.standard_normal((n, 100)) @ mixing + rng.standard_normal((n, dim))
    return x.astype(np.float32), y
  return draw(n_train), draw(n_test)


def _sklearn_scores(make, train, test, c_grid):
  from sklearn.preprocessing import StandardScaler
  scaler = StandardScaler().fit(train[0])
  return {c: make(c).fit(scaler.transform(train[0]), train[1]).score(
      scaler.transform(test[0]), test[1]) for c in c_grid}


def _logistic(c):
  from sklearn.linear_model import LogisticRegression
  return LogisticRegression(C=c, max_iter=3000)


def _linear_svc(c):
  from sklearn.svm import LinearSVC
  return LinearSVC(C=c, max_iter=20000)


@pytest.mark.parametrize("evaluator,loss,sklearn_model", [
    (linear_probe.LinearProbe, "softmax", _logistic),
    (svm.LinearSVM, "squared_hinge", _linear_svc)])
# CIFAR-sized inputs: slow, for scikit-learn's LinearSVC above all.
@pytest.mark.parametrize("data", ["digits", pytest.param("cifar_like", marks=pytest.mark.slow)])
def test_linear_models_match_sklearn(evaluator, loss, sklearn_model, data):
  """At each C the full-batch solver reaches scikit-learn's accuracy (same
  objective), and with C chosen on held-out train rows it is within a point
  of scikit-learn tuned on the test split itself (an upper bound)."""
  assert evaluator.loss == loss
  train, test = _digits_split() if data == "digits" else _cifar_like()
  cfg = eval_config()
  grid = cfg.c_grid if data == "digits" else (1e-4, 1e-3, 1e-2)
  reference = _sklearn_scores(sklearn_model, train, test, grid)
  for c in grid:
    ours = scores(evaluator, train, test, 10, eval_config(**{evaluator.c_field: c}))
    assert ours["c"] == c
    assert abs(ours["top1"] - reference[c]) <= 0.01, (c, ours, reference)
  cfg.c_grid = grid
  chosen = scores(evaluator, train, test, 10, cfg)
  assert chosen["c"] in grid
  assert chosen["top1"] >= max(reference.values()) - 0.01, (chosen, reference)
  if data == "cifar_like":   # the regime where C matters
    assert max(reference.values()) - min(reference.values()) > 0.03, reference


def test_linear_model_config_fixes_c():
  train, test = _digits_split()
  cfg = eval_config(linear_c=0.001, svm_c=0.01)
  assert scores(linear_probe.LinearProbe, train, test, 10, cfg)["c"] == 0.001
  assert scores(svm.LinearSVM, train, test, 10, cfg)["c"] == 0.01


def test_svm_on_discriminator_features_matches_linear_svc(tiny_config):
  """A D feature set (a random-init tiny D's backbone on digits)."""
  import jax.numpy as jnp
  config = tiny_config()
  spec = StepSpec.from_config(config)
  params = evaluation.random_init_params(spec, 0, sharding.make_mesh())
  (xtr, ytr), (xte, yte) = _digits_split()
  def features(x):
    images = jnp.asarray(digits_as_images(x))
    return np.asarray(evaluation._d_features(spec, params, images)[0])
  train, test = (features(xtr), ytr), (features(xte), yte)
  cfg = eval_config(svm_c=0.1)
  ours = scores(svm.LinearSVM, train, test, 10, cfg)["top1"]
  reference = _sklearn_scores(_linear_svc, train, test, [0.1])[0.1]
  assert abs(ours - reference) <= 0.01, (ours, reference)


def test_kmeans_matched_accuracy_is_permutation_invariant():
  labels = np.array([0, 0, 1, 1, 2, 2])
  assert kmeans.matched_accuracy(labels, np.array([2, 2, 0, 0, 1, 1]), 3) == 1.0
  assert kmeans.matched_accuracy(labels, np.array([2, 2, 0, 1, 1, 1]), 3) == pytest.approx(5 / 6)


def test_feature_extraction_padding_does_not_change_results(mock_tfds, tiny_config):
  config = tiny_config()
  state = create_train_state(config, jax.random.PRNGKey(0))
  mesh = sharding.make_mesh()
  with mock_tfds(num_examples=21):
    builder = dataset_builders.get_builder(config)
    got = []
    for bs in (7, 8, 21, 32):   # divides, does not divide, whole, larger
      config.eval.batch_size = bs
      got.append(evaluation.extract_features(state.spec, {"d": state.d_params},
                                             config, builder, "test", mesh))
  for labels, pixels, feats in got:
    assert labels.shape == (21,) and pixels.shape[0] == 21
    np.testing.assert_array_equal(labels, got[0][0])
    np.testing.assert_array_equal(pixels, got[0][1])
    for name in ("backbone", "embedding", "probe_pred"):
      assert feats["d"][name].shape[0] == 21
      np.testing.assert_allclose(feats["d"][name], got[0][2]["d"][name],
                                 rtol=1e-5, atol=1e-6)
  # ... and so are the evaluator results built on them.
  cfg = eval_config(knn_k=5, kmeans_restarts=2)
  knn_scores = [scores(knn.KNearestNeighbours, (f["d"]["backbone"], y),
                       (f["d"]["backbone"], y), 10, cfg) for y, _, f in got]
  assert all(s == knn_scores[0] for s in knn_scores)


@pytest.mark.slow   # training, then a CLI evaluation
@pytest.mark.extra   # not in .ci/run: see setup.cfg
def test_evaluate_cli_on_a_tiny_checkpoint(tmp_path, tiny_digits, root):
  # sklearn_digits is built offline: no download check is involved.
  workdir = str(tmp_path)
  config = tiny_digits(num_train_steps=2, eval_every_steps=2)
  train.train_and_evaluate(config, workdir)
  os.remove(os.path.join(workdir, "eval_2.json"))   # the CLI must rewrite it
  out = subprocess.run([sys.executable, "-m", "sgan_jax.evaluate",
                        f"--workdir={workdir}", "--config.eval.knn_k=20"],
                       capture_output=True, text=True, cwd=root, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "d_ema" in out.stdout and "raw_pixels" in out.stdout
  with open(os.path.join(workdir, "eval_2.json")) as f:
    results = json.load(f)
  for model in ("d_ema", "d", "random_init"):
    for feature in ("backbone", "embedding"):
      assert 0 <= results[f"{model}/{feature}/knn/top1"] <= 1
      for linear in ("linear", "svm"):
        assert 0 <= results[f"{model}/{feature}/{linear}/top1"] <= 1
        assert results[f"{model}/{feature}/{linear}/c"] in config.eval.c_grid
      for metric in ("acc", "nmi", "ari"):
        assert f"{model}/{feature}/kmeans/{metric}" in results
  assert "raw_pixels/pixels/knn/top1" in results
  assert "raw_pixels/pixels/linear/top1" in results
  assert "raw_pixels/pixels/svm/top1" in results
  assert "d_ema/backbone/online_probe/top1" in results
  # Raw pixels of digits are easy: a sanity floor, far above chance (0.1).
  assert results["raw_pixels/pixels/knn/top1"] > 0.8
  assert results["raw_pixels/pixels/svm/top1"] > 0.8


def test_evaluate_cli_reports_a_bad_override_in_one_line(tmp_path, root):
  out = subprocess.run([sys.executable, "-m", "sgan_jax.evaluate", f"--workdir={tmp_path}",
                        "--config.eval.no_such_field=1"],
                       capture_output=True, text=True, cwd=root, timeout=300)
  assert out.returncode == 2
  assert "error: unknown config field 'no_such_field'" in out.stderr, out.stderr[-2000:]
  assert "Traceback" not in out.stderr


def test_evaluate_cli_refuses_a_truncated_workdir_config_in_one_line(tmp_path, root):
  (tmp_path / "config.json").write_text('{"dataset": "sklearn_dig')
  out = subprocess.run([sys.executable, "-m", "sgan_jax.evaluate", f"--workdir={tmp_path}"],
                       capture_output=True, text=True, cwd=root, timeout=300)
  assert out.returncode == 2
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "config.json is not a valid config" in errors[0], out.stderr
  assert "Traceback" not in out.stderr


def test_an_older_runs_config_takes_todays_evaluation_settings(tmp_path, tiny_config):
  """A run started before the evaluation protocol changed (it has settings
  that no longer exist and lacks new ones) still evaluates; its training
  settings are kept."""
  stored = json.loads(tiny_config().to_json())
  stored["eval"].pop("svm_c")
  stored["eval"]["probe_lr"] = 0.01
  stored["eval"]["knn_k"] = 7
  stored["num_train_steps"] = 123
  stored.pop("augment_on")   # added later; does not change what a run computes
  (tmp_path / "config.json").write_text(json.dumps(stored))
  config = config_lib.read_run_config(str(tmp_path))
  assert config.eval.svm_c is None and "probe_lr" not in config.eval
  assert config.eval.knn_k == 7 and config.num_train_steps == 123
  assert config.augment_on == "auto"


def test_evaluators_setting_runs_only_those(tiny_config):
  x, y = gaussian_clusters(3, per_class=20, classes=3, dim=8, spread=1.5)
  feats = {m: {"backbone": x + i, "embedding": x * (i + 1), "probe_pred": y}
           for i, m in enumerate(("d_ema", "d", "random_init"))}
  config = tiny_config(num_classes=3)
  # The images as extract_features keeps them: uint8 rows of the test view.
  pixels = np.random.default_rng(0).integers(
      0, 256, (len(y), config.image_size ** 2 * 3), dtype=np.uint8)
  split = (y, pixels, feats)
  full = evaluation.run_evaluators(config, split, split)
  config.eval.evaluators = ("knn",)
  only = evaluation.run_evaluators(config, split, split)
  assert {k.split("/")[2] for k in only} == {"knn", "online_probe"}
  assert only == {k: v for k, v in full.items() if k in only}
  assert len(only) == 3 * 2 + 1 + 2   # knn of 3 models x 2 features, pixels, 2 probes
  config.eval.evaluators = ("knn", "svn")
  with pytest.raises(config_lib.ConfigError, match="eval.evaluators must name"):
    config_lib.validate(config)


def _unwritable_folder(tmp_path):
  """A folder this process cannot write into: read-only by mode, or, for
  root (whom modes do not stop), a path on the read-only /sys."""
  if os.geteuid() != 0:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder)
  return "/sys/sgan_jax_evaluation_output"


def test_evaluate_cli_refuses_an_unwritable_output_dir_before_computing(tmp_path, root,
                                                                       tiny_config):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(tiny_config().to_json())
  out_dir = _unwritable_folder(tmp_path)
  out = subprocess.run([sys.executable, "-m", "sgan_jax.evaluate", f"--workdir={workdir}",
                        f"--output_dir={out_dir}", "--compilation_cache_dir="],
                       capture_output=True, text=True, cwd=root, timeout=300)
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert out.returncode == 2, out.stderr[-2000:]
  assert len(errors) == 1 and "cannot set up the evaluation" in errors[0], out.stderr
  assert out_dir in errors[0] and "Traceback" not in out.stderr


def test_raw_pixels_are_kept_as_uint8_and_the_baseline_sees_at_most_32x32(
    mock_tfds, tiny_config):
  config = tiny_config()
  state = create_train_state(config, jax.random.PRNGKey(0))
  with mock_tfds(num_examples=9):
    builder = dataset_builders.get_builder(config)
    _, pixels, _ = evaluation.extract_features(state.spec, {"d": state.d_params}, config,
                                               builder, "test", sharding.make_mesh())
    (batch,) = list(input_pipeline.EvalBatches(config, builder, "test", 16))
  assert pixels.dtype == np.uint8 and pixels.shape == (9, 16 * 16 * 3)
  # Within half a grey level of the test view the evaluators used to see.
  np.testing.assert_allclose(evaluation.images_of(pixels, 16), batch["image"],
                             atol=0.5 / 127.5 + 1e-6)
  rng = np.random.default_rng(0)
  for size, f in [(16, 1), (32, 1), (64, 2), (128, 4)]:
    rows = rng.integers(0, 256, (3, size * size * 3), dtype=np.uint8)
    images = rows.reshape(3, size, size, 3).astype(np.float64)
    # The f x f block means, summed from strided views.
    want = sum(images[:, i::f, j::f] for i in range(f) for j in range(f)) / f ** 2
    got = evaluation.baseline_pixels(rows, size)
    assert got.shape == (3, (size // f) ** 2 * 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, (want / 127.5 - 1.0).reshape(3, -1), atol=1e-6)


def test_training_evaluator_computes_the_baselines_once(mock_tfds, tiny_config, tmp_path,
                                                        monkeypatch):
  """Two evaluations: the random-init D, G's classifier and the random-init
  G are made once, the baselines' features are scored once, and the second
  evaluation reports the first one's baseline values."""
  config = tiny_config()
  config.eval.evaluators = ("knn",)
  config.model.embed_dim = 12   # unlike the backbone's width: the runs tell them apart
  config.eval.classifier_epochs = 1
  counts = collections.Counter()

  def counted(name, fn):
    def wrapper(*args, **kwargs):
      counts[name] += 1
      return fn(*args, **kwargs)
    return wrapper
  monkeypatch.setattr(evaluation, "random_init_params",
                      counted("random_init D", evaluation.random_init_params))
  monkeypatch.setattr(evaluation, "init_generator",
                      counted("random_init G", evaluation.init_generator))
  monkeypatch.setattr(generator_eval.ClassifierMetrics, "fit",
                      counted("classifier", generator_eval.ClassifierMetrics.fit))
  real_run = knn.KNearestNeighbours.run

  def run(self, train, test):   # which model: by the feature width
    counts["knn", train[0].shape[1]] += 1
    return real_run(self, train, test)
  monkeypatch.setattr(knn.KNearestNeighbours, "run", run)
  # What the evaluator reads of a train state, made by the functions that it
  # calls itself (so that their compilations are shared).
  spec, mesh = StepSpec.from_config(config), sharding.make_mesh()
  d_params = evaluation.random_init_params(spec, 1, mesh)
  g_params, g_state = jax.jit(init_generator, static_argnums=0)(spec, jax.random.PRNGKey(1))
  state = types.SimpleNamespace(spec=spec, d_params=d_params, d_ema_params=d_params,
                                g_ema_params=g_params, g_state=g_state)
  counts.clear()
  with mock_tfds(num_examples=24):
    evaluator = evaluation.TrainingEvaluator(config, dataset_builders.get_builder(config),
                                             mesh, str(tmp_path))
    first = evaluator(state, 1)
    first_counts = dict(counts)
    second = evaluator(state, 2)
  backbone, embedding = config.model.d_widths[-1], config.model.embed_dim
  pixels = config.image_size ** 2 * 3
  # d_ema, d and random_init on both feature sets; raw pixels once.
  assert first_counts == {"random_init D": 1, "random_init G": 1, "classifier": 1,
                          ("knn", backbone): 3, ("knn", embedding): 3, ("knn", pixels): 1}
  assert dict(counts) == {"random_init D": 1, "random_init G": 1, "classifier": 1,
                          ("knn", backbone): 5, ("knn", embedding): 5, ("knn", pixels): 1}
  assert set(first) == set(second)
  for key in first:
    if key.split("/")[0] in reporting.BASELINES or key.startswith(
        ("gen/random_init/", "gen/real_", "gen/classifier/")):
      assert second[key] == first[key], key
  assert reporting.read_results(str(tmp_path), 2) == second
  assert os.path.exists(tmp_path / reporting.CURVE_FILE)
