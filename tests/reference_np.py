"""Independent float64 NumPy implementations of the formulas of docs/method.md §3.

Written from the formulas, loop by loop where that is clearer, so that they
share no code with `sgan_jax.losses`.
"""
import numpy as np


def normalize_rows(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def coding_rate(x, eps, renormalize_mean=True):
  x = np.asarray(x, np.float64)
  n, c = x.shape
  mu = x.mean(axis=0)
  if renormalize_mean:
    mu = mu / np.linalg.norm(mu)
  cov = np.zeros((c, c))
  for i in range(n):
    d = x[i] - mu
    cov += np.outer(d, d)
  cov /= n + 1e-5
  sign, logdet = np.linalg.slogdet(np.eye(c) + (c / eps) * cov)
  assert sign > 0
  return logdet


def gaussian_jsd(real, fake, eps=0.5, renormalize_mean=True):
  r = lambda x: coding_rate(x, eps, renormalize_mean)
  return 0.5 * (r(np.concatenate([real, fake])) - 0.5 * (r(real) + r(fake)))


def _neighbours(query_key, bank_keys, num, skip_first):
  sims = bank_keys @ query_key
  order = sorted(range(len(sims)), key=lambda j: (-sims[j], j))  # stable
  return order[1:num + 1] if skip_first else order[:num]


def knn_similarities(real_keys, real_emb, fake_keys, fake_emb, queue_keys,
                     queue_emb, k=1, skip_nearest_fake=True):
  args = [np.asarray(a, np.float64) for a in (real_keys, real_emb, fake_keys,
                                              fake_emb, queue_keys, queue_emb)]
  real_keys, real_emb, fake_keys, fake_emb, queue_keys, queue_emb = args
  bank_keys = np.concatenate([real_keys, queue_keys])
  bank_emb = np.concatenate([real_emb, queue_emb])
  real_vals = [real_emb[i] @ bank_emb[j] for i in range(len(real_keys))
               for j in _neighbours(real_keys[i], bank_keys, k, True)]
  fake_vals = [fake_emb[i] @ bank_emb[j] for i in range(len(fake_keys))
               for j in _neighbours(fake_keys[i], bank_keys, k,
                                    skip_nearest_fake)]
  return np.mean(real_vals), np.mean(fake_vals)


def smoothness_penalty(sigma):
  return np.mean((np.asarray(sigma, np.float64) - 1.0) ** 2)


def norm_hinge(e):
  norms = np.linalg.norm(np.asarray(e, np.float64), axis=-1)
  return np.mean(np.where(norms < 1.0, norms - 1.0, 0.0) ** 2)


def cross_entropy(logits, labels):
  logits = np.asarray(logits, np.float64)
  m = logits.max(axis=1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
  return -np.mean(logp[np.arange(len(labels)), labels])


def discriminator_loss(real_emb, fake_emb, real_raw, real_keys, fake_keys,
                       queue_keys, queue_emb, sigma, logits, labels, eps=0.5,
                       k=1, skip_nearest_fake=True, w_knn=3.0, w_smooth=5.0,
                       w_hinge=20.0, w_probe=1.0, renormalize_mean=True):
  jsd = gaussian_jsd(real_emb, fake_emb, eps, renormalize_mean)
  rs, fs = knn_similarities(real_keys, real_emb, fake_keys, fake_emb,
                            queue_keys, queue_emb, k, skip_nearest_fake)
  return (-jsd + w_knn * (-rs + fs) + w_smooth * smoothness_penalty(sigma)
          + w_hinge * norm_hinge(real_raw) + w_probe * cross_entropy(logits, labels))


def generator_loss(real_emb, fake_emb, real_keys, fake_keys, queue_keys,
                   queue_emb, eps=0.5, k=1, skip_nearest_fake=True, w_knn=3.0):
  jsd = gaussian_jsd(real_emb, fake_emb, eps)
  _, fs = knn_similarities(real_keys, real_emb, fake_keys, fake_emb,
                           queue_keys, queue_emb, k, skip_nearest_fake)
  return jsd - w_knn * fs
