"""What transformer training adds to the shared loop: its task (state, step, data, eval, grids).

`train_and_evaluate(config, workdir)` runs `loop.train` with a `GPTTask`:
  - `resolve(config)` loads the frozen first stage (and conditioning stage) named by the
    config or by the code dataset's metadata, and derives what is defined once there:
    the vocabulary, the latent and conditioning grids, the block size;
  - batches of extracted codes (`data.codes`, read into memory, in the (seed, step)
    order of `vqgan_jax.data.arrays`) or of images encoded inside the step;
  - validation NLL and bits per token over the whole validation split;
  - sample grids as taming's log_images: the codes' reconstruction, a completion of
    their top half, a top-k sample and a greedy sample per row (the conditioning first);
  - the exported model directory (kind "net2net"), which `load_transformer` and
    `sample.py` read.
"""

import dataclasses
import math
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax import net2net as n2n_lib
from vqgan_jax import sampling
from vqgan_jax.nn import gpt as gpt_lib
from vqgan_jax.nn.vqgan import VQGANConfig, VQModel
from vqgan_jax.training import config_lib, gpt_config, gpt_lib as lib, loop, sharding
from vqgan_jax.training import steps as steps_lib

GRID_STREAM = 0x67726964  # folded into the seed for the sample grids' randomness


@dataclasses.dataclass
class Resolved:
  """The frozen stages and the sizes derived from them and from the data."""
  first_stage: Any                # api.VQGAN
  first_stage_source: str
  cond_stage: Any                 # api.VQGAN or None
  cond_stage_source: str
  gpt_config: gpt_lib.GPTConfig
  n2n: n2n_lib.Net2NetConfig
  meta: Optional[Dict[str, Any]]  # the code dataset's metadata
  image_size: int                 # pixels per side of the training images


def _load_stage(path: str, yaml: str, which: str, field: str):
  from vqgan_jax.api import load_vqgan
  try:
    return load_vqgan(path, yaml or None, which=which)
  except (OSError, ValueError, KeyError) as e:
    raise loop.TrainingError(f"{field}: cannot load the VQGAN {path!r}: {e}") from None


def _same_model(loaded, recorded: Dict[str, Any], what: str, codes: str):
  """Refuses a VQGAN (api.VQGAN) other than the one the codes' metadata records."""
  from vqgan_jax.model_dir import variables_fingerprint
  want = recorded["config"]
  if loaded.config.to_dict() != VQGANConfig.from_dict(want).to_dict():
    diff = [k for k, v in loaded.config.to_dict().items() if want.get(k, v) != v]
    raise loop.TrainingError(
        f"{what}: the VQGAN differs from the one that extracted {codes} (fields {diff}); "
        "use the same model, or extract the codes again")
  if recorded.get("fingerprint") and variables_fingerprint(
      loaded.variables) != recorded["fingerprint"]:
    raise loop.TrainingError(
        f"{what}: the VQGAN has the architecture of the one that extracted {codes} but "
        "other weights (its fingerprint differs from the codes' metadata); use that model, "
        "or extract the codes again")


