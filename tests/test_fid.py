"""FID and Inception Score: the torch-free weights reader, the Flax
InceptionV3 against pytorch-fid's own module, the Fréchet distance against
pytorch-fid's, and the way FID is enabled or skipped.

The pytorch-fid comparisons need torch, torchvision and pytorch-fid, which do
not fit beside the interop extra's CPU torch; they run in a venv with the
`fidcheck` extra (docs/evaluation.md, "FID and Inception Score") and are skipped here
when pytorch-fid is not installed, with that reason. Any other failure to
import it (a broken torch or torchvision) fails them.
"""
import importlib
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from sgan_jax import config_lib, fid, generator_eval, inception, torch_files

DATA = os.path.join(os.path.dirname(__file__), "data")
SKIP_REASON = ("needs pytorch-fid (pip install -e '.[fidcheck]' in a separate venv, "
               "see docs/evaluation.md)")


def import_or_skip(module: str, package: str = "pytorch_fid"):
  """`module`, imported; skips the test only when `package` itself is not
  installed (any other error propagates)."""
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name != package:
      raise
    pytest.skip(SKIP_REASON)


@pytest.fixture
def pfi():
  """pytorch-fid's inception module."""
  return import_or_skip("pytorch_fid.inception")


@pytest.fixture
def torch(pfi):
  del pfi   # pytorch-fid installed, torch must be
  return importlib.import_module("torch")


def test_only_pytorch_fids_absence_skips():
  with pytest.raises(pytest.skip.Exception):
    import_or_skip("no_such_package_here.inception", "no_such_package_here")
  with pytest.raises(ModuleNotFoundError):   # a dependency missing: a failure
    import_or_skip("no_such_package_here.inception", "pytorch_fid")


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_torch_files_reads_both_layouts(layout):
  """The files were written by torch 2.13.0's torch.save (both layouts)."""
  with open(os.path.join(DATA, f"state_dict_{layout}.pth"), "rb") as f:
    got = torch_files.load_state_dict(f.read())
  assert list(got) == ["weight", "transposed", "offset", "half", "flag", "scalar"]
  np.testing.assert_array_equal(got["weight"], np.arange(12, dtype=np.float32).reshape(3, 4) / 4)
  assert got["transposed"].dtype == np.float64
  np.testing.assert_array_equal(got["transposed"], (np.arange(6.0).reshape(2, 3) - 2.5).T)
  np.testing.assert_array_equal(got["offset"], [3, 4, 5, 6])
  assert got["half"].dtype == np.float16 and got["half"].tolist() == [0.5, -1.25]
  assert got["flag"].tolist() == [True, False, True] and int(got["scalar"]) == 7


def test_torch_files_refuses_a_pickle_that_runs_code(tmp_path):
  marker = tmp_path / "ran"

  class Exploit:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  with pytest.raises(torch_files.UnsafeFileError, match="refusing 'posix.system'"):
    torch_files.load_state_dict(pickle.dumps({"w": Exploit()}))
  assert not marker.exists()


def _cheap_outputs(variables, images, batch):
  """Stands in for the 299x299 network (slow on a CPU): pool features
  are a fixed random projection of the pixels, probabilities their softmax."""
  flat = np.asarray(images, np.float64).reshape(len(images), -1)
  pool = np.tanh(flat @ variables)
  probs = np.exp(pool[:, :20]) / np.exp(pool[:, :20]).sum(1, keepdims=True)
  return pool, probs


def test_fid_of_a_set_against_itself_is_zero_and_the_train_stats_are_cached(
    tmp_path, monkeypatch, tiny_config):
  monkeypatch.setattr(fid, "inception_outputs", _cheap_outputs)
  config = tiny_config()
  projection = np.random.default_rng(0).standard_normal((16 * 16 * 3, 32)) * 0.05
  metrics = fid.InceptionMetrics(config, projection, tmp_path)
  rng = np.random.default_rng(1)
  real = rng.uniform(-1, 1, (200, 16, 16, 3)).astype(np.float32)
  metrics.fit(lambda: real)
  assert abs(metrics.score("same", real)["gen/same/fid"]) < 1e-9
  shifted = np.clip(real * 0.3 + 0.5, -1, 1)
  other = metrics.score("other", shifted)
  assert other["gen/other/fid"] > 0.1
  # The Inception Score: exp(mean KL(p(y|x) || p(y))) per split of 10, averaged.
  _, probs = _cheap_outputs(projection, shifted, None)
  want = np.mean([np.exp(np.mean(scipy.stats.entropy(p, p.mean(0), axis=1)))
                  for p in np.array_split(probs, 10)])
  assert other["gen/other/inception_score"] == pytest.approx(want, rel=1e-6)
  assert want > 1.01   # the splits' predictions are not all the same
  (cached,) = list(tmp_path.glob("fid_stats_*.npz"))
  assert cached.name == "fid_stats_cifar10_train_16.npz"
  again = fid.InceptionMetrics(config, projection, tmp_path)
  again.fit(lambda: pytest.fail("the cached statistics were not used"))
  np.testing.assert_array_equal(again.train_stats[1], metrics.train_stats[1])


