"""Inception features on the device mesh, and the FID / KID / IS they give (jax + numpy).

    from vqgan_jax import fid
    from vqgan_jax.nn.inception import load_inception
    net = fid.InceptionFeatures(load_inception("pt_inception-2015-12-05-6726825d.pth"))
    real, fake = fid.FeatureSet(), fid.FeatureSet(keep_logits=True)
    for images, mask in batches:                 # this process's rows, uint8[b, H, W, 3]
      real.update(net(images, mask))
    ...
    fid.scores(real, fake, ("fid", "is"))        # {"fid": ..., "is_mean": ..., "is_std": ...}

`InceptionFeatures` runs pytorch-fid's network (`nn.inception.FIDInception`) as one jitted
function over a ("data",) mesh of every device: each process passes its share of the
global batch, the padded rows carry mask 0, and every process gets the whole batch's
pool3 features and logits back (replicated), so statistics accumulate identically on all
processes. `FeatureSet` keeps the running float64 mean and covariance
(`metrics.FeatureStats`: no feature rows are kept unless KID or IS needs them).
`unit_levels` turns model outputs in [-1, 1] into the values a saved PNG of them holds,
so an in-process FID equals the FID of the written files.
"""

import functools
from typing import Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax import metrics
from vqgan_jax.nn.inception import FEATURE_DIM, NUM_CLASSES, FIDInception
from vqgan_jax.training import sharding as sharding_lib

METRICS = ("fid", "kid", "is")


def unit_levels(x):
  """float[..., 3] in [-1, 1] -> float32 in [0, 1] on the uint8 grid: round((x + 1) *
  127.5) / 255, the pixel values `images.to_uint8` (and so every PNG we write) stores."""
  x = jnp.clip(jnp.asarray(x, jnp.float32), -1.0, 1.0)
  return jnp.round((x + 1.0) * 127.5) / 255.0


def inception_outputs(model: FIDInception, variables, images):
  """{'pool3': float32[B, 2048], 'logits_unbiased': float32[B, 1008]} of images that are
  uint8[B, H, W, 3] (divided by 255 here) or float in [0, 1]; for use inside jit."""
  x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
  out = model.apply(variables, x)
  return {"pool3": out["pool3"], "logits_unbiased": out["logits_unbiased"]}


