"""Taming's Net2NetTransformer: a GPT over first-stage codes, prefixed by conditioning tokens.

    n2n = vqgan_jax.load_transformer("cin_transformer/")     # model dir or taming .ckpt
    quant_z, z_indices = n2n.encode_to_z(images)   # NHWC [-1, 1] -> int32[B, h*w], permuted
    quant_c, c_indices = n2n.encode_to_c(cond)     # class ids int[B] | cond images NHWC
    logits, target = n2n(images, cond)             # Net2NetTransformer.forward
    logits = n2n.transformer_logits(tokens)        # int[B, T] -> float32[B, T, vocab]
    images = n2n.decode_to_img(z_indices, (h, w))  # NHWC [-1, 1]

Conditioning stages (`Net2NetConfig.cond`, taming's `cond_stage_config`):
  "sos"          unconditional: one start token `sos_token` (SOSProvider)
  "class"        one token, the class id in [0, n_classes) (Labelator)
  "vq"           the codes of a second, frozen VQGAN (`cond_stage`): depth (1 channel),
                 segmentation (one-hot, with taming's random `colorize` matrix for
                 display), edges or a low-resolution image (`downsample_cond_size`)
  "coord"        a coordinate map in [0, 1], area-downsampled by `coord_down_factor` and
                 rounded to `round(coord_n_embed * c)` (CoordStage)
  "first_stage"  the first stage's own codes of a conditioning image (`__is_first_stage__`)
Conditioning and image tokens share one vocabulary, as in taming: position tells them
apart. The image codes are shuffled by the permuter before the transformer sees them;
the conditioning tokens are not.

The functions below the config are pure jax (the training step uses them); `Net2Net` is
the user-facing object with jitted methods.
"""

import dataclasses
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax import permuters as permuters_lib
from vqgan_jax.images import torch_nearest_index
from vqgan_jax.nn import configs, gpt as gpt_lib
from vqgan_jax.nn.vqgan import VQGANConfig

COND_KINDS = ("sos", "class", "vq", "coord", "first_stage")


