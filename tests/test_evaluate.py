"""Evaluators against known structure, NumPy brute force and scikit-learn."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sgan_jax import config_lib, evaluation, input_pipeline, sharding, train
from sgan_jax.evaluators import kmeans, knn, linear_probe
from sgan_jax.state import create_train_state


def eval_config(**overrides):
  config = config_lib.reference_config().eval
  config.update(overrides)
  return config


def gaussian_clusters(seed, per_class=30, classes=4, dim=16, spread=0.05):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((classes, dim)) * 3
  x = np.concatenate([c + spread * rng.standard_normal((per_class, dim)) for c in centres])
  y = np.repeat(np.arange(classes), per_class)
  return x.astype(np.float32), y


def test_separated_clusters_are_recovered():
  x, y = gaussian_clusters(0)
  cfg = eval_config(knn_k=10, probe_epochs=30, probe_batch_size=32, probe_lr=1e-2)
  assert knn.evaluate((x, y), (x, y), 4, cfg)["top1"] == 1.0
  assert linear_probe.evaluate((x, y), (x, y), 4, cfg)["top1"] == 1.0
  scores = kmeans.evaluate(None, (x, y), 4, cfg)
  assert scores["acc"] == 1.0 and scores["nmi"] == pytest.approx(1.0)
  assert scores["ari"] == pytest.approx(1.0)


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


def test_linear_probe_close_to_sklearn_logistic_regression():
  from sklearn.datasets import load_digits
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler
  x, y = load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(y))
  tr, te = order[:1200], order[1200:]
  scaler = StandardScaler().fit(x[tr])
  sk = LogisticRegression(max_iter=2000).fit(scaler.transform(x[tr]), y[tr])
  sk_acc = sk.score(scaler.transform(x[te]), y[te])
  ours = linear_probe.evaluate((x[tr], y[tr]), (x[te], y[te]), 10, eval_config())["top1"]
  assert abs(ours - sk_acc) <= 0.02, (ours, sk_acc)


def test_kmeans_matched_accuracy_is_permutation_invariant():
  labels = np.array([0, 0, 1, 1, 2, 2])
  assert kmeans.matched_accuracy(labels, np.array([2, 2, 0, 0, 1, 1]), 3) == 1.0
  assert kmeans.matched_accuracy(labels, np.array([2, 2, 0, 1, 1, 1]), 3) == pytest.approx(5 / 6)


def test_feature_extraction_padding_does_not_change_results(mock_tfds, tiny_config):
  config = tiny_config()
  state = create_train_state(config, jax.random.PRNGKey(0))
  mesh = sharding.make_mesh()
  with mock_tfds(num_examples=21):
    builder = input_pipeline.get_builder(config)
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
  scores = [knn.evaluate((f["d"]["backbone"], y), (f["d"]["backbone"], y), 10, cfg)
            for y, _, f in got]
  assert all(s == scores[0] for s in scores)


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
      assert 0 <= results[f"{model}/{feature}/linear/top1"] <= 1
      for metric in ("acc", "nmi", "ari"):
        assert f"{model}/{feature}/kmeans/{metric}" in results
  assert "raw_pixels/pixels/knn/top1" in results
  assert "raw_pixels/pixels/linear/top1" in results
  assert "d_ema/backbone/online_probe/top1" in results
  # Raw pixels of digits are easy: a sanity floor, far above chance (0.1).
  assert results["raw_pixels/pixels/knn/top1"] > 0.8


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