class InceptionFeatures:
  """pytorch-fid's Inception with its weights replicated on a ("data",) mesh.

  Args:
    variables: {'params', 'batch_stats'} from `nn.inception.load_inception`.
    mesh: defaults to a data-parallel mesh of every device.
    dtype: compute dtype of the convolutions (float32 for parity with pytorch-fid).
  """

  def __init__(self, variables, mesh=None, dtype=jnp.float32):
    self.mesh = mesh if mesh is not None else sharding_lib.make_mesh()
    self.model = FIDInception(dtype=dtype)
    repl = sharding_lib.replicated(self.mesh)
    batch = sharding_lib.batch_sharding(self.mesh)
    self.variables = jax.device_put(variables, repl)
    self._apply = jax.jit(self._outputs, in_shardings=(repl, batch, batch),
                          out_shardings=repl)

  @property
  def local_multiple(self) -> int:
    """This process's batch must be a multiple of its device count."""
    return max(1, self.mesh.devices.size // jax.process_count())

  def _outputs(self, variables, images, mask):
    return dict(inception_outputs(self.model, variables, images), mask=mask)

  def __call__(self, images, mask=None) -> Dict[str, np.ndarray]:
    """Features of one global batch.

    Args:
      images: this process's rows, uint8[b, H, W, 3] or float32 in [0, 1] (resized to
        299x299 on device as pytorch-fid resizes, unless they already are); b a multiple
        of `local_multiple`, the same on every process.
      mask: float/bool[b], 1 for real rows (default all).
    Returns:
      numpy {'pool3': [B, 2048], 'logits_unbiased': [B, 1008], 'mask': [B]} of the
      global batch (B = b x processes), identical on every process.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"InceptionFeatures: expected images [B, H, W, 3], got {images.shape}")
    if images.shape[0] % self.local_multiple:
      raise ValueError(f"InceptionFeatures: a batch of {images.shape[0]} does not split over "
                       f"this process's {self.local_multiple} devices")
    if images.dtype != np.uint8:
      images = images.astype(np.float32)
    mask = np.ones((images.shape[0],), np.float32) if mask is None else (
        np.asarray(mask, np.float32))
    batch = sharding_lib.global_batch({"x": images, "mask": mask}, self.mesh)
    return jax.device_get(self._apply(self.variables, batch["x"], batch["mask"]))


class FeatureSet:
  """Statistics of one image set: streaming pool3 mean / covariance, plus the pool3 rows
  (`keep_features`, for KID) and the logits (`keep_logits`, for the Inception Score)."""

  def __init__(self, keep_features: bool = False, keep_logits: bool = False):
    self.stats = metrics.FeatureStats(FEATURE_DIM)
    self._features = [] if keep_features else None
    self._logits = [] if keep_logits else None

  @property
  def count(self) -> int:
    return self.stats.count

  def update(self, outputs: Dict[str, np.ndarray], mask=None) -> "FeatureSet":
    """Adds the rows of `outputs` (an `InceptionFeatures` result) whose mask is set."""
    mask = outputs.get("mask") if mask is None else mask
    keep = (np.ones(len(outputs["pool3"]), bool) if mask is None
            else np.asarray(mask).astype(bool))
    pool3 = np.asarray(outputs["pool3"])
    self.stats.update(pool3, keep)
    if self._features is not None:
      self._features.append(pool3[keep].astype(np.float32))
    if self._logits is not None:
      self._logits.append(np.asarray(outputs["logits_unbiased"])[keep].astype(np.float32))
    return self

  def mu_sigma(self) -> Tuple[np.ndarray, np.ndarray]:
    return self.stats.mean, self.stats.cov

  @property
  def features(self) -> np.ndarray:
    if self._features is None:
      raise ValueError("FeatureSet: created without keep_features=True")
    return np.concatenate(self._features) if self._features else np.zeros((0, FEATURE_DIM))

  @property
  def logits(self) -> np.ndarray:
    if self._logits is None:
      raise ValueError("FeatureSet: created without keep_logits=True")
    return np.concatenate(self._logits) if self._logits else np.zeros((0, NUM_CLASSES))


Stats = Union[FeatureSet, Tuple[np.ndarray, np.ndarray]]


def _mu_sigma(s: Stats) -> Tuple[np.ndarray, np.ndarray]:
  return s.mu_sigma() if isinstance(s, FeatureSet) else s


def check_metrics(which: Sequence[str]) -> None:
  """Raises ValueError naming any of `which` that is not in METRICS."""
  unknown = sorted(set(which) - set(METRICS))
  if unknown:
    raise ValueError(f"unknown {unknown}; expected some of {list(METRICS)}")


def scores(real: Optional[Stats], fake: Optional[Stats], which: Sequence[str] = ("fid",),
           kid_subsets: int = metrics.KID_SUBSETS,
           kid_subset_size: int = metrics.KID_SUBSET_SIZE,
           is_splits: int = metrics.IS_SPLITS) -> Dict[str, float]:
  """The requested metrics: 'fid' (real: a FeatureSet or (mu, sigma)), 'kid' (both
  FeatureSets with keep_features), 'is' (of `fake`, with keep_logits)."""
  check_metrics(which)
  out = {}
  if "fid" in which:
    rows = [s.stats.rows if isinstance(s, FeatureSet) else None for s in (real, fake)]
    if rows[0] is not None and rows[1] is not None:  # small sets: exact and fast
      out["fid"] = metrics.frechet_distance_of_rows(*rows)
    else:
      out["fid"] = metrics.frechet_distance(*_mu_sigma(real), *_mu_sigma(fake))
  if "kid" in which:
    out["kid_mean"], out["kid_std"] = metrics.kid(real.features, fake.features,
                                                  subsets=kid_subsets,
                                                  subset_size=kid_subset_size)
  if "is" in which:
    out["is_mean"], out["is_std"] = metrics.inception_score(fake.logits, splits=is_splits)
  return out


@functools.lru_cache(maxsize=4)
def _cached_variables(path: str):
  from vqgan_jax.nn.inception import load_inception
  return load_inception(path)


def load_features(path: str, mesh=None) -> InceptionFeatures:
  """`InceptionFeatures` of a weights file (read once per process and path)."""
  return InceptionFeatures(_cached_variables(str(path)), mesh)