@dataclasses.dataclass(frozen=True)
class Net2NetConfig:
  """What taming's Net2NetTransformer adds to its three sub-models.

  `z_shape` is the latent grid the transformer was trained on (the permuter's grid);
  `cond_shape` that of the conditioning codes ("vq", "coord", "first_stage"; () for one
  token). `label_dropout` (beyond taming, for classifier-free guidance) replaces the
  class token by `n_classes` (the "no class" token) with that probability in training.
  """
  cond: str = "sos"
  sos_token: int = 0
  n_classes: int = 0
  permuter: str = "identity"
  z_shape: Tuple[int, int] = (16, 16)
  cond_shape: Tuple[int, ...] = ()
  pkeep: float = 1.0
  downsample_cond_size: int = -1
  first_stage_key: str = "image"
  cond_stage_key: str = "image"
  coord_n_embed: int = 1024
  coord_down_factor: int = 16
  label_dropout: float = 0.0

  def to_dict(self) -> Dict[str, Any]:
    d = dataclasses.asdict(self)
    d["z_shape"], d["cond_shape"] = list(self.z_shape), list(self.cond_shape)
    return d

  @classmethod
  def from_dict(cls, d: Dict[str, Any]) -> "Net2NetConfig":
    return configs.from_dict(cls, d, ("z_shape", "cond_shape"))

  @property
  def n_cond_tokens(self) -> int:
    if self.cond in ("sos", "class"):
      return 1
    return int(np.prod(self.cond_shape)) if self.cond_shape else 0

  @property
  def n_z_tokens(self) -> int:
    return int(self.z_shape[0] * self.z_shape[1])

  def validate(self, gpt: Optional[gpt_lib.GPTConfig] = None, n_codes: Optional[int] = None,
               cond_codes: Optional[int] = None) -> list:
    """One message per field that cannot work (with the transformer's and stages' sizes)."""
    errors = []
    if self.cond not in COND_KINDS:
      errors.append(f"cond: expected one of {COND_KINDS}, got {self.cond!r}")
    if len(self.z_shape) != 2 or min(self.z_shape) <= 0:
      errors.append(f"z_shape: expected a positive (h, w), got {self.z_shape!r}")
    if self.cond in ("vq", "coord", "first_stage") and (
        len(self.cond_shape) != 2 or min(self.cond_shape) <= 0):
      errors.append(f"cond_shape: a {self.cond!r} conditioning needs its code grid (hc, wc), "
                    f"got {self.cond_shape!r}")
    if self.cond == "class" and self.n_classes <= 0:
      errors.append(f"n_classes: a class-conditional model needs n_classes > 0, got "
                    f"{self.n_classes}")
    if not 0.0 <= self.pkeep <= 1.0:
      errors.append(f"pkeep: expected a probability in [0, 1], got {self.pkeep}")
    if not 0.0 <= self.label_dropout < 1.0:
      errors.append(f"label_dropout: expected a probability in [0, 1), got {self.label_dropout}")
    if self.label_dropout and self.cond != "class":
      errors.append("label_dropout: only a class-conditional model (cond 'class') drops labels")
    if errors:
      return errors
    try:
      permuters_lib.make_permuter(self.permuter, *self.z_shape)
    except permuters_lib.PermuterError as e:
      errors.append(f"permuter: {e}")
    if gpt is not None:
      need = self.n_cond_tokens + self.n_z_tokens - 1
      if need > gpt.block_size:
        errors.append(
            f"transformer.block_size: {gpt.block_size} is too small for {self.n_cond_tokens} "
            f"conditioning + {self.n_z_tokens} image tokens (needs at least {need})")
      top = {"sos": self.sos_token + 1, "class": self.n_classes + (self.label_dropout > 0),
             # round(n_embed * c) reaches n_embed only where a pooled coordinate is
             # exactly 1; taming's FacesHQ model has vocabulary = n_embed (1024).
             "coord": self.coord_n_embed, "vq": cond_codes or 0,
             "first_stage": n_codes or 0}[self.cond]
      top = max(top, n_codes or 0)
      if top > gpt.vocab_size:
        errors.append(f"transformer.vocab_size: {gpt.vocab_size} cannot hold the image codes "
                      f"and conditioning tokens (needs at least {top})")
    return errors

  def make_permuter(self) -> permuters_lib.Permuter:
    return permuters_lib.make_permuter(self.permuter, *self.z_shape)


# ---- pure functions (jit-able) -------------------------------------------------------------

def torch_nearest_resize(x, size: Tuple[int, int]):
  """F.interpolate(mode="nearest") on NHWC, with torch's float32 source-index arithmetic."""
  rows = torch_nearest_index(x.shape[1], size[0])
  cols = torch_nearest_index(x.shape[2], size[1])
  return x[:, rows][:, :, cols]


