"""D and G: reference parameter counts, shapes, per-sample D, G's state."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgan_jax.models import Discriminator, Generator, layers


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_reference_parameter_counts():
  d_vars = jax.eval_shape(lambda: Discriminator().init(
      jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3))))
  assert set(d_vars) == {"params"}
  p = d_vars["params"]
  assert count(p["encoder"]) == 11_164_864
  assert count(p["head"]) == 328_320
  assert count(p["probe"]) == 5_130
  g_vars = jax.eval_shape(lambda: Generator().init(
      jax.random.PRNGKey(0), jnp.zeros((2, 128))))
  assert count(g_vars["params"]) == 5_025_667
  assert set(g_vars) == {"params", "batch_stats", "spectral"}


@pytest.mark.parametrize("res,widths", [(32, (8, 16, 16, 32)),
                                        (64, (8, 16, 16, 32, 32)),
                                        (128, (8, 8, 16, 16, 32, 32))])
def test_output_shapes_at_each_resolution(res, widths):
  d = Discriminator(res, widths, 1, embed_dim=12, num_classes=7)
  g = Generator(res, ch=4, depth=1, z_dim=8)
  d_out = jax.eval_shape(lambda: d.apply(
      d.init(jax.random.PRNGKey(0), jnp.zeros((2, res, res, 3))),
      jnp.zeros((5, res, res, 3))))
  assert d_out.backbone.shape == (5, widths[-1])
  assert d_out.raw_embedding.shape == d_out.embedding.shape == (5, 12)
  assert d_out.probe_logits.shape == (5, 7)
  g_out = jax.eval_shape(lambda: g.init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((3, 8)))[0])
  assert g_out.shape == (3, res, res, 3)


def test_bad_widths_and_resolution_are_rejected():
  with pytest.raises(ValueError, match="needs 4 stage widths"):
    Discriminator(32, (16, 32, 64)).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="not divisible into 3 GroupNorm groups"):
    Discriminator(16, (16, 32, 50)).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="unsupported resolution 48"):
    Generator(48, ch=4).init(jax.random.PRNGKey(0), jnp.zeros((2, 128)))


@pytest.fixture(scope="module")
def small_d():
  d = Discriminator(16, (8, 16, 32), 1, embed_dim=8, num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 16, 16, 3))
  return d, d.init(jax.random.PRNGKey(0), x), x


def test_discriminator_has_no_cross_sample_interaction(small_d):
  d, v, x = small_d
  full = d.apply(v, x)
  for i in (0, 4):
    alone = d.apply(v, x[i:i + 1])
    for a, b in zip(full, alone):
      np.testing.assert_allclose(a[i], b[0], rtol=1e-5, atol=1e-6)


def test_discriminator_outputs(small_d):
  d, v, x = small_d
  out = d.apply(v, x)
  np.testing.assert_allclose(np.linalg.norm(out.embedding, axis=1), 1, rtol=1e-6)
  np.testing.assert_allclose(out.embedding * np.linalg.norm(
      out.raw_embedding, axis=1, keepdims=True), out.raw_embedding, rtol=1e-5, atol=1e-6)
  keys = d.apply(v, x, method=d.keys)
  np.testing.assert_allclose(keys, out.backbone / np.linalg.norm(
      out.backbone, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
  # The probe sees stop_gradient(h): its loss gives the encoder no gradient.
  probe_loss = lambda p: jnp.sum(d.apply({"params": p}, x).probe_logits ** 2)
  g = jax.grad(probe_loss)(v["params"])
  assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(g["encoder"]))
  assert any(np.any(leaf != 0) for leaf in jax.tree.leaves(g["probe"]))


def test_init_follows_reference_scales():
  v = Discriminator(16, (32, 64, 64), 1, embed_dim=8).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  conv = np.asarray(v["encoder"]["stage2_block1"]["conv2"]["kernel"])
  # Kaiming normal, fan_out = 3*3*64, ReLU gain: std sqrt(2 / 576).
  assert conv.std() == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.05)
  dense = np.asarray(v["head"]["layers_0"]["Dense_0"]["kernel"])   # fan_in 64
  assert np.abs(dense).max() <= 1 / 8 and np.abs(dense).max() > 0.9 / 8


def test_spectral_normalisation_converges_to_unit_norm():
  g = Generator(16, ch=4, depth=1, z_dim=8)
  z = jax.random.normal(jax.random.PRNGKey(2), (4, 8))
  v = g.init(jax.random.PRNGKey(0), z)
  state = {c: v[c] for c in ("batch_stats", "spectral")}
  u0 = state["spectral"]["out_conv"]["u"]
  for _ in range(60):
    _, new = g.apply({"params": v["params"], **state}, z,
                     mutable=["batch_stats", "spectral"])
    state = dict(new)
  assert not np.allclose(u0, state["spectral"]["out_conv"]["u"])
  kernel = v["params"]["out_conv"]["kernel"]
  u_var = type("U", (), {"value": state["spectral"]["out_conv"]["u"]})()
  normed = layers.spectral_normalize(kernel, u_var, False, 1e-6)
  top = np.linalg.svd(np.asarray(normed).reshape(-1, 3), compute_uv=False)[0]
  assert top == pytest.approx(1.0, abs=1e-4)
  # Without `mutable`, G's state is not touched and apply returns images only.
  out = g.apply({"params": v["params"], **state}, z)
  assert out.shape == (4, 16, 16, 3)
  assert np.all(np.abs(out) <= 1)


def test_batch_norm_matches_pytorch_semantics():
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 3, 3, 4)) * 2 + 1
  bn = layers.BatchNorm(use_affine=False)
  v = bn.init(jax.random.PRNGKey(0), x)
  y, new = bn.apply(v, x, mutable=["batch_stats"])
  xn = np.asarray(x, np.float64).reshape(-1, 4)
  mean, var = xn.mean(0), xn.var(0)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 4),
                             (xn - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
  n = xn.shape[0]
  np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["var"],
                             0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
