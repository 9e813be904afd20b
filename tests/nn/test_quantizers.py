"""Quantizers against closed forms: EMA updates, remapping, usage statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.nn import quantizers


def _numpy_ema_step(weight, cluster_size, embed_avg, flat, decay, eps):
  """taming's EmbeddingEMA update written out in numpy (second code path)."""
  d = ((flat[:, None, :] - weight[None]) ** 2).sum(-1)
  idx = d.argmin(1)
  onehot = np.eye(weight.shape[0])[idx]
  cluster_size = decay * cluster_size + (1 - decay) * onehot.sum(0)
  embed_avg = decay * embed_avg + (1 - decay) * onehot.T @ flat
  n = cluster_size.sum()
  smoothed = (cluster_size + eps) / (n + weight.shape[0] * eps) * n
  return embed_avg / smoothed[:, None], cluster_size, embed_avg, idx


def test_ema_quantizer_update_matches_closed_form():
  q = quantizers.EMAVectorQuantizer(n_embed=8, embed_dim=3, beta=0.25, decay=0.9, eps=1e-5)
  h = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5, 3))
  variables = q.init(jax.random.PRNGKey(1), h)
  assert "params" not in variables  # the codebook is not trained by the optimizer
  state = {k: np.asarray(v, np.float64) for k, v in variables["ema_codebook"].items()}
  np.testing.assert_array_equal(state["embed_avg"], state["embedding"])
  for step in range(3):
    x = np.asarray(h) + step
    (z_q, loss, info), new = q.apply(variables, x, train=True, mutable=["ema_codebook"])
    w, cs, ea, idx = _numpy_ema_step(state["embedding"], state["cluster_size"],
                                     state["embed_avg"], x.reshape(-1, 3), 0.9, 1e-5)
    np.testing.assert_array_equal(np.asarray(info["indices"]).ravel(), idx)
    z = np.asarray(variables["ema_codebook"]["embedding"])[idx].reshape(x.shape)
    np.testing.assert_allclose(loss, 0.25 * np.mean((z - x) ** 2), rtol=1e-5)
    new = new["ema_codebook"]
    np.testing.assert_allclose(new["cluster_size"], cs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["embed_avg"], ea, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new["embedding"], w, rtol=1e-4, atol=1e-5)
    variables = {"ema_codebook": new}
    state = {"embedding": w, "cluster_size": cs, "embed_avg": ea}


def test_ema_quantizer_eval_does_not_update():
  q = quantizers.EMAVectorQuantizer(n_embed=8, embed_dim=3)
  h = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 2, 3))
  v = q.init(jax.random.PRNGKey(1), h)
  _, new = q.apply(v, h, train=False, mutable=["ema_codebook"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, new["ema_codebook"], v["ema_codebook"])


def test_remap_to_used_codes_and_back():
  used = np.array([5, 2, 7], np.int32)
  for unknown, expect_unknown in (("extra", 3), (1, 1)):
    q = quantizers.VectorQuantizer(n_embed=8, embed_dim=2, remap_size=3, unknown_index=unknown)
    codebook = np.stack([np.arange(8.0), np.zeros(8)], 1).astype(np.float32)
    v = {"params": {"embedding": {"embedding": codebook}}, "remap": {"used": used}}
    h = np.array([[[[5.1, 0], [2.0, 0], [6.9, 0], [0.2, 0]]]], np.float32)  # codes 5, 2, 7, 0
    _, _, info = q.apply(v, h)
    np.testing.assert_array_equal(info["indices"], [[[0, 1, 2, expect_unknown]]])
    assert info["code_counts"].shape == (3 + (unknown == "extra"),)
    rows = q.apply(v, np.array([[0, 1, 2, 3]]), method=lambda m, i: m.embed_indices(i))
    # Known positions map back to their codes; the extra index maps to used[0].
    np.testing.assert_array_equal(np.asarray(rows)[0, :, 0], [5, 2, 7, 5])
  q = quantizers.VectorQuantizer(n_embed=8, embed_dim=2, remap_size=3, unknown_index="random")
  _, _, info = q.apply(v, h, rngs={"remap": jax.random.PRNGKey(0)})
  assert 0 <= int(info["indices"][0, 0, 3]) < 3


def test_code_statistics_closed_form():
  idx = jnp.array([[0, 0, 1, 3]])
  counts, perplexity = quantizers.code_statistics(idx, 4)
  np.testing.assert_array_equal(counts, [2, 1, 0, 1])
  p = np.array([0.5, 0.25, 0, 0.25])
  np.testing.assert_allclose(perplexity, np.exp(-np.sum(p * np.log(p + 1e-10))), rtol=1e-6)
  _, uniform = quantizers.code_statistics(jnp.arange(16), 16)
  np.testing.assert_allclose(uniform, 16.0, rtol=1e-5)


def test_gumbel_training_soft_and_hard_paths():
  q = quantizers.GumbelQuantizer(n_embed=6, embed_dim=4, straight_through=False)
  h = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 3, 5))
  v = q.init({"params": jax.random.PRNGKey(1)}, h)
  noise = jnp.zeros((1, 2, 3, 6))
  z_soft, _, _ = q.apply(v, h, train=True, temperature=0.5, gumbel_noise=noise)
  logits = q.apply(v, h, method=lambda m, h: m.logits(h))
  y = jax.nn.softmax(logits / 0.5, axis=-1)
  np.testing.assert_allclose(z_soft, y @ v["params"]["embed"]["embedding"], rtol=1e-5, atol=1e-6)
  q_hard = quantizers.GumbelQuantizer(n_embed=6, embed_dim=4, straight_through=True)
  z_hard, _, info = q_hard.apply(v, h, train=True, temperature=0.5, gumbel_noise=noise)
  rows = np.asarray(v["params"]["embed"]["embedding"])[np.asarray(logits).argmax(-1)]
  np.testing.assert_allclose(z_hard, rows, atol=1e-6)
  with pytest.raises(Exception):  # training draws noise: an rng is required
    q_hard.apply(v, h, train=True)