def coord_tokens(coord, n_embed: int, down_factor: int):
  """CoordStage.encode: coord float[B, H, W, 1] in [0, 1] -> (quant float[B, h, w, 1],
  tokens int32[B, h*w]); area (mean) pooling by `down_factor`, clamp, round(n_embed * c)."""
  b, h, w, ch = coord.shape
  f = down_factor
  pooled = coord.reshape(b, h // f, f, w // f, f, ch).mean(axis=(2, 4))
  pooled = jnp.clip(pooled, 0.0, 1.0)
  tokens = jnp.round(pooled * n_embed).astype(jnp.int32)
  return pooled, tokens.reshape(b, -1)


def corrupt(z_tokens, rng, pkeep: float, vocab_size: int):
  """Taming's pkeep: each input token is kept with probability pkeep, else replaced by a
  uniform random token in [0, vocab_size)."""
  keep_rng, token_rng = jax.random.split(rng)
  keep = jax.random.bernoulli(keep_rng, pkeep, z_tokens.shape)
  noise = jax.random.randint(token_rng, z_tokens.shape, 0, vocab_size, dtype=z_tokens.dtype)
  return jnp.where(keep, z_tokens, noise)


def transformer_inputs(c_tokens, z_tokens):
  """The GPT input of Net2NetTransformer.forward: cat(c, z)[:, :-1]."""
  return jnp.concatenate([c_tokens, z_tokens], axis=1)[:, :-1]


def forward_logits(apply_fn, c_tokens, z_tokens, z_inputs=None):
  """Logits of the image tokens: transformer(cat(c, z_in)[:, :-1])[:, n_c - 1:], where the
  input tokens `z_inputs` (corrupted, or not) default to the targets `z_tokens`."""
  z_inputs = z_tokens if z_inputs is None else z_inputs
  logits = apply_fn(transformer_inputs(c_tokens, z_inputs))
  return logits[:, c_tokens.shape[1] - 1:]


# ---- the loaded model ----------------------------------------------------------------------

def _as_array(x):
  return x if isinstance(x, jax.Array) else np.asarray(x)


class Net2Net:
  """A Net2Net transformer with its first stage and conditioning stage; jitted methods.

  Attributes: `config` (Net2NetConfig), `transformer_config` (GPTConfig), `first_stage`
  and `cond_stage` (api.VQGAN; `cond_stage` is None without its own weights), `permuter`,
  `variables` ({"params": ...} of the transformer, unstacked layout), `colorize`
  (float32[3, n_labels] for a segmentation cond stage, else None).
  """

  def __init__(self, model_config: Dict[str, Any], variables: Dict[str, Any],
               name: str = "net2net"):
    from vqgan_jax.api import VQGAN
    self.name = name
    if "transformer_error" in model_config:
      raise ValueError(f"{name}: cannot build the transformer: "
                       f"{model_config['transformer_error']}")
    for key in ("transformer", "net2net", "vqgan"):
      if key not in model_config:
        raise ValueError(
            f"{name}: the model config has no {key!r} section (a Net2Net directory converted "
            "by an older vqgan_jax holds only its VQGANs: convert the .ckpt again)")
    self.transformer_config = gpt_lib.GPTConfig.from_dict(
        dict(model_config["transformer"], scan_layers=False, remat="none"))
    self.config = Net2NetConfig.from_dict(model_config["net2net"])
    self.first_stage = VQGAN(VQGANConfig.from_dict(model_config["vqgan"]), variables["vqgan"],
                             name=f"{name}:first_stage")
    self.cond_stage = None
    if "cond_stage" in variables:
      self.cond_stage = VQGAN(VQGANConfig.from_dict(model_config["cond_stage"]),
                              variables["cond_stage"], name=f"{name}:cond_stage")
    errors = self.transformer_config.validate() + self.config.validate(
        self.transformer_config, self.first_stage.config.num_codes,
        self.cond_stage.config.num_codes if self.cond_stage else None)
    if self.config.cond == "vq" and self.cond_stage is None:
      errors.append("cond 'vq' needs cond_stage weights, and the model has none")
    if errors:
      raise ValueError(f"{name}: invalid Net2Net model: " + "; ".join(errors))
    self.permuter = self.config.make_permuter()
    self.colorize = None
    if "colorize" in variables:
      self.colorize = np.asarray(variables["colorize"]["colorize"], np.float32)
    params = gpt_lib.unstack_blocks(variables["transformer"]["params"])
    self.variables = {"params": jax.tree_util.tree_map(jnp.asarray, params)}
    self.gpt = gpt_lib.GPT(self.transformer_config)
    self._logits = jax.jit(lambda v, t: self.gpt.apply(v, t))
    self._forward = jax.jit(lambda v, c, z: forward_logits(
        lambda t: self.gpt.apply(v, t), c, z))

  # -- tokens ---------------------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return self.transformer_config.vocab_size

  def encode_to_z(self, images) -> Tuple[jax.Array, jax.Array]:
    """images float32[B, H, W, 3] in [-1, 1] -> (quant_z float32[B, h, w, D], z_indices
    int32[B, h*w] in the permuter's order)."""
    quant_z, indices = self.first_stage.encode(images)
    flat = indices.reshape(indices.shape[0], -1)
    if flat.shape[1] == self.permuter.length:
      flat = self.permuter.apply(flat)
    elif not self.permuter.is_identity:
      raise ValueError(f"{self.name}: the {self.permuter.name} permuter orders a "
                       f"{self.config.z_shape[0]}x{self.config.z_shape[1]} latent; these "
                       f"images give {indices.shape[1]}x{indices.shape[2]}")
    return quant_z, flat

  def _batch_size(self, cond) -> int:
    if isinstance(cond, (int, np.integer)):
      return int(cond)
    cond = _as_array(cond)
    if cond.ndim == 0:
      raise ValueError(f"{self.name}: an unconditional model takes a batch size or any array "
                       "with a batch dimension as its conditioning")
    return int(cond.shape[0])

  def encode_to_c(self, cond) -> Tuple[jax.Array, jax.Array]:
    """Conditioning -> (quant_c, c_indices int32[B, n_c]).

    cond: for "sos", a batch size or any array [B, ...]; for "class", int[B] class ids;
    for "vq" / "first_stage", images float32[B, H, W, C] in [-1, 1] (segmentation: one-hot
    over the labels); for "coord", float32[B, H, W, 1] in [0, 1].
    """
    c = self.config
    if c.cond == "sos":
      tokens = jnp.full((self._batch_size(cond), 1), c.sos_token, jnp.int32)
      return tokens, tokens
    cond = _as_array(cond)
    if c.cond == "class":
      if cond.ndim == 2 and cond.shape[1] == 1:
        cond = cond[:, 0]
      if cond.ndim != 1 or not np.issubdtype(cond.dtype, np.integer):
        raise ValueError(f"{self.name}: class conditioning takes int class ids [B]; got "
                         f"{cond.dtype}{list(cond.shape)}")
      if cond.size:
        lo, hi = (int(v) for v in jax.device_get((cond.min(), cond.max())))
        if lo < 0 or hi >= c.n_classes:
          raise ValueError(f"{self.name}: class ids must lie in [0, {c.n_classes}); got "
                           f"values in [{lo}, {hi}]")
      tokens = jnp.asarray(cond, jnp.int32)[:, None]
      return tokens, tokens
    if c.cond == "coord":
      if cond.ndim != 4 or cond.shape[-1] != 1:
        raise ValueError(f"{self.name}: coordinate conditioning takes float32[B, H, W, 1] in "
                         f"[0, 1]; got shape {list(cond.shape)}")
      f = c.coord_down_factor
      if cond.shape[1] % f or cond.shape[2] % f:
        raise ValueError(f"{self.name}: the coordinate map's height and width must be "
                         f"multiples of {f}; got {cond.shape[1]}x{cond.shape[2]}")
      quant, tokens = coord_tokens(jnp.asarray(cond, jnp.float32), c.coord_n_embed, f)
      top = int(jax.device_get(tokens.max())) if tokens.size else 0
      if top >= self.vocab_size:
        raise ValueError(f"{self.name}: the coordinate map gives token {top}, outside the "
                         f"vocabulary [0, {self.vocab_size}) (coordinates of exactly 1 round "
                         f"to {c.coord_n_embed}); keep them below 1")
      return quant, tokens
    stage = self.first_stage if c.cond == "first_stage" else self.cond_stage
    want = stage.config.in_channels
    if cond.ndim != 4 or cond.shape[-1] != want:
      raise ValueError(f"{self.name}: the conditioning stage takes float32[B, H, W, {want}] "
                       f"({c.cond_stage_key}); got shape {list(cond.shape)}")
    if c.downsample_cond_size > -1:
      s = c.downsample_cond_size
      cond = torch_nearest_resize(jnp.asarray(cond, jnp.float32), (s, s))
    quant_c, indices = stage.encode(cond)
    return quant_c, indices.reshape(indices.shape[0], -1)

  def _check_tokens(self, tokens, what: str):
    tokens = _as_array(tokens)
    if tokens.ndim != 2:
      raise ValueError(f"{self.name}: {what} must be int[B, T]; got shape {list(tokens.shape)}")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"{self.name}: {what} must be integers; got {tokens.dtype}")
    if tokens.size:
      lo, hi = (int(v) for v in jax.device_get((tokens.min(), tokens.max())))
      if lo < 0 or hi >= self.vocab_size:
        raise ValueError(f"{self.name}: {what} must lie in [0, {self.vocab_size}); got values "
                         f"in [{lo}, {hi}]")
    return jnp.asarray(tokens, jnp.int32)

  def transformer_logits(self, tokens) -> jax.Array:
    """tokens int[B, T] (T <= block_size) -> logits float32[B, T, vocab_size]."""
    tokens = self._check_tokens(tokens, "tokens")
    if tokens.shape[1] > self.transformer_config.block_size:
      raise ValueError(f"{self.name}: {tokens.shape[1]} tokens exceed the block size "
                       f"{self.transformer_config.block_size}")
    return self._logits(self.variables, tokens)

  def forward_tokens(self, c_indices, z_indices) -> jax.Array:
    """Logits float32[B, n_z, vocab] of each image token given the ones before it."""
    c_indices = self._check_tokens(c_indices, "c_indices")
    z_indices = self._check_tokens(z_indices, "z_indices")
    n = c_indices.shape[1] + z_indices.shape[1] - 1
    if n > self.transformer_config.block_size:
      raise ValueError(f"{self.name}: {c_indices.shape[1]} conditioning + {z_indices.shape[1]} "
                       f"image tokens exceed the block size {self.transformer_config.block_size}")
    return self._forward(self.variables, c_indices, z_indices)

  def __call__(self, images, cond) -> Tuple[jax.Array, jax.Array]:
    """Net2NetTransformer.forward in eval: (logits float32[B, h*w, vocab], target int32[B, h*w])."""
    _, z = self.encode_to_z(images)
    _, c = self.encode_to_c(cond)
    if z.shape[0] != c.shape[0]:
      raise ValueError(f"{self.name}: {z.shape[0]} images but {c.shape[0]} conditionings")
    return self.forward_tokens(c, z), z

  def loss(self, images, cond) -> float:
    """Mean cross-entropy of the image tokens (taming's shared_step loss, eval mode)."""
    logits, target = self(images, cond)
    return float(gpt_lib.cross_entropy(logits, target)[0])

  # -- sampling ---------------------------------------------------------------------------------

  @property
  def uncond_token(self) -> Optional[int]:
    """The "no class" token of a class-conditional model trained with label dropout."""
    c = self.config
    return c.n_classes if c.cond == "class" and c.label_dropout > 0 else None

  def sample(self, c_indices, steps: int, z_prefix=None, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None,
             greedy: bool = False, rng=None, guidance: float = 1.0) -> jax.Array:
    """int32[B, steps]: image tokens (permuted order) after c_indices int[B, n_c] and an
    optional kept prefix z_prefix int[B, k], drawn with the KV-cached sampler
    (`vqgan_jax.sampling.sample_tokens`). `guidance` != 1: classifier-free guidance,
    for class-conditional models trained with label dropout."""
    from vqgan_jax import sampling
    c = self._check_tokens(c_indices, "c_indices")
    prefix = None if z_prefix is None else self._check_tokens(z_prefix, "z_prefix")
    uncond = None
    if float(guidance) != 1.0:
      if self.uncond_token is None:
        raise ValueError(f"{self.name}: guidance needs a class-conditional model trained "
                         "with label dropout (net2net.label_dropout > 0); this one has "
                         f"cond {self.config.cond!r}, label_dropout {self.config.label_dropout}")
      uncond = jnp.full(c.shape, self.uncond_token, jnp.int32)
    return sampling.sample_tokens(self.transformer_config, self.variables["params"], c,
                                  int(steps), rng=rng, z_prefix=prefix,
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  greedy=greedy, guidance=guidance, uncond_tokens=uncond)

  def sample_window(self, c_indices, latent_shape, z_init=None, start: int = 0,
                    temperature: float = 1.0, top_k: Optional[int] = None,
                    top_p: Optional[float] = None, greedy: bool = False,
                    rng=None) -> jax.Array:
    """int32[B, H, W] raster codes of a latent larger than the trained grid, sampled with
    taming's sliding attention window of the trained size (`z_shape`).

    c_indices: int[B, n_c] for "sos" / "class"; for spatial conditioning the codes of the
    conditioning image, int[B, H * W] or int[B, H, W] (same grid as the latent).
    z_init / start: keep the raster prefix [0, start) of z_init int[B, H, W] (completion).
    """
    from vqgan_jax import sampling
    if not self.permuter.is_identity:
      raise ValueError(f"{self.name}: the sliding window needs raster order (the identity "
                       f"permuter); this model uses {self.permuter.name!r}")
    H, W = (int(v) for v in latent_shape)
    c = self._check_tokens(np.asarray(c_indices).reshape(len(c_indices), -1)
                           if not isinstance(c_indices, jax.Array)
                           else c_indices.reshape(c_indices.shape[0], -1), "c_indices")
    if self.config.cond in ("vq", "coord", "first_stage"):
      if c.shape[1] != H * W:
        raise ValueError(f"{self.name}: spatial conditioning codes must cover the {H}x{W} "
                         f"latent ({H * W} codes); got {c.shape[1]}")
      c = c.reshape(-1, H, W)
    if start and z_init is None:
      raise ValueError(f"{self.name}: a completion (start {start}) needs z_init, the codes "
                       "whose prefix is kept")
    if z_init is not None:
      z_init = self._check_tokens(np.asarray(z_init).reshape(len(z_init), -1), "z_init")
      z_init = z_init.reshape(-1, H, W)
    return sampling.sample_window(self.transformer_config, self.variables["params"], c,
                                  (H, W), self.config.z_shape, rng=rng, z_init=z_init,
                                  start=start, temperature=temperature, top_k=top_k,
                                  top_p=top_p, greedy=greedy)

  def decode_to_img(self, z_indices, zshape: Optional[Sequence[int]] = None) -> jax.Array:
    """z_indices int[B, h*w] (permuted order) -> images float32[B, h*f, w*f, 3].

    zshape: (h, w), or taming's (B, C, h, w); defaults to the trained grid `z_shape`.
    """
    z = _as_array(z_indices)
    if z.ndim != 2:
      raise ValueError(f"{self.name}: z_indices must be int[B, h*w]; got {list(z.shape)}")
    h, w = (tuple(zshape)[-2:] if zshape is not None else self.config.z_shape)
    if h * w != z.shape[1]:
      raise ValueError(f"{self.name}: {z.shape[1]} tokens do not fill a {h}x{w} grid")
    if h * w == self.permuter.length:
      z = self.permuter.reverse(z)
    elif not self.permuter.is_identity:
      raise ValueError(f"{self.name}: the {self.permuter.name} permuter orders a "
                       f"{self.config.z_shape[0]}x{self.config.z_shape[1]} grid, not {h}x{w}")
    return self.first_stage.decode_indices(np.asarray(z).reshape(-1, h, w)
                                           if not isinstance(z, jax.Array)
                                           else z.reshape(-1, h, w))

  def to_rgb(self, segmentation) -> np.ndarray:
    """A one-hot segmentation float[B, H, W, n_labels] -> RGB in [-1, 1], coloured by
    taming's random `colorize` matrix (min-max scaled over the whole batch)."""
    if self.colorize is None:
      raise ValueError(f"{self.name}: the model has no colorize matrix (not a segmentation "
                       "model)")
    x = np.asarray(segmentation, np.float32)
    if x.ndim != 4 or x.shape[-1] != self.colorize.shape[1]:
      raise ValueError(f"{self.name}: to_rgb takes float[B, H, W, {self.colorize.shape[1]}]; "
                       f"got {list(x.shape)}")
    y = np.einsum("bhwl,cl->bhwc", x, self.colorize)
    return 2.0 * (y - y.min()) / (y.max() - y.min()) - 1.0


def segmentation_one_hot(labels, n_labels: int) -> np.ndarray:
  """int label map [B, H, W] -> float32 one-hot [B, H, W, n_labels] (clear error if a label
  is out of range)."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
    raise ValueError(f"segmentation labels must lie in [0, {n_labels}); got values in "
                     f"[{labels.min()}, {labels.max()}]")
  return np.eye(n_labels, dtype=np.float32)[labels]


def load_transformer(path: str, config: Optional[str] = None) -> Net2Net:
  """A Net2Net model from a model directory (kind "net2net") or a taming Net2Net .ckpt
  (+ its project YAML as `config`; without it the architecture is inferred where the
  weights tell it, and the error names what they cannot)."""
  from vqgan_jax.api import read_model
  cfg, variables = read_model(path, config, kinds=("net2net",))
  return Net2Net(cfg, variables, name=os.path.basename(os.path.normpath(path)))