def test_without_weights_fid_is_skipped_with_a_message(caplog, tiny_config):
  config = tiny_config()
  with caplog.at_level("INFO"):
    assert fid.InceptionMetrics.create(config, "/nonexistent") is None
  assert "--config.eval.inception_weights=PATH" in caplog.text


def test_a_missing_weights_file_is_a_config_error(tmp_path, tiny_config):
  config = tiny_config()
  config.eval.inception_weights = str(tmp_path / "nope.pth")
  with pytest.raises(config_lib.ConfigError, match="eval.inception_weights: no file at"):
    config_lib.validate(config)


def test_inception_score_limits():
  k = inception.NUM_LOGITS
  confident = np.eye(k)[np.arange(200) % 20]   # 20 classes, evenly
  assert fid.inception_score(confident, splits=10) == pytest.approx(20, rel=1e-6)
  assert fid.inception_score(np.full((50, k), 1 / k)) == pytest.approx(1.0)


def test_frechet_distance_matches_pytorch_fid():
  calculate_frechet_distance = import_or_skip("pytorch_fid.fid_score").calculate_frechet_distance
  rng = np.random.default_rng(0)
  for dim in (8, 64):
    a, b = rng.standard_normal((2, dim, 3 * dim))
    mu1, mu2 = rng.standard_normal((2, dim))
    s1, s2 = a @ a.T / dim, b @ b.T / dim
    want = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert generator_eval.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-6)


def _pytorch_fid_model_with_random_weights(pfi, torch, seed=0):
  """pytorch-fid's FID InceptionV3, built as `fid_inception_v3` builds it
  but with random weights instead of the downloaded ones."""
  torch.manual_seed(seed)
  net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = pfi.FIDInceptionE_1(1280)
  net.Mixed_7c = pfi.FIDInceptionE_2(2048)
  gen = torch.Generator().manual_seed(seed)
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      n = module.num_features
      module.weight.data = 0.5 + torch.rand(n, generator=gen)
      module.bias.data = 0.1 * torch.randn(n, generator=gen)
      module.momentum = 1.0   # the calibration pass sets the statistics
  return net


def _calibrated_reference(pfi, torch, net, images01):
  """pytorch-fid's wrapper around `net`, with each batch norm's statistics
  set from one pass over `images01`: every layer then keeps its input's
  variation, so that the 2048-d features depend on the image (with
  arbitrary statistics a random network maps all images to nearly the same
  point, and the comparison would not see the input path)."""
  reference = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
  reference.train()
  with torch.no_grad():
    reference(torch.from_numpy(images01))
  return reference.eval()


def test_flax_inception_matches_pytorch_fid(tmp_path, monkeypatch, pfi, torch):
  net = _pytorch_fid_model_with_random_weights(pfi, torch)
  monkeypatch.setattr(pfi, "fid_inception_v3", lambda: net)
  rng = np.random.default_rng(1)
  # NCHW in [0, 1], smooth at the 8x8 scale as natural images are.
  images01 = np.repeat(np.repeat(rng.uniform(0, 1, (6, 3, 8, 8)), 4, 2), 4, 3)
  images01 = (images01 + 0.1 * rng.uniform(0, 1, images01.shape)).astype(np.float32) / 1.1
  reference = _calibrated_reference(pfi, torch, net, images01)
  path = tmp_path / "random_pt_inception.pth"
  torch.save(net.state_dict(), path)
  with torch.no_grad():
    pool = reference(torch.from_numpy(images01))[0][:, :, 0, 0]
    logits = net.fc(pool).numpy()
  # The features differ between images: the input path is compared too.
  assert pool.numpy().std(0).mean() > 0.05 * pool.numpy().std()
  variables = fid.load_variables(str(path))   # through the torch-free reader
  ours_pool, ours_logits = jax.jit(inception.FIDInceptionV3().apply)(
      variables, jnp.asarray(images01.transpose(0, 2, 3, 1) * 2 - 1))
  scale = np.abs(pool.numpy()).max()
  np.testing.assert_allclose(np.asarray(ours_pool), pool.numpy(), rtol=1e-4, atol=1e-4 * scale)
  np.testing.assert_allclose(np.asarray(ours_logits), logits, rtol=1e-4,
                             atol=1e-4 * np.abs(logits).max())
