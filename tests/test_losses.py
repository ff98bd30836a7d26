"""The public loss API against float64 NumPy references and the properties
of docs/method.md §3."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgan_jax import losses
import reference_np as ref

SHAPES = [(8, 8, 4), (16, 12, 8), (33, 17, 16)]   # (N real, M fake, C)


def unit_rows(rng, n, c):
  return ref.normalize_rows(rng.standard_normal((n, c)))


def close(actual, expected, x64):
  tol = 1e-5 if x64 else 1e-4
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                             rtol=tol, atol=tol * 1e-2)


@pytest.fixture(params=[True, False], ids=["x64", "f32"])
def x64(request):
  with jax.enable_x64(request.param):
    yield request.param


def as_jax(x64, *arrays):
  dtype = jnp.float64 if x64 else jnp.float32
  return [jnp.asarray(a, dtype) for a in arrays]


@pytest.mark.parametrize("n,m,c", SHAPES)
@pytest.mark.parametrize("eps", [0.5, 0.1])
def test_gaussian_jsd_matches_numpy(x64, n, m, c, eps):
  rng = np.random.default_rng(n * m + c)
  real, fake = unit_rows(rng, n, c), unit_rows(rng, m, c) + 0.3
  fake = ref.normalize_rows(fake)
  got = jax.jit(losses.gaussian_jsd)(*as_jax(x64, real, fake), eps=eps)
  assert got.dtype == (jnp.float64 if x64 else jnp.float32)
  assert got.shape == ()
  close(got, ref.gaussian_jsd(real, fake, eps), x64)


def test_gaussian_jsd_without_mean_renormalisation():
  rng = np.random.default_rng(0)
  real, fake = unit_rows(rng, 10, 6), unit_rows(rng, 7, 6)
  with jax.enable_x64(True):
    got = losses.gaussian_jsd(real, fake, renormalize_mean=False)
  np.testing.assert_allclose(got, ref.gaussian_jsd(real, fake, 0.5, False),
                             rtol=1e-10)
  assert not np.isclose(got, ref.gaussian_jsd(real, fake, 0.5, True))


def test_gaussian_jsd_properties():
  rng = np.random.default_rng(1)
  x, y = unit_rows(rng, 20, 8), unit_rows(rng, 20, 8)
  with jax.enable_x64(True):
    # Zero up to the 1e-5 in Sigma's denominator (N vs 2N rows).
    same = float(losses.gaussian_jsd(x, x))
    assert abs(same) < 1e-5
    np.testing.assert_allclose(same, ref.gaussian_jsd(x, x), rtol=1e-8)
    assert np.isclose(losses.gaussian_jsd(x, y), losses.gaussian_jsd(y, x))
    assert losses.gaussian_jsd(x, y) > 0
    # Shifted means alone are seen too: same shape, different location.
    shifted = ref.normalize_rows(x + np.eye(8)[0] * 2.0)
    assert losses.gaussian_jsd(x, shifted) > 0.05


@pytest.mark.parametrize("n,m,c", SHAPES)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("skip", [True, False])
def test_knn_similarities_match_numpy(x64, n, m, c, k, skip):
  rng = np.random.default_rng(7 * n + k)
  ck, kq = c + 4, 24
  arrays = (unit_rows(rng, n, ck), unit_rows(rng, n, c), unit_rows(rng, m, ck),
            unit_rows(rng, m, c), unit_rows(rng, kq, ck), unit_rows(rng, kq, c))
  fn = jax.jit(losses.knn_similarities, static_argnames=("k", "skip_nearest_fake"))
  rs, fs = fn(*as_jax(x64, *arrays), k=k, skip_nearest_fake=skip)
  ers, efs = ref.knn_similarities(*arrays, k=k, skip_nearest_fake=skip)
  close(rs, ers, x64)
  close(fs, efs, x64)


@pytest.mark.parametrize("num", [1, 2, 5, 8, 9])
def test_top_indices_match_a_stable_sort_with_ties(num):
  # Scores on a coarse grid tie often; the neighbour search must take the
  # lower index among equal scores (a real row's first neighbour is itself).
  # Reference: NumPy's stable descending argsort. num 9 is lax.top_k's path.
  rng = np.random.default_rng(num)
  scores = rng.integers(-3, 4, (7, 40)).astype(np.float32) / 4
  expected = np.argsort(-scores, axis=1, kind="stable")[:, :num]
  got = jax.jit(losses._top_indices, static_argnums=1)(jnp.asarray(scores), num)
  np.testing.assert_array_equal(got, expected)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, jax.lax.top_k(jnp.asarray(scores), num)[1])


def test_knn_partial_jit_calling_convention():
  rng = np.random.default_rng(3)
  arrays = [unit_rows(rng, r, 6) for r in (5, 5, 4, 4, 10, 10)]
  rs, fs = jax.jit(functools.partial(losses.knn_similarities, k=3))(*arrays)
  np.testing.assert_allclose([rs, fs], ref.knn_similarities(*arrays, k=3),
                             rtol=1e-5)


def test_knn_excludes_self_neighbour():
  # With an empty-ish bank (queue far away), a real row's only candidates are
  # itself and the other reals; excluding itself must pick the other row.
  keys = np.array([[1.0, 0.0], [0.8, 0.6]])
  emb = np.array([[1.0, 0.0], [0.0, 1.0]])
  queue = np.array([[-1.0, 0.0]])
  rs, _ = losses.knn_similarities(keys, emb, keys, emb, queue, queue, k=1)
  # Row 0's neighbour is row 1 (emb sim 0), row 1's is row 0 (0): mean 0.
  # Including self would give 1.
  assert float(rs) == pytest.approx(0.0, abs=1e-7)


def test_skip_nearest_fake():
  bank_keys = np.array([[1.0, 0.0], [0.0, 1.0]])
  real_emb = np.array([[1.0, 0.0], [0.0, 1.0]])
  fake_key = np.array([[0.9, 0.1]])    # nearest real: 0, second: 1
  fake_emb = np.array([[1.0, 0.0]])    # emb sim to real 0 is 1, to real 1 is 0
  q = np.array([[-1.0, 0.0]])
  kw = dict(k=1)
  _, skip = losses.knn_similarities(bank_keys, real_emb, fake_key, fake_emb,
                                    q, q, skip_nearest_fake=True, **kw)
  _, keep = losses.knn_similarities(bank_keys, real_emb, fake_key, fake_emb,
                                    q, q, skip_nearest_fake=False, **kw)
  assert float(keep) == pytest.approx(1.0)   # the nearest real itself
  assert float(skip) == pytest.approx(0.0)   # the second nearest


def test_knn_gradient_flows_to_batch_not_queue():
  rng = np.random.default_rng(5)
  rk, re, fk, fe, qk, qe = [jnp.asarray(unit_rows(rng, r, 6))
                            for r in (6, 6, 5, 5, 12, 12)]

  def objective(real_emb, fake_emb, queue_emb):
    rs, fs = losses.knn_similarities(rk, real_emb, fk, fake_emb, qk, queue_emb)
    return -rs + fs
  g_real, g_fake, g_queue = jax.grad(objective, argnums=(0, 1, 2))(re, fe, qe)
  assert np.abs(g_real).sum() > 0
  assert np.abs(g_fake).sum() > 0
  assert np.all(np.asarray(g_queue) == 0)


def test_smoothness_and_hinge_match_numpy(x64):
  rng = np.random.default_rng(9)
  sigma = rng.uniform(0, 2, 13)
  e = rng.standard_normal((13, 5)) * rng.uniform(0.05, 0.8, (13, 1))
  s, h = as_jax(x64, sigma, e)
  close(jax.jit(losses.smoothness_penalty)(s), ref.smoothness_penalty(sigma), x64)
  close(jax.jit(losses.norm_hinge)(h), ref.norm_hinge(e), x64)
  assert ref.norm_hinge(e * 10) < ref.norm_hinge(e)  # hinge fades above norm 1
  assert float(losses.norm_hinge(h / jnp.linalg.norm(h, axis=1, keepdims=True) * 2)) == 0.0


def _loss_inputs(rng, n, m, c, ck, kq, classes=5):
  return dict(
      real_emb=unit_rows(rng, n, c), fake_emb=unit_rows(rng, m, c),
      real_raw=rng.standard_normal((n, c)) * 0.4, real_keys=unit_rows(rng, n, ck),
      fake_keys=unit_rows(rng, m, ck), queue_keys=unit_rows(rng, kq, ck),
      queue_emb=unit_rows(rng, kq, c), sigma=rng.uniform(0, 2, n + m),
      logits=rng.standard_normal((n, classes)),
      labels=rng.integers(0, classes, n))


@pytest.mark.parametrize("n,m,c", SHAPES)
def test_discriminator_and_generator_loss_match_numpy(x64, n, m, c):
  rng = np.random.default_rng(n + 100 * c)
  a = _loss_inputs(rng, n, m, c, c + 2, 16)
  w = dict(knn_weight=2.0, smoothness_weight=4.0, norm_hinge_weight=10.0,
           probe_weight=0.5)
  order = ["real_emb", "fake_emb", "real_raw", "real_keys", "fake_keys",
           "queue_keys", "queue_emb", "sigma", "logits"]
  floats = as_jax(x64, *[a[key] for key in order])
  d_fn = jax.jit(losses.discriminator_loss, static_argnames=("k", "skip_nearest_fake"))
  loss, metrics = d_fn(*floats, jnp.asarray(a["labels"]), eps=0.3, k=2, **w)
  expected = ref.discriminator_loss(*[a[key] for key in order], a["labels"],
                                    eps=0.3, k=2, w_knn=2.0, w_smooth=4.0,
                                    w_hinge=10.0, w_probe=0.5)
  close(loss, expected, x64)
  close(metrics["jsd"], ref.gaussian_jsd(a["real_emb"], a["fake_emb"], 0.3), x64)
  g_fn = jax.jit(losses.generator_loss, static_argnames=("k", "skip_nearest_fake"))
  g_floats = [floats[i] for i in (0, 1, 3, 4, 5, 6)]
  g_loss, _ = g_fn(*g_floats, eps=0.3, k=2, knn_weight=2.0)
  close(g_loss, ref.generator_loss(*[a[order[i]] for i in (0, 1, 3, 4, 5, 6)],
                                   eps=0.3, k=2, w_knn=2.0), x64)


def test_structured_and_keyword_forms_agree_exactly():
  """`discriminator_objective`/`generator_objective` on named tuples give
  the very values of `discriminator_loss`/`generator_loss` on arrays."""
  rng = np.random.default_rng(11)
  a = {k: jnp.asarray(v) for k, v in _loss_inputs(rng, 9, 7, 6, 8, 20).items()}
  settings = losses.LossSettings(eps=0.3, k=2, skip_nearest_fake=False,
                                 renormalize_mean=False, knn_weight=2.0)
  weights = losses.DWeights(smoothness_weight=4.0, norm_hinge_weight=10.0,
                            probe_weight=0.5)
  real = losses.DHalf(a["real_emb"], a["real_keys"], a["real_raw"], a["logits"])
  fake = losses.DHalf(a["fake_emb"], a["fake_keys"])
  bank = losses.MemoryBank(a["queue_keys"], a["queue_emb"])
  static = ("k", "skip_nearest_fake", "renormalize_mean")
  d_struct = jax.jit(losses.discriminator_objective, static_argnums=5)(
      real, fake, bank, a["sigma"], a["labels"], settings, weights)
  d_keyword = jax.jit(losses.discriminator_loss, static_argnames=static)(
      a["real_emb"], a["fake_emb"], a["real_raw"], a["real_keys"], a["fake_keys"],
      a["queue_keys"], a["queue_emb"], a["sigma"], a["logits"], a["labels"],
      **settings._asdict(), **weights._asdict())
  g_struct = jax.jit(losses.generator_objective, static_argnums=3)(
      losses.DHalf(a["real_emb"], a["real_keys"]), fake, bank, settings)
  g_keyword = jax.jit(losses.generator_loss, static_argnames=static)(
      a["real_emb"], a["fake_emb"], a["real_keys"], a["fake_keys"], a["queue_keys"],
      a["queue_emb"], **settings._asdict())
  for struct, keyword in ((d_struct, d_keyword), (g_struct, g_keyword)):
    assert jax.tree.structure(struct) == jax.tree.structure(keyword)
    jax.tree.map(np.testing.assert_array_equal, struct, keyword)
  # And the keyword form is the loss the NumPy reference computes.
  expected = ref.discriminator_loss(
      *[np.asarray(a[k]) for k in ("real_emb", "fake_emb", "real_raw", "real_keys",
                                   "fake_keys", "queue_keys", "queue_emb", "sigma",
                                   "logits")], np.asarray(a["labels"]), eps=0.3, k=2,
      w_knn=2.0, w_smooth=4.0, w_hinge=10.0, w_probe=0.5, skip_nearest_fake=False,
      renormalize_mean=False)
  np.testing.assert_allclose(d_keyword[0], expected, rtol=1e-4)


def test_public_names():
  """`__all__` lists every loss function and the structured form's types,
  each defined in the module."""
  assert {"gaussian_jsd", "knn_similarities", "jacobian_sigma", "power_iteration_sigma",
          "smoothness_penalty", "norm_hinge", "discriminator_loss", "generator_loss",
          "discriminator_objective", "generator_objective", "DHalf", "MemoryBank",
          "LossSettings", "DWeights"} == set(losses.__all__)
  for name in losses.__all__:
    assert getattr(losses, name).__module__ == losses.__name__, name


def test_float_hyperparameters_may_be_traced():
  rng = np.random.default_rng(2)
  a = _loss_inputs(rng, 6, 6, 4, 4, 12)
  fn = jax.jit(lambda eps, w: losses.generator_loss(
      a["real_emb"], a["fake_emb"], a["real_keys"], a["fake_keys"],
      a["queue_keys"], a["queue_emb"], eps=eps, knn_weight=w)[0])
  np.testing.assert_allclose(
      fn(0.5, 3.0), ref.generator_loss(a["real_emb"], a["fake_emb"],
                                        a["real_keys"], a["fake_keys"],
                                        a["queue_keys"], a["queue_emb"]),
      rtol=1e-4)


# ---------------------------------------------------------------- jacobian_sigma

def _mlp(params, x):
  """Per-sample smooth network [N, 3, 3, 2] -> [N, 5]."""
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
  return h @ params["w2"]


def _mlp_params(seed, dtype):
  rng = np.random.default_rng(seed)
  return {"w1": jnp.asarray(rng.standard_normal((18, 12)) * 0.5, dtype),
          "b1": jnp.asarray(rng.standard_normal(12) * 0.1, dtype),
          "w2": jnp.asarray(rng.standard_normal((12, 5)) * 0.5, dtype)}


def _exact_top_singular_values(params, x):
  per_sample = lambda xi: _mlp(params, xi[None])[0]
  out = []
  for xi in x:
    jac = np.asarray(jax.jacfwd(per_sample)(xi), np.float64).reshape(5, -1)
    out.append(np.linalg.svd(jac, compute_uv=False)[0])
  return np.array(out)


def test_jacobian_sigma_against_exact_svd():
  with jax.enable_x64(True):
    params = _mlp_params(0, jnp.float64)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((6, 3, 3, 2)))
    exact = _exact_top_singular_values(params, x)
    fn = functools.partial(_mlp, params)
    converged = jax.jit(losses.jacobian_sigma, static_argnums=(0, 3))(
        fn, x, jax.random.PRNGKey(0), 30)
    np.testing.assert_allclose(converged, exact, rtol=1e-4)
    for seed in range(5):
      one = losses.jacobian_sigma(fn, x, jax.random.PRNGKey(seed), num_iters=1)
      assert np.all(np.asarray(one) <= exact * (1 + 1e-12))
      assert np.all(np.asarray(one) > 0)


def test_jacobian_sigma_float32_close_to_exact():
  params = _mlp_params(0, jnp.float32)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((6, 3, 3, 2)),
                  jnp.float32)
  with jax.enable_x64(True):
    exact = _exact_top_singular_values(jax.tree.map(lambda a: a.astype(jnp.float64), params),
                                       x.astype(jnp.float64))
  got = losses.jacobian_sigma(functools.partial(_mlp, params), x,
                              jax.random.PRNGKey(0), num_iters=30)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, exact, rtol=1e-4)


def test_jacobian_sigma_linear_converges_to_top_singular_value():
  # e = W x has the same Jacobian W for every sample (docs/method.md §3.3).
  with jax.enable_x64(True):
    w = np.random.default_rng(4).standard_normal((7, 12))
    top = np.linalg.svd(w, compute_uv=False)[0]
    x = jnp.ones((3, 12))
    fn = lambda t: t @ jnp.asarray(w).T
    errs = [np.max(np.abs(losses.jacobian_sigma(fn, x, jax.random.PRNGKey(0),
                                                num_iters=i) - top))
            for i in (1, 5, 60)]
    assert errs[-1] < 1e-8
    assert errs[0] >= errs[1] >= errs[2]


def test_jacobian_sigma_parameter_gradient_matches_finite_differences():
  # At convergence the singular vectors are stationary, so the gradient with
  # u, v held fixed (what the gradient of sigma takes) is the total derivative.
  with jax.enable_x64(True):
    params = _mlp_params(3, jnp.float64)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 3, 3, 2)))
    key = jax.random.PRNGKey(1)

    def objective(p):
      sigma = losses.jacobian_sigma(functools.partial(_mlp, p), x, key, 60)
      return losses.smoothness_penalty(sigma)
    grad = jax.grad(objective)(params)
    rng = np.random.default_rng(0)
    for name in params:
      for _ in range(3):
        idx = tuple(rng.integers(0, s) for s in params[name].shape)
        h = 1e-6
        plus = {**params, name: params[name].at[idx].add(h)}
        minus = {**params, name: params[name].at[idx].add(-h)}
        fd = (objective(plus) - objective(minus)) / (2 * h)
        np.testing.assert_allclose(grad[name][idx], fd, rtol=1e-5, atol=1e-8)


def test_jacobian_sigma_gradient_one_iteration_matches_fixed_vectors():
  # With one iteration, the gradient is that of <J(p)^T u, v> with the
  # iteration's u and v frozen; check against finite differences of that.
  with jax.enable_x64(True):
    params = _mlp_params(5, jnp.float64)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 3, 3, 2)))
    key = jax.random.PRNGKey(2)
    u0 = jax.random.normal(key, (3, 5), jnp.float64)
    fn0 = functools.partial(_mlp, params)
    _, vjp0 = jax.vjp(fn0, x)
    v = vjp0(u0)[0]
    v = v / jnp.linalg.norm(v.reshape(3, -1), axis=1)[:, None, None, None]
    u = jax.jvp(fn0, (x,), (v,))[1]
    u = u / jnp.linalg.norm(u, axis=1, keepdims=True)

    def frozen(p):
      _, vjp = jax.vjp(functools.partial(_mlp, p), x)
      return jnp.sum(vjp(u)[0] * v)
    total = lambda p: jnp.sum(losses.jacobian_sigma(
        functools.partial(_mlp, p), x, key, 1))
    np.testing.assert_allclose(total(params), frozen(params), rtol=1e-12)
    g = jax.grad(total)(params)
    h = 1e-6
    for name in params:
      idx = (0,) * params[name].ndim
      fd = (frozen({**params, name: params[name].at[idx].add(h)})
            - frozen({**params, name: params[name].at[idx].add(-h)})) / (2 * h)
      np.testing.assert_allclose(g[name][idx], fd, rtol=1e-5, atol=1e-9)


def test_jacobian_sigma_rejects_zero_iterations():
  with pytest.raises(ValueError, match="num_iters must be >= 1"):
    losses.jacobian_sigma(lambda t: t, jnp.ones((2, 3)), jax.random.PRNGKey(0), 0)