def resolve(config) -> Resolved:
  """Loads the frozen stages and fills in the derived sizes (errors name the field)."""
  n = config.net2net
  fields = {k: n[k] for k in n.keys()}
  meta = None
  cond_stage, cond_source = None, ""
  if config.data.codes:
    from vqgan_jax.data import codes as codes_lib
    try:
      meta = codes_lib.read_meta(config.data.codes)
    except (OSError, ValueError) as e:
      raise loop.TrainingError(f"data.codes: {e}") from None
    vq_meta = meta["vqgan"]
    source = config.first_stage or vq_meta["path"]
    first = _load_stage(source, config.first_stage_yaml,
                        vq_meta.get("which", "vqgan") if not config.first_stage else "vqgan",
                        "first_stage")
    _same_model(first, vq_meta, "first_stage", config.data.codes)
    fields["z_shape"] = tuple(meta["code_grid"])
    kind = meta.get("conditioning", {}).get("kind", "none")
    want = {"none": ("sos", "coord"), "class": ("class",), "vq": ("vq",)}.get(kind, ())
    if n.cond not in want:
      raise loop.TrainingError(
          f"net2net.cond: {n.cond!r} does not fit the codes in {config.data.codes}, whose "
          f"conditioning is {kind!r} (use net2net.cond={want[0] if want else '?'!r})")
    cond = meta.get("conditioning", {})
    if n.cond == "class":
      recorded = int(cond.get("n_classes", 0))
      if int(n.n_classes) <= 0:
        fields["n_classes"] = recorded
      elif int(n.n_classes) < recorded:
        raise loop.TrainingError(f"net2net.n_classes: {n.n_classes} is fewer than the "
                                 f"{recorded} classes of the codes")
    if n.cond == "vq":
      cvq = cond["vqgan"]
      cond_source = config.cond_stage or cvq["path"]
      cond_stage = _load_stage(cond_source, config.cond_stage_yaml,
                               cvq.get("which", "vqgan") if not config.cond_stage else "vqgan",
                               "cond_stage")
      _same_model(cond_stage, cvq, "cond_stage", config.data.codes)
      fields["cond_shape"] = tuple(cond["cond_grid"])
      fields["cond_stage_key"] = cond.get("cond_type", "image")
      fields["downsample_cond_size"] = int(cond.get("downsample_cond_size", -1))
    if n.cond == "coord":  # the coordinate map of the whole image, as FacesHQ with coord
      size, f = int(meta["image_size"]), int(n.coord_down_factor)
      if size % f:
        raise loop.TrainingError(f"net2net.coord_down_factor: {f} does not divide the codes' "
                                 f"image size {size}")
      fields["cond_shape"] = (size // f, size // f)
    first_source = source
  else:
    first_source = config.first_stage
    first = _load_stage(first_source, config.first_stage_yaml, "vqgan", "first_stage")
    size = int(config.data.images.crop_size)
    f = first.config.downsample_factor
    if size % f:
      raise loop.TrainingError(f"data.images.crop_size: {size} is not a multiple of the "
                               f"first stage's downsampling factor {f}")
    fields["z_shape"] = (size // f, size // f)
  image_size = int(meta["image_size"]) if meta else int(config.data.images.crop_size)
  n2n = n2n_lib.Net2NetConfig.from_dict(fields)
  n_codes = first.config.num_codes
  cond_codes = cond_stage.config.num_codes if cond_stage is not None else None
  t = dict(config.transformer.to_dict())
  if t["vocab_size"] == -1:
    top = {"sos": n2n.sos_token + 1, "class": n2n.n_classes + (n2n.label_dropout > 0),
           "coord": 0, "vq": cond_codes or 0, "first_stage": n_codes}
    if n2n.cond == "coord":  # the largest token the (fixed) coordinate map gives
      top["coord"] = int(lib.coord_map_tokens(n2n, image_size).max()) + 1
    t["vocab_size"] = max(n_codes, top[n2n.cond])
  if t["block_size"] == -1:
    t["block_size"] = n2n.n_cond_tokens + n2n.n_z_tokens - 1
  t["dtype"] = config.dtype if config.dtype != "float32" else t["dtype"]
  gpt_cfg = gpt_lib.GPTConfig(**t)
  errors = [f"transformer.{e}" for e in gpt_cfg.validate()]
  errors += [e if e.startswith("transformer.") else f"net2net.{e}"
             for e in n2n.validate(gpt_cfg, n_codes, cond_codes)]
  if errors:
    raise loop.TrainingError("the transformer does not fit its first stage and data:\n  "
                             + "\n  ".join(errors))
  return Resolved(first, first_source, cond_stage, cond_source, gpt_cfg, n2n, meta, image_size)


class GPTTask(loop.TrainTask):
  """The transformer's side of the loop (see loop.TrainTask)."""

  loss_key = "loss"

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.r = resolve(config)
    on_the_fly = bool(config.data.on_the_fly)
    self.setup = lib.build_setup(config, self.r.gpt_config, self.r.n2n,
                                 VQModel(self.r.first_stage.config) if on_the_fly else None,
                                 self.r.image_size)
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    self.steps = lib.CompiledSteps(self.setup, self.mesh, config_lib.sharding_rules(config))
    self.abstract_state = self.steps.abstract_state
    self.first_stage_vars = (self.steps.put_replicated(self.r.first_stage.variables)
                             if on_the_fly else None)
    self._grid = None
    if on_the_fly:
      from vqgan_jax.data import pipeline
      counts = loop.main_process_first(
          lambda: pipeline.prepare_data(config.data.images, workdir), "vqgan_jax:prepare_data")
      self.num_eval = counts["eval"]
      self.train_source = self.eval_source = None
    else:
      from vqgan_jax.data import codes as codes_lib
      try:
        self.train_source = codes_lib.open_code_dataset(config.data.codes,
                                                        config.data.train_split)
        self.eval_source = (codes_lib.open_code_dataset(config.data.codes,
                                                        config.data.val_split)
                            if config.data.val_split else None)
      except (OSError, ValueError) as e:
        raise loop.TrainingError(f"data.codes: {e}") from None
      self.num_eval = self.eval_source.num_examples if self.eval_source else 0

  # -- batches --------------------------------------------------------------------------------

  def _fields(self, batch):
    keep = {"z", "label", "c", "image", "mask"}
    return {k: v for k, v in batch.items() if k in keep}

  def _kwargs(self):
    return dict(process_index=jax.process_index(), process_count=jax.process_count())

  def train_batches(self, start_step: int):
    c = self.config
    if self.train_source is None:
      from vqgan_jax.data import pipeline
      it = pipeline.create_train_iterator(c.data.images, global_batch_size=int(c.batch_size),
                                          seed=int(c.seed), start_step=start_step,
                                          workdir=self.workdir, **self._kwargs())
    else:
      from vqgan_jax.data import arrays
      it = arrays.train_batches(self.train_source, global_batch_size=int(c.batch_size),
                                seed=int(c.seed), start_step=start_step, **self._kwargs())
    for batch in it:
      yield sharding.global_batch(self._fields(batch), self.mesh)

  def _eval_batches(self, batch_size: int):
    if self.train_source is None:
      from vqgan_jax.data import pipeline
      return pipeline.create_eval_iterator(self.config.data.images,
                                           global_batch_size=batch_size,
                                           workdir=self.workdir, **self._kwargs())
    from vqgan_jax.data import arrays
    return arrays.eval_batches(self.eval_source, global_batch_size=batch_size,
                               **self._kwargs())

  # -- the loop's hooks -----------------------------------------------------------------------

  def init_state(self, rng):
    return self.steps.init(rng)

  def init_from(self, path: str, rng):
    """Transformer weights of a net2net model directory or taming Net2Net .ckpt."""
    from vqgan_jax.api import read_model
    try:
      cfg, variables = read_model(path, kinds=("net2net",))
    except (OSError, ValueError, KeyError) as e:
      raise loop.TrainingError(f"init_from: {e}") from None
    if "transformer" not in variables:
      raise loop.TrainingError(f"init_from: {path} holds no transformer weights "
                               f"({cfg.get('transformer_error', 'convert it again')})")
    mismatch = []
    mine = {"transformer": self.r.gpt_config.to_dict(), "net2net": self.r.n2n.to_dict()}
    for section, keys in (("transformer", ("n_head", "n_unmasked")),
                          ("net2net", ("cond", "permuter"))):
      for k in keys:
        theirs = cfg.get(section, {}).get(k)
        if theirs is not None and theirs != mine[section][k]:
          mismatch.append(f"{section}.{k}: checkpoint {theirs!r}, config {mine[section][k]!r}")
    if mismatch:
      raise loop.TrainingError(f"init_from: {path} is a different model; set the config's "
                               "fields to the checkpoint's:\n  " + "\n  ".join(mismatch))
    params = gpt_lib.unstack_blocks(variables["transformer"]["params"])
    expected = gpt_lib.unstack_blocks(
        jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                               self.abstract_state.params))
    errors = steps_lib.tree_shape_errors(expected, params, f"init_from {path}")
    if errors:
      raise loop.TrainingError(
          "init_from: the checkpoint's transformer does not fit the config's (set "
          "config.transformer to its sizes):\n  " + "\n  ".join(errors))
    return self.steps.init(rng, params)

  def fingerprint(self) -> Dict[str, Any]:
    return config_lib.fingerprint(self.config, gpt_config.RESUME_FIELDS)

  def train_step(self, state, batch):
    return self.steps.train(state, self.first_stage_vars, batch)

  def learning_rate(self, step: int) -> float:
    return float(self.setup.schedule(step))

  def evaluate(self, state) -> Optional[Dict[str, float]]:
    """Token-mean NLL (nats), bits per token and perplexity over the validation split."""
    if not self.num_eval:
      return None
    totals = None
    for batch in self._eval_batches(int(self.config.batch_size)):
      out = jax.device_get(self.steps.eval(state, self.first_stage_vars,
                                           sharding.global_batch(self._fields(batch),
                                                                 self.mesh)))
      totals = out if totals is None else jax.tree_util.tree_map(np.add, totals, out)
    nll = float(totals["nll_sum"]) / float(totals["tokens"])
    return {"val/nll": nll, "val/bits_per_token": nll / math.log(2.0),
            "val/perplexity": math.exp(min(nll, 700.0)),
            "val/num_examples": float(totals["count"])}

  def _grid_batch(self):
    """The grid's first examples: validation (else training) codes, fixed for the run."""
    if self._grid is None:
      n = int(self.config.num_images)
      if self.train_source is None:
        from vqgan_jax.data import pipeline
        if self.num_eval:
          it = pipeline.create_eval_iterator(self.config.data.images, global_batch_size=n,
                                             workdir=self.workdir)
        else:  # no validation images: the first training images of the run
          it = pipeline.create_train_iterator(self.config.data.images, global_batch_size=n,
                                              seed=int(self.config.seed), start_step=0,
                                              workdir=self.workdir)
        batch = next(it)
        it.close()
        _, idx = self.r.first_stage.encode(batch["image"])
        batch = {"z": np.asarray(idx)}
        rows = int(batch["z"].shape[0]) if not self.num_eval else min(n, self.num_eval)
      else:
        source = self.eval_source if self.num_eval else self.train_source
        rows = min(n, source.num_examples)
        batch = source.read(np.arange(rows))
      self._grid = ({k: np.asarray(v)[:rows] for k, v in self._fields(batch).items()
                     if k != "mask"}, rows)
    return self._grid

  def _cond_image(self, batch) -> Optional[np.ndarray]:
    """The conditioning as an image (decoded cond codes; depth grey, segmentation
    coloured by taming's colorize matrix when the cond stage has one), or None."""
    if self.r.n2n.cond != "vq" or self.r.cond_stage is None:
      return None
    c = np.asarray(batch["c"])
    x = np.asarray(self.r.cond_stage.decode_indices(c.reshape(c.shape[0], *self.r.n2n.cond_shape)))
    if x.shape[-1] == 1:
      x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] != 3:  # segmentation logits: one-hot of the argmax, coloured
      onehot = np.eye(x.shape[-1], dtype=np.float32)[x.argmax(-1)]
      colors = np.random.RandomState(0).randn(3, x.shape[-1]).astype(np.float32)
      y = np.einsum("bhwl,cl->bhwc", onehot, colors)
      x = 2.0 * (y - y.min()) / max(y.max() - y.min(), 1e-8) - 1.0
    return x

  def _replicated_params(self, state):
    """The params as host arrays on every process (FSDP shards may live on other hosts)."""
    rep = sharding.replicated(self.mesh)
    gathered = jax.jit(lambda p: p, out_shardings=rep)(state.params)
    return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), gathered)

  def image_grid(self, state) -> Optional[np.ndarray]:
    """uint8 grid; per row: [conditioning |] codes decoded | top half kept, rest sampled |
    sampled (top-k) | greedy."""
    from vqgan_jax.images import image_grid
    if not self.config.num_images:
      return None
    batch, rows = self._grid_batch()
    setup, r = self.setup, self.r
    z = np.asarray(lib.image_tokens(dataclasses.replace(setup, first_stage=None),
                                    {"z": jnp.asarray(batch["z"])}))
    c = np.asarray(lib.cond_tokens(setup, {k: jnp.asarray(v) for k, v in batch.items()},
                                   rows))
    params = self._replicated_params(state)
    s = self.config.sample
    top_k = int(s.top_k) or None
    top_p = float(s.top_p) if float(s.top_p) >= 0 else None
    # A stream of its own: fold_in(seed, step) is the next train step's key.
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)),
                                                GRID_STREAM), int(state.step))
    n_z, half = z.shape[1], z.shape[1] // 2
    kw = dict(temperature=float(s.temperature), top_k=top_k, top_p=top_p)
    completed = sampling.sample_tokens(r.gpt_config, params, c, n_z - half, rng=rng,
                                       z_prefix=z[:, :half], **kw)
    completed = np.concatenate([z[:, :half], np.asarray(completed)], axis=1)
    sampled = sampling.sample_tokens(r.gpt_config, params, c, n_z,
                                     rng=jax.random.fold_in(rng, 1), **kw)
    greedy = sampling.sample_tokens(r.gpt_config, params, c, n_z, greedy=True)
    perm = setup.permuter
    h, w = r.n2n.z_shape
    decode = lambda t: np.asarray(r.first_stage.decode_indices(
        np.asarray(perm.reverse(np.asarray(t))).reshape(-1, h, w)))
    columns = [decode(z), decode(completed), decode(sampled), decode(greedy)]
    cond = self._cond_image(batch)
    if cond is not None:
      if cond.shape[1:3] != columns[0].shape[1:3]:
        cond = np.asarray(jax.image.resize(cond, (cond.shape[0],) + columns[0].shape[1:],
                                           "nearest"))
      columns.insert(0, cond)
    return image_grid(columns)

  def export(self, state, directory: str) -> str:
    from vqgan_jax import model_dir
    r = self.r
    params = gpt_lib.unstack_blocks(jax.device_get(state.params))
    gcfg = dataclasses.replace(r.gpt_config, scan_layers=False, remat="none")
    variables = {"vqgan": r.first_stage.variables,
                 "transformer": {"params": params}}
    config = {"vqgan": r.first_stage.config.to_dict(), "transformer": gcfg.to_dict(),
              "net2net": r.n2n.to_dict(), "first_stage_source": r.first_stage_source,
              "global_step": int(jax.device_get(state.step))}
    if r.cond_stage is not None:
      variables["cond_stage"] = r.cond_stage.variables
      config["cond_stage"] = r.cond_stage.config.to_dict()
      config["cond_stage_source"] = r.cond_stage_source
    variables = jax.tree_util.tree_map(np.asarray, variables)
    return model_dir.save_model_dir(directory, variables, config, kind="net2net")


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) transformer training; returns the loop's summary."""
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
  return loop.train(config, workdir, GPTTask(config, workdir))
