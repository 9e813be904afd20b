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


# ---- codebook_dim / l2_normalize (not in taming): lookups against numpy ------------------

def _np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_lookup(params, h, codebook, codebook_dim, l2):
  """numpy: (indices, lookup vectors u, chosen codes e, decoder input z_q)."""
  u = h.astype(np.float64)
  if codebook_dim:
    u = u @ params["proj_in"]["kernel"] + params["proj_in"]["bias"]
  e_all = codebook.astype(np.float64)
  if l2:
    u, e_all = _np_normalize(u), _np_normalize(e_all)
  flat = u.reshape(-1, u.shape[-1])
  d = ((flat[:, None, :] - e_all[None]) ** 2).sum(-1)
  idx = d.argmin(1)
  e = e_all[idx].reshape(u.shape)
  z_q = e @ params["proj_out"]["kernel"] + params["proj_out"]["bias"] if codebook_dim else e
  return idx.reshape(h.shape[:-1]), u, e, z_q


@pytest.mark.parametrize("codebook_dim, l2, legacy", [(4, False, True), (0, True, False),
                                                      (3, True, True)])
def test_vector_quantizer_lookup_space_equals_numpy(codebook_dim, l2, legacy):
  q = quantizers.VectorQuantizer(n_embed=16, embed_dim=6, beta=0.25, legacy=legacy,
                                 codebook_dim=codebook_dim, l2_normalize=l2)
  h = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 5, 6))
  variables = q.init(jax.random.PRNGKey(0), h)
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  assert params["embedding"]["embedding"].shape == (16, codebook_dim or 6)
  assert ("proj_in" in params) == bool(codebook_dim)
  if l2:  # LlamaGen's init: unit rows
    np.testing.assert_allclose(np.linalg.norm(params["embedding"]["embedding"], axis=1), 1,
                               rtol=1e-6)
  z_q, loss, info = q.apply(variables, h)
  idx, u, e, want_zq = _np_lookup(params, np.asarray(h), params["embedding"]["embedding"],
                                  codebook_dim, l2)
  np.testing.assert_array_equal(np.asarray(info["indices"]), idx)
  np.testing.assert_allclose(np.asarray(z_q), want_zq, atol=1e-5)
  np.testing.assert_allclose(np.asarray(info["lookup"]), u, atol=1e-5)
  mse = np.mean((e - u) ** 2)
  assert float(loss) == pytest.approx(1.25 * mse, rel=1e-5)  # either placement, forward
  decoded = q.apply(variables, jnp.asarray(idx), method=q.embed_indices)
  np.testing.assert_allclose(np.asarray(decoded), want_zq, atol=1e-5)


def test_gradients_reach_the_projections_and_the_latent():
  q = quantizers.VectorQuantizer(n_embed=16, embed_dim=6, codebook_dim=3, l2_normalize=True)
  h = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 6))
  variables = q.init(jax.random.PRNGKey(0), h)

  def f(params, h):
    z_q, loss, _ = q.apply({"params": params}, h)
    return jnp.sum(z_q ** 2) + loss
  g_params, g_h = jax.grad(f, argnums=(0, 1))(variables["params"], h)
  for name in ("proj_in", "proj_out", "embedding"):
    for leaf in jax.tree_util.tree_leaves(g_params[name]):
      assert float(jnp.abs(leaf).max()) > 0, name
  assert float(jnp.abs(g_h).max()) > 0


def test_ema_quantizer_averages_in_the_lookup_space():
  q = quantizers.EMAVectorQuantizer(n_embed=8, embed_dim=5, decay=0.9, codebook_dim=3,
                                    l2_normalize=True)
  h = jax.random.normal(jax.random.PRNGKey(2), (1, 4, 4, 5))
  variables = q.init(jax.random.PRNGKey(0), h)
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  ema = jax.tree_util.tree_map(np.asarray, variables["ema_codebook"])
  (z_q, _, info), new = q.apply(variables, h, train=True, mutable=["ema_codebook"])
  idx, u, _, want_zq = _np_lookup(params, np.asarray(h), ema["embedding"], 3, True)
  np.testing.assert_array_equal(np.asarray(info["indices"]), idx)
  np.testing.assert_allclose(np.asarray(z_q), want_zq, atol=1e-5)
  onehot = np.eye(8)[idx.ravel()]
  cluster = 0.9 * ema["cluster_size"] + 0.1 * onehot.sum(0)
  avg = 0.9 * ema["embed_avg"] + 0.1 * onehot.T @ u.reshape(-1, 3)
  total = cluster.sum()
  smoothed = (cluster + 1e-5) / (total + 8 * 1e-5) * total
  np.testing.assert_allclose(np.asarray(new["ema_codebook"]["embedding"]), avg / smoothed[:, None],
                             rtol=1e-4, atol=1e-6)


def test_defaults_keep_taming_s_variables():
  q = quantizers.VectorQuantizer(n_embed=16, embed_dim=6)
  variables = q.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 6)))
  assert list(variables["params"]) == ["embedding"]


def test_remap_with_normalised_codes():
  """Remapping works on the lookup space's indices: codes in 2-d pointing along angles
  5, 2 and 7 (of 8) are the used ones; a latent at angle 0 is unknown ("extra")."""
  angles = np.arange(8) * (2 * np.pi / 8)
  codebook = (np.stack([np.cos(angles), np.sin(angles)], 1) * 3.0).astype(np.float32)
  q = quantizers.VectorQuantizer(n_embed=8, embed_dim=2, remap_size=3, unknown_index="extra",
                                 l2_normalize=True)
  v = {"params": {"embedding": {"embedding": codebook}},
       "remap": {"used": np.array([5, 2, 7], np.int32)}}
  h = np.stack([np.cos(angles[[5, 2, 7, 0]]), np.sin(angles[[5, 2, 7, 0]])], 1)
  h = (h * np.array([[0.5], [2.0], [7.0], [1.0]]))[None, None].astype(np.float32)  # any length
  z_q, _, info = q.apply(v, h)
  np.testing.assert_array_equal(info["indices"], [[[0, 1, 2, 3]]])
  rows = q.apply(v, np.array([[0, 1, 2]]), method=lambda m, i: m.embed_indices(i))
  np.testing.assert_allclose(np.asarray(rows)[0], codebook[[5, 2, 7]] / 3.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(z_q)[0, 0, :3], codebook[[5, 2, 7]] / 3.0, atol=1e-6)
