"""Codebook quantizers: nearest-neighbour VQ, Gumbel-softmax VQ and EMA-updated VQ.

All take the pre-quantisation latent `h: float32[B, h, w, D]` (NHWC) and return
`(z_q, loss, info)`: `z_q` float32[B, h, w, D] (straight-through), a scalar loss and
`info = {"indices": int32[B, h, w], "code_counts": int32[n_codes], "perplexity": f32[]}`.
Distances, softmax and losses are float32.

Remapping (taming's `remap`): with `remap_size > 0` the quantizer only knows the
`remap_size` codes listed in the `remap/used` variable (filled by the converter or by
`with_remap_table`); indices are positions in that list, and unknown codes become a
random index ("random"), one extra index ("extra") or a fixed integer.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def code_statistics(indices, n_codes: int):
  """Per-batch code usage histogram int32[n_codes] and perplexity exp(H(p))."""
  counts = jnp.bincount(indices.reshape(-1), length=n_codes)
  p = counts.astype(jnp.float32) / jnp.maximum(indices.size, 1)
  perplexity = jnp.exp(-jnp.sum(p * jnp.log(p + 1e-10)))
  return counts.astype(jnp.int32), perplexity


def squared_distances(flat, codebook):
  """|z|^2 + |e|^2 - 2 z.e, as taming computes it: float32[N, K]."""
  flat = flat.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  return (jnp.sum(flat ** 2, axis=1, keepdims=True) + jnp.sum(codebook ** 2, axis=1)[None]
          - 2.0 * jnp.matmul(flat, codebook.T, precision=jax.lax.Precision.HIGHEST))


def l2_normalize(x, eps: float = 1e-12):
  """x / max(|x|, eps) along the last axis (torch's F.normalize)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class _Remap(nn.Module):
  """Shared remapping logic; `used` is an int32 list of the codes the model knows."""
  n_embed: int
  remap_size: int = 0
  unknown_index: Any = "random"

  @property
  def n_indices(self) -> int:
    """How many distinct indices the quantizer emits."""
    if not self.remap_size:
      return self.n_embed
    return self.remap_size + (1 if self.unknown_index == "extra" else 0)

  def setup_remap(self):
    """Declares the `remap/used` variable; every subclass's setup calls this."""
    if self.remap_size:
      self.used_codes = self.variable(
          "remap", "used", lambda: jnp.arange(self.remap_size, dtype=jnp.int32))

  def used(self):
    return self.used_codes

  def codebook(self):
    """float32[n_embed, D]; each quantizer says where its codebook lives."""
    raise NotImplementedError

  def embed_indices(self, indices):
    """int[B, h, w] -> exact codebook rows float32[B, h, w, D] (taming's get_codebook_entry)."""
    return jnp.take(self.codebook(), self.to_all(indices), axis=0)

  def to_used(self, indices):
    """Full-codebook indices -> positions in `used` (unknown codes per `unknown_index`)."""
    if not self.remap_size:
      return indices
    used = self.used().value
    match = indices[..., None] == used
    found = jnp.any(match, axis=-1)
    pos = jnp.argmax(match, axis=-1).astype(jnp.int32)
    if self.unknown_index == "random":
      # taming draws torch.randint(0, re_embed); we need an rng named "remap" for that.
      other = jax.random.randint(self.make_rng("remap"), indices.shape, 0, self.n_indices)
    elif self.unknown_index == "extra":
      other = jnp.full_like(pos, self.remap_size)
    else:
      other = jnp.full_like(pos, int(self.unknown_index))
    return jnp.where(found, pos, other)

  def to_all(self, indices):
    """Positions in `used` -> full-codebook indices (the extra index maps to used[0])."""
    if not self.remap_size:
      return indices
    used = self.used().value
    indices = jnp.where(indices >= self.remap_size, 0, indices)
    return used[indices]


class _LookupSpace(_Remap):
  """Where nearest codes are searched (not in taming; both off by default):
  `codebook_dim` > 0 looks codes up in a codebook_dim space reached by a learned linear
  map `proj_in` from the latent (and `proj_out` back), as ViT-VQGAN's factorized codes;
  `l2_normalize` compares unit vectors (the latent and every code l2-normalised first:
  cosine similarity), as ViT-VQGAN and LlamaGen. Losses and straight-through gradients
  live in that space; indices and the decoder's input do not change meaning.
  """
  embed_dim: int = 256
  codebook_dim: int = 0
  l2_normalize: bool = False

  @property
  def lookup_dim(self) -> int:
    return self.codebook_dim or self.embed_dim

  def setup_lookup(self):
    if self.codebook_dim:
      hp = jax.lax.Precision.HIGHEST
      self.proj_in = nn.Dense(self.codebook_dim, param_dtype=jnp.float32, precision=hp)
      self.proj_out = nn.Dense(self.embed_dim, param_dtype=jnp.float32, precision=hp)

  def raw_codebook(self):
    raise NotImplementedError

  def codebook(self):
    """The codes as compared and looked up: float32[n_embed, lookup_dim]."""
    e = self.raw_codebook()
    return l2_normalize(e) if self.l2_normalize else e

  def to_lookup(self, h):
    """Latent float32[..., embed_dim] -> the lookup space [..., lookup_dim]."""
    u = self.proj_in(h) if self.codebook_dim else h
    return l2_normalize(u) if self.l2_normalize else u

  def from_lookup(self, u):
    return self.proj_out(u) if self.codebook_dim else u

  def embed_indices(self, indices):
    """int[B, h, w] -> the decoder's input float32[B, h, w, embed_dim]."""
    return self.from_lookup(jnp.take(self.codebook(), self.to_all(indices), axis=0))


class VectorQuantizer(_LookupSpace):
  """taming's VectorQuantizer2: argmin over the codebook, straight-through gradients.

  legacy=True:  loss = mean((sg[z_q] - h)^2) + beta * mean((z_q - sg[h])^2)   (taming)
  legacy=False: loss = beta * mean((sg[z_q] - h)^2) + mean((z_q - sg[h])^2)   (VQ-VAE)
  (h and z_q in the lookup space: see `_LookupSpace`; with its defaults, taming's.)
  """
  beta: float = 0.25
  legacy: bool = True

  def setup(self):
    self.setup_remap()
    self.setup_lookup()
    self.embedding = nn.Embed(
        self.n_embed, self.lookup_dim, param_dtype=jnp.float32,
        embedding_init=_uniform_pm(1.0 / self.n_embed, unit=self.l2_normalize))

  def raw_codebook(self):
    return self.embedding.embedding

  def nearest(self, u):
    """Indices into the full codebook, int32[B, h, w], of lookup-space vectors u."""
    d = squared_distances(u.reshape(-1, u.shape[-1]), self.codebook())
    return jnp.argmin(d, axis=1).astype(jnp.int32).reshape(u.shape[:-1])

  def __call__(self, h, train: bool = False):
    u = self.to_lookup(h.astype(jnp.float32))
    full = self.nearest(u)
    e = jnp.take(self.codebook(), full, axis=0)
    commit = jnp.mean((jax.lax.stop_gradient(e) - u) ** 2)
    dictionary = jnp.mean((e - jax.lax.stop_gradient(u)) ** 2)
    if self.legacy:
      loss = commit + self.beta * dictionary
    else:
      loss = self.beta * commit + dictionary
    z_q = self.from_lookup(u + jax.lax.stop_gradient(e - u))
    indices = self.to_used(full)
    counts, perplexity = code_statistics(indices, self.n_indices)
    return z_q, loss, {"indices": indices, "code_counts": counts, "perplexity": perplexity,
                       "lookup": u}


def _uniform_pm(scale, unit: bool = False):
  """U(-scale, scale) (taming's codebook init); `unit`: then each row l2-normalised
  (LlamaGen's init for normalised codes)."""
  def init(key, shape, dtype=jnp.float32):
    e = jax.random.uniform(key, shape, dtype, -scale, scale)
    return l2_normalize(e) if unit else e
  return init


class GumbelQuantizer(_Remap):
  """taming's GumbelQuantize: 1x1 logits projection, Gumbel-softmax, KL to uniform.

  In training the code is drawn with Gumbel noise at `temperature` (hard one-hot with
  straight-through gradients when `straight_through`, soft otherwise). At evaluation it
  is the argmax of the logits unless `sample=True` (taming always samples; pass
  `sample=True` to reproduce that). `gumbel_noise` float32[B, h, w, n] replaces the drawn
  noise (tests replay the reference's draw with it); otherwise the rng "gumbel" is used.
  """
  embed_dim: int = 256
  kl_weight: float = 5e-4
  straight_through: bool = True

  def setup(self):
    self.setup_remap()
    self.proj = nn.Conv(self.n_embed, (1, 1), param_dtype=jnp.float32)
    self.embed = nn.Embed(self.n_embed, self.embed_dim, param_dtype=jnp.float32,
                          embedding_init=nn.initializers.normal(1.0))

  def codebook(self):
    return self.embed.embedding

  def logits(self, h):
    """float32[B, h, w, n_embed] (restricted to the used codes under remap)."""
    logits = self.proj(h.astype(jnp.float32))
    if self.remap_size:
      logits = jnp.take(logits, self.used().value, axis=-1)
    return logits

  def __call__(self, h, train: bool = False, temperature: float = 1.0, sample: bool = False,
               gumbel_noise: Optional[jax.Array] = None):
    logits = self.logits(h)
    n = logits.shape[-1]
    draw = train or sample or gumbel_noise is not None
    if draw:
      if gumbel_noise is None:
        gumbel_noise = jax.random.gumbel(self.make_rng("gumbel"), logits.shape, jnp.float32)
      scores = (logits + gumbel_noise) / temperature
    else:
      scores = logits
    y_soft = jax.nn.softmax(scores, axis=-1)
    choice = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    hard = (not train) or self.straight_through
    if hard:
      y_hard = jax.nn.one_hot(choice, n, dtype=jnp.float32)
      one_hot = y_hard - jax.lax.stop_gradient(y_soft) + y_soft
    else:
      one_hot = y_soft
    codebook = self.codebook()
    if self.remap_size:
      codebook = jnp.take(codebook, self.used().value, axis=0)
    z_q = jnp.einsum("bhwn,nd->bhwd", one_hot, codebook,
                     precision=jax.lax.Precision.HIGHEST)
    q = jax.nn.softmax(logits, axis=-1)
    kl = self.kl_weight * jnp.mean(jnp.sum(q * jnp.log(q * n + 1e-10), axis=-1))
    # `choice` indexes the used list under remap: that is already taming's index space.
    counts, perplexity = code_statistics(choice, self.n_indices)
    return z_q, kl, {"indices": choice, "code_counts": counts, "perplexity": perplexity,
                     "logits": logits}


class EMAVectorQuantizer(_LookupSpace):
  """Nearest-neighbour VQ whose codebook follows an exponential moving average.

  The codebook is not a parameter: it lives in the `ema_codebook` collection
  (`embedding`, `cluster_size`, `embed_avg`), which `__call__(train=True)` updates when
  that collection is mutable. The loss is the commitment term beta * mean((sg[z_q]-h)^2).
  cluster sizes are Laplace-smoothed as in taming's EmbeddingEMA. With `codebook_dim` /
  `l2_normalize` (see `_LookupSpace`) the averages are taken in the lookup space.
  """
  beta: float = 0.25
  decay: float = 0.99
  eps: float = 1e-5

  def setup(self):
    self.setup_remap()
    self.setup_lookup()
    def init_weight():
      return jax.random.normal(self.make_rng("params"), (self.n_embed, self.lookup_dim))
    self.weight = self.variable("ema_codebook", "embedding", init_weight)
    self.cluster_size = self.variable("ema_codebook", "cluster_size",
                                      lambda: jnp.zeros((self.n_embed,), jnp.float32))
    self.embed_avg = self.variable("ema_codebook", "embed_avg", lambda: self.weight.value)

  def raw_codebook(self):
    return self.weight.value

  def __call__(self, h, train: bool = False):
    u = self.to_lookup(h.astype(jnp.float32))
    flat = u.reshape(-1, u.shape[-1])
    full = jnp.argmin(squared_distances(flat, self.codebook()), axis=1).astype(jnp.int32)
    e = jnp.take(self.codebook(), full, axis=0).reshape(u.shape)
    if train and self.is_mutable_collection("ema_codebook") and not self.is_initializing():
      one_hot = jax.nn.one_hot(full, self.n_embed, dtype=jnp.float32)
      counts = one_hot.sum(0)
      sums = jnp.matmul(one_hot.T, jax.lax.stop_gradient(flat),
                        precision=jax.lax.Precision.HIGHEST)
      d = self.decay
      cluster_size = d * self.cluster_size.value + (1 - d) * counts
      embed_avg = d * self.embed_avg.value + (1 - d) * sums
      total = cluster_size.sum()
      smoothed = (cluster_size + self.eps) / (total + self.n_embed * self.eps) * total
      self.cluster_size.value = cluster_size
      self.embed_avg.value = embed_avg
      self.weight.value = embed_avg / smoothed[:, None]
    loss = self.beta * jnp.mean((jax.lax.stop_gradient(e) - u) ** 2)
    z_q = self.from_lookup(u + jax.lax.stop_gradient(e - u))
    full = full.reshape(u.shape[:-1])
    indices = self.to_used(full)
    counts, perplexity = code_statistics(indices, self.n_indices)
    return z_q, loss, {"indices": indices, "code_counts": counts, "perplexity": perplexity,
                       "lookup": u}
