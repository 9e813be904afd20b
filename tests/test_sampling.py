"""The samplers against the reference: taming's filtering, greedy sequences and window placement.

Fixtures (tests/fixtures/taming_tiny, written by taming's code): topk_topp.npz
(transformers 4.3.1 `top_k_top_p_filtering`), n2n_*_tiny.npz (greedy `sample_with_past`
sequences, the sample_fast top-k=1 call), sliding_window.json (the windows
scripts/sample_conditional.py chose, step by step).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_test_utils import tiny
import vqgan_jax
from vqgan_jax import sampling

# (case, row) pairs whose nucleus cut splits a group of tied logits: which members survive
# depends on the sort's order among equals (see the fixture README).
ORDER_DEPENDENT = {(1, 1), (2, 1), (9, 1)}


@pytest.fixture(scope="module")
def filt():
  return dict(np.load(tiny("topk_topp.npz")))


@pytest.fixture(scope="module")
def models():
  out = {}
  for name in ("n2n_class_tiny", "n2n_depth_tiny"):
    out[name] = (vqgan_jax.load_transformer(tiny(f"{name}.ckpt"), tiny(f"{name}-project.yaml")),
                 dict(np.load(tiny(f"{name}.npz"))))
  return out


def test_filter_logits_equals_transformers_4_3_1(filt):
  logits = filt["logits"]
  for case, (k, p) in enumerate(zip(filt["pairs_top_k"], filt["pairs_top_p"])):
    got = np.asarray(sampling.filter_logits(logits, int(k), float(p)))
    want = filt["filtered"][case]
    for row in range(logits.shape[0]):
      kept, want_kept = np.isfinite(got[row]), np.isfinite(want[row])
      if (case, row) in ORDER_DEPENDENT:
        assert kept.sum() == want_kept.sum(), (case, row)
        # Outside the tie group at the cut, the kept sets agree.
        cut = logits[row][want_kept].min()
        untied = logits[row] != cut
        np.testing.assert_array_equal(kept[untied], want_kept[untied])
        continue
      np.testing.assert_array_equal(kept, want_kept, err_msg=f"case {case} row {row}")
      np.testing.assert_allclose(got[row][kept], want[row][kept], atol=1e-6)
      probs = np.asarray(jax.nn.softmax(jnp.asarray(got[row])))
      np.testing.assert_allclose(probs, filt["probs"][case][row], atol=1e-6)


def test_top_k_alone_keeps_ties_like_taming(filt):
  for i, k in enumerate(filt["topk_only_ks"]):
    got = np.asarray(sampling.filter_logits(filt["logits"], int(k)))
    for ref in (filt["mingpt_top_k_logits"][i], filt["n2n_top_k_logits"][i]):
      np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
      np.testing.assert_allclose(got[np.isfinite(got)], ref[np.isfinite(ref)], atol=1e-6)


def test_top_p_works_without_top_k():
  """taming ignores top_p when top_k is None; we apply it."""
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.isfinite(np.asarray(sampling.filter_logits(logits, None, 0.7)))
  np.testing.assert_array_equal(kept, [[True, True, False, False]])


@pytest.mark.parametrize("name", ["n2n_class_tiny", "n2n_depth_tiny"])
def test_greedy_equals_the_reference(models, name):
  n2n, ref = models[name]
  out = n2n.sample(ref["n2n_c_indices"], 64, greedy=True)
  np.testing.assert_array_equal(out, ref["greedy_kv"])
  np.testing.assert_array_equal(out, ref["greedy_naive"])


def test_sample_fast_top_k_1(models):
  n2n, ref = models["n2n_class_tiny"]
  for seed in (0, 7):
    out = n2n.sample(np.full((2, 1), 3), 64, top_k=1, top_p=1.0,
                     rng=jax.random.PRNGKey(seed))
    np.testing.assert_array_equal(out, ref["fast_class3_topk1"])


def test_completion_keeps_the_prefix_and_continues_greedily(models):
  """Completing the first half of the greedy sequence greedily gives the rest of it."""
  n2n, ref = models["n2n_class_tiny"]
  half = ref["greedy_kv"][:, :32]
  out = n2n.sample(ref["n2n_c_indices"], 32, z_prefix=half, greedy=True)
  np.testing.assert_array_equal(out, ref["greedy_kv"][:, 32:])


def test_seeds(models):
  n2n, ref = models["n2n_class_tiny"]
  c = ref["n2n_c_indices"]
  a = n2n.sample(c, 64, top_k=20, rng=jax.random.PRNGKey(1))
  b = n2n.sample(c, 64, top_k=20, rng=jax.random.PRNGKey(1))
  d = n2n.sample(c, 64, top_k=20, rng=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, d)
  assert int(np.asarray(a).max()) < n2n.vocab_size


def test_sampled_tokens_follow_the_filtered_distribution():
  """Many draws of one step from fixed logits: the frequencies match softmax(filtered / T)
  and no token outside the top-k set appears."""
  cfg = vqgan_jax.nn.gpt.GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=8)
  logits = jnp.log(jnp.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.01, 0.01]))
  keys = jax.random.split(jax.random.PRNGKey(0), 20000)
  toks = np.asarray(sampling._pick(jnp.broadcast_to(logits, (20000, 8)), keys, 0, 0.5, 3,
                                   None, False))
  assert set(np.unique(toks)) <= {0, 1, 2}
  p = np.asarray(jax.nn.softmax(logits[:3] / 0.5))
  freq = np.bincount(toks, minlength=3)[:3] / toks.size
  np.testing.assert_allclose(freq, p, atol=0.015)
  del cfg


def test_window_placement_equals_the_reference_script():
  data = json.load(open(tiny("sliding_window.json")))
  checked = 0
  for grid in data["grids"]:
    H, W = grid["H"], grid["W"]
    if min(H, W) < 16:  # the script breaks on grids smaller than its window
      continue
    for i, j, i0, j0, li, lj in grid["steps"]:
      assert sampling.window_placement(i, H, 16) == (i0, li)
      assert sampling.window_placement(j, W, 16) == (j0, lj)
      checked += 1
  assert checked == 256 + 480 + 2688
  # The traced form agrees with the Python one.
  i = jnp.arange(42)
  o, l = jax.jit(lambda i: sampling.window_placement(i, 42, 16))(i)
  want = [sampling.window_placement(int(k), 42, 16) for k in range(42)]
  np.testing.assert_array_equal(np.stack([o, l], -1), want)


@pytest.mark.parametrize("name", ["n2n_class_tiny", "n2n_depth_tiny"])
def test_window_equal_to_the_latent_is_plain_sampling(models, name):
  n2n, ref = models[name]
  c = ref["n2n_c_indices"]
  greedy = n2n.sample_window(c, (8, 8), greedy=True)
  np.testing.assert_array_equal(np.asarray(greedy).reshape(2, 64), ref["greedy_kv"])
  key = jax.random.PRNGKey(4)
  a = n2n.sample_window(c, (8, 8), rng=key, top_k=8)
  b = n2n.sample(c, 64, rng=key, top_k=8)
  np.testing.assert_array_equal(np.asarray(a).reshape(2, 64), b)


def test_window_on_a_larger_latent_uses_the_cropped_conditioning(models):
  """Each token of a 12x16 latent depends only on its window: sampling greedily with the
  window placement equals running the uncached transformer on that window by hand."""
  n2n, ref = models["n2n_depth_tiny"]
  rng = np.random.default_rng(0)
  H, W = 12, 16
  c = rng.integers(0, 64, size=(1, H, W)).astype(np.int32)
  z = np.asarray(n2n.sample_window(c.reshape(1, -1), (H, W), greedy=True))
  assert z.shape == (1, H, W)
  for t in (0, 9 * W + 3, H * W - 1, 5 * W + 12):
    i, j = divmod(t, W)
    i0, li = sampling.window_placement(i, H, 8)
    j0, lj = sampling.window_placement(j, W, 8)
    cw = c[:, i0:i0 + 8, j0:j0 + 8].reshape(1, 64)
    zw = z[:, i0:i0 + 8, j0:j0 + 8].reshape(1, 64)
    logits = np.asarray(n2n.transformer_logits(np.concatenate([cw, zw], 1)[:, :-1]))
    assert z[0, i, j] == logits[0, 64 + li * 8 + lj - 1].argmax()


def test_window_completion_keeps_every_row_prefix(models):
  """Completion from raster position `start` keeps all tokens before it (taming's script
  re-applies its start column on every row) and changes none after-start inputs."""
  n2n, ref = models["n2n_class_tiny"]
  z0 = np.random.default_rng(1).integers(0, 64, size=(2, 10, 12)).astype(np.int32)
  start = 3 * 12 + 5
  out = np.asarray(n2n.sample_window(ref["n2n_c_indices"], (10, 12), z_init=z0, start=start,
                                     greedy=True))
  np.testing.assert_array_equal(out.reshape(2, -1)[:, :start], z0.reshape(2, -1)[:, :start])


def test_classifier_free_guidance():
  """g = 1 is plain sampling; g = 0 is the unconditional model; any g mixes the logits."""
  cfg = vqgan_jax.nn.gpt.GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=16)
  params = vqgan_jax.nn.gpt.init_params(cfg, jax.random.PRNGKey(0))
  params = jax.tree_util.tree_map(lambda a: a + 0.3 * jax.random.normal(
      jax.random.PRNGKey(1), a.shape), params)
  c, u = np.full((2, 1), 3), np.full((2, 1), 10)
  plain = sampling.sample_tokens(cfg, params, u, 6, greedy=True)
  g0 = sampling.sample_tokens(cfg, params, c, 6, greedy=True, guidance=0.0, uncond_tokens=u)
  np.testing.assert_array_equal(plain, g0)
  # One step by hand at g = 2.5.
  g = sampling.sample_tokens(cfg, params, c, 1, greedy=True, guidance=2.5, uncond_tokens=u)
  model = vqgan_jax.nn.gpt.GPT(cfg)
  lc = model.apply({"params": params}, jnp.asarray(c))[:, -1]
  lu = model.apply({"params": params}, jnp.asarray(u))[:, -1]
  np.testing.assert_array_equal(np.asarray(g)[:, 0], np.argmax(lu + 2.5 * (lc - lu), -1))
  with pytest.raises(ValueError, match="needs uncond_tokens"):
    sampling.sample_tokens(cfg, params, c, 2, greedy=True, guidance=2.0)


def test_errors(models):
  n2n, ref = models["n2n_depth_tiny"]
  c = ref["n2n_c_indices"]
  with pytest.raises(ValueError, match="block size"):
    n2n.sample(c, 80, greedy=True)
  with pytest.raises(ValueError, match="larger than the 6x6 latent"):
    sampling.sample_window(n2n.transformer_config, n2n.variables["params"],
                           np.zeros((1, 6, 6), np.int32), (6, 6), (8, 8), greedy=True)
  with pytest.raises(ValueError, match="must cover the 12x12 latent"):
    n2n.sample_window(c, (12, 12), greedy=True)
  with pytest.raises(ValueError, match="more than the block size"):
    sampling.sample_window(n2n.transformer_config, n2n.variables["params"],
                           np.zeros((1, 20, 20), np.int32), (20, 20), (10, 10), greedy=True)
  with pytest.raises(ValueError, match="needs an rng"):
    n2n.sample(c, 4)
  with pytest.raises(ValueError, match="label dropout"):
    n2n.sample(c, 4, greedy=True, guidance=2.0)
  with pytest.raises(ValueError, match=r"c_indices must lie in \[0, 64\)"):
    n2n.sample(c + 64, 4, greedy=True)


def test_window_completion_needs_its_codes(models):
  n2n, ref = models["n2n_class_tiny"]
  with pytest.raises(ValueError, match="needs z_init"):
    n2n.sample_window(ref["n2n_c_indices"], (10, 12), start=5, greedy=True)


def test_top_p_outside_0_1_is_refused():
  with pytest.raises(ValueError, match=r"top_p must lie in \[0, 1\]"):
    sampling.filter_logits(jnp.zeros((1, 4)), None, -0.5)
