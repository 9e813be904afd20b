"""Token orderings of taming's `taming/modules/transformer/permuter.py` (numpy only).

The transformer of a Net2Net model sees the first-stage codes in a fixed order: the
codes of an h×w latent are flattened row-major (raster id `i * w + j`) and then
shuffled by a permuter. A `Permuter` holds the two index vectors taming registers
as buffers:
  `forward_idx`   int32[H*W]: sequence position t holds raster token forward_idx[t]
                  (taming's `forward_shuffle_idx`; `encode_to_z` applies it).
  `backward_idx`  int32[H*W]: its inverse (taming's `backward_shuffle_idx`;
                  `decode_to_img` applies it to go back to raster order).

Orderings (`NAMES`, taming class in brackets):
  identity           raster order [Identity].
  subsample          repeated 2×2 space-to-depth down to 1×1 [Subsample]; needs a
                     square power-of-two grid.
  zcurve             Morton (Z-order) curve [ZCurve]; see `zcurve_codes`.
  spiral_out         spiral from the centre outwards [SpiralOut]; square grids of
                     even side (or 1×1).
  spiral_in          spiral_out read backwards [SpiralIn].
  random             `np.random.RandomState(1).permutation(H*W)` [Random].
  alternate_parsing  boustrophedon: odd rows read right to left [AlternateParsing].

Where taming's constructor fails, `make_permuter` raises `PermuterError`. ZCurve is
stricter than taming: taming builds it on any grid, but unless H and W are powers of
two with W == H or W == 2H its backward buffer (the Morton codes) is not a
permutation and `reverse` fails, so we refuse to build it there (`zcurve_forward`
still gives taming's forward order on every grid).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

NAMES = ("identity", "subsample", "zcurve", "spiral_out", "spiral_in", "random",
         "alternate_parsing")

# taming class name -> our name.
TAMING_CLASSES = {
    "Identity": "identity",
    "Subsample": "subsample",
    "ZCurve": "zcurve",
    "SpiralOut": "spiral_out",
    "SpiralIn": "spiral_in",
    "Random": "random",
    "AlternateParsing": "alternate_parsing",
}

# The module that holds the permuter classes in taming configs (`target:` keys).
TAMING_MODULE = "taming.modules.transformer.permuter"

# Seed of taming's Random permuter (hard-coded there).
RANDOM_SEED = 1


class PermuterError(ValueError):
  """A permuter that cannot be built, or index buffers that are not a valid pair."""


def _grid(height: int, width: int) -> str:
  return f"{height}x{width} grid"


def _label(name: str) -> str:
  """'zcurve' -> "permuter 'zcurve' (taming ZCurve)", for error messages."""
  taming = [cls for cls, ours in TAMING_CLASSES.items() if ours == name]
  return f"permuter {name!r}" + (f" (taming {taming[0]})" if taming else "")


def _is_power_of_two(n: int) -> bool:
  return n >= 1 and (n & (n - 1)) == 0


def _check_grid(where: str, height: int, width: int):
  for label, value in (("height", height), ("width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise PermuterError(f"{where}: {label} must be a positive integer, "
                          f"got {value!r}")


def _as_index_vector(buffer, field: str, n: int, where: str) -> np.ndarray:
  idx = np.asarray(buffer)
  if not np.issubdtype(idx.dtype, np.integer):
    raise PermuterError(f"{where}: {field} must hold integers, got dtype {idx.dtype}")
  if idx.shape != (n,):
    raise PermuterError(f"{where}: {field} must have shape ({n},), got {idx.shape}")
  if not np.array_equal(np.sort(idx), np.arange(n)):
    bad = sorted(set(range(n)) - set(idx.tolist()))
    raise PermuterError(f"{where}: {field} is not a permutation of range({n}) "
                        f"(values {idx.min()}..{idx.max()}; missing {bad[:8]})")
  return idx.astype(np.int32)


def _checked_pair(forward_idx, backward_idx, n: int, where: str):
  """Validates a (forward, backward) buffer pair; returns int32 copies of both."""
  forward = _as_index_vector(forward_idx, "forward_shuffle_idx", n, where)
  backward = _as_index_vector(backward_idx, "backward_shuffle_idx", n, where)
  roundtrip = forward[backward]
  if not np.array_equal(roundtrip, np.arange(n)):
    t = int(np.flatnonzero(roundtrip != np.arange(n))[0])
    raise PermuterError(f"{where}: backward_shuffle_idx is not the inverse of "
                        f"forward_shuffle_idx (forward[backward[{t}]] = {roundtrip[t]}, "
                        f"not {t})")
  return forward, backward


@dataclasses.dataclass(frozen=True)
class Permuter:
  """A token ordering over an H×W grid, with its inverse.

  Attributes:
    name: one of `NAMES`, or "custom" for buffers matching no named ordering.
    height: grid height H.
    width: grid width W.
    forward_idx: int32[H*W], read-only; position t holds raster token forward_idx[t].
    backward_idx: int32[H*W], read-only; the inverse permutation of forward_idx.
  """
  name: str
  height: int
  width: int
  forward_idx: np.ndarray
  backward_idx: np.ndarray

  def __post_init__(self):
    _check_grid(_label(self.name), self.height, self.width)
    object.__setattr__(self, "height", int(self.height))
    object.__setattr__(self, "width", int(self.width))
    where = f"permuter {self.name!r} on the {_grid(self.height, self.width)}"
    pair = _checked_pair(self.forward_idx, self.backward_idx, self.length, where)
    for field, idx in zip(("forward_idx", "backward_idx"), pair):
      idx.flags.writeable = False
      object.__setattr__(self, field, idx)

  def __eq__(self, other):
    if not isinstance(other, Permuter):
      return NotImplemented
    return ((self.name, self.height, self.width) == (other.name, other.height, other.width)
            and np.array_equal(self.forward_idx, other.forward_idx)
            and np.array_equal(self.backward_idx, other.backward_idx))

  def __hash__(self):
    return hash((self.name, self.height, self.width, self.forward_idx.tobytes()))

  @property
  def length(self) -> int:
    """Number of tokens, H*W."""
    return self.height * self.width

  @property
  def is_identity(self) -> bool:
    """Whether the ordering is raster order (apply and reverse are no-ops)."""
    return bool(np.array_equal(self.forward_idx, np.arange(self.length)))

  def _take(self, x, idx: np.ndarray, axis: int):
    ndim = len(x.shape)
    if not -ndim <= axis < ndim:
      raise PermuterError(f"axis {axis} is out of range for an array of rank {ndim}")
    axis %= ndim
    if x.shape[axis] != self.length:
      raise PermuterError(
          f"permuter {self.name!r} on the {_grid(self.height, self.width)} needs "
          f"{self.length} tokens along axis {axis}, got shape {tuple(x.shape)}")
    # Plain indexing, so numpy arrays, jax arrays and jax tracers all work.
    return x[(slice(None),) * axis + (idx,)]

  def apply(self, x, axis: int = -1):
    """Raster order -> sequence order: `x[..., forward_idx]` along `axis`.

    Args:
      x: numpy or jax array with H*W entries along `axis`, e.g. int32[B, H*W] codes.
      axis: the token axis.

    Returns:
      An array of the same shape, type and dtype as `x`.
    """
    return self._take(x, self.forward_idx, axis)

  def reverse(self, x, axis: int = -1):
    """Sequence order -> raster order: `x[..., backward_idx]` along `axis`."""
    return self._take(x, self.backward_idx, axis)


def _inverse(forward_idx: np.ndarray) -> np.ndarray:
  """The inverse of a permutation vector (what taming's `argsort(idx)` gives)."""
  inverse = np.empty_like(forward_idx)
  inverse[forward_idx] = np.arange(forward_idx.size, dtype=forward_idx.dtype)
  return inverse


def _identity_order(height: int, width: int) -> np.ndarray:
  return np.arange(height * width)


def _subsample_order(height: int, width: int) -> np.ndarray:
  if height != width or not _is_power_of_two(height):
    raise PermuterError(
        f"{_label('subsample')} needs a square grid whose side is a "
        f"power of two, got the {_grid(height, width)}")
  # Each round splits every block into its four 2x2 phases (row parity, column
  # parity) and stacks them as new leading blocks, until the blocks are single tokens.
  blocks = np.arange(height * width).reshape(1, height, width)
  while blocks.shape[1] > 1:
    count, size = blocks.shape[0], blocks.shape[1] // 2
    phases = blocks.reshape(count, size, 2, size, 2)
    blocks = phases.transpose(0, 2, 4, 1, 3).reshape(count * 4, size, size)
  return blocks.reshape(-1)


def zcurve_codes(height: int, width: int) -> np.ndarray:
  """Morton codes of the raster positions: taming ZCurve's `backward_shuffle_idx`.

  The code of cell (i, j) interleaves the bits of j (at even bit positions) and of i
  (at odd positions). The codes are a permutation of range(H*W) only when H and W
  are powers of two with W == H or W == 2H.

  Returns:
    int64[H*W] codes in raster order.
  """
  _check_grid(_label("zcurve"), height, width)
  i, j = np.divmod(np.arange(height * width, dtype=np.int64), width)
  codes = np.zeros(height * width, dtype=np.int64)
  for bit in range(max(height, width).bit_length()):
    codes |= ((j >> bit) & 1) << (2 * bit)
    codes |= ((i >> bit) & 1) << (2 * bit + 1)
  return codes


def zcurve_forward(height: int, width: int) -> np.ndarray:
  """taming ZCurve's `forward_shuffle_idx` on any grid: raster ids sorted by Morton code.

  Returns:
    int64[H*W].
  """
  return np.argsort(zcurve_codes(height, width), kind="stable")


def _zcurve_order(height: int, width: int) -> np.ndarray:
  codes = zcurve_codes(height, width)
  if not np.array_equal(np.sort(codes), np.arange(codes.size)):
    raise PermuterError(
        f"{_label('zcurve')} needs power-of-two H and W with W == H or "
        f"W == 2H, got the {_grid(height, width)}: taming's inverse buffer (the Morton "
        f"codes, max {codes.max()}) is not a permutation of range({codes.size}) there, so "
        f"its reverse fails; we refuse to build a permuter that cannot be reversed")
  return np.argsort(codes, kind="stable")


def _spiral_out_order(height: int, width: int, name: str = "spiral_out") -> np.ndarray:
  if height != width or (height % 2 and height != 1):
    raise PermuterError(f"{_label(name)} needs a square grid of even side (or 1x1), "
                        f"got the {_grid(height, width)}")
  n = height
  # Start just left of the centre and walk up, right, down, left with run lengths
  # 1, 1, 2, 2, 3, 3, ... until every cell is visited (the last run is cut short).
  i, j = n // 2, n // 2 - 1 if n > 1 else 0
  order = [i * n + j]
  moves = ((-1, 0), (0, 1), (1, 0), (0, -1))
  turn = 0
  while len(order) < n * n:
    di, dj = moves[turn % 4]
    for _ in range(turn // 2 + 1):
      if len(order) == n * n:
        break
      i, j = i + di, j + dj
      order.append(i * n + j)
    turn += 1
  return np.array(order)


def _spiral_in_order(height: int, width: int) -> np.ndarray:
  return _spiral_out_order(height, width, "spiral_in")[::-1]


def _random_order(height: int, width: int) -> np.ndarray:
  return np.random.RandomState(RANDOM_SEED).permutation(height * width)


def _alternate_parsing_order(height: int, width: int) -> np.ndarray:
  rows = np.arange(height * width).reshape(height, width)
  rows[1::2] = rows[1::2, ::-1]
  return rows.reshape(-1)


_ORDERS = {
    "identity": _identity_order,
    "subsample": _subsample_order,
    "zcurve": _zcurve_order,
    "spiral_out": _spiral_out_order,
    "spiral_in": _spiral_in_order,
    "random": _random_order,
    "alternate_parsing": _alternate_parsing_order,
}


def make_permuter(name: str, height: int, width: int) -> Permuter:
  """Builds the named ordering over an H×W grid.

  Args:
    name: one of `NAMES`.
    height: latent height H.
    width: latent width W.

  Raises:
    PermuterError: unknown name, bad grid size, or a grid the ordering does not
      support (the message names the ordering, the grid and the requirement).
  """
  if name not in _ORDERS:
    hint = ""
    if name in TAMING_CLASSES:
      hint = f" (taming class {name!r} is {TAMING_CLASSES[name]!r}; see from_taming)"
    raise PermuterError(f"unknown permuter {name!r}{hint}; known: {', '.join(NAMES)}")
  _check_grid(_label(name), height, width)
  height, width = int(height), int(width)
  forward = _ORDERS[name](height, width)
  return Permuter(name, height, width, forward, _inverse(forward))


def from_taming(target_or_class: str, params: Mapping[str, Any] | None = None,
                height: int | None = None, width: int | None = None) -> Permuter:
  """Builds the permuter of a taming `permuter_config`.

  Args:
    target_or_class: 'taming.modules.transformer.permuter.ZCurve' or 'ZCurve'.
    params: the config's `params` (taming's constructor arguments: `H` and `W`;
      Identity takes none). None means empty.
    height: grid height, needed when `params` has no `H` (Identity); must agree
      with `params['H']` when both are given.
    width: grid width, likewise for `W`.

  Raises:
    PermuterError: unknown module or class, unexpected params, missing or
      conflicting grid size, or a grid the ordering does not support.
  """
  module, _, class_name = target_or_class.rpartition(".")
  if module and module != TAMING_MODULE:
    raise PermuterError(f"permuter target {target_or_class!r}: expected a class of "
                        f"{TAMING_MODULE!r} or a bare class name")
  if class_name not in TAMING_CLASSES:
    what = "is abstract" if class_name == "AbstractPermuter" else "is unknown"
    raise PermuterError(f"permuter class {class_name!r} {what}; known: "
                        f"{', '.join(TAMING_CLASSES)}")
  params = dict(params or {})
  unexpected = sorted(set(params) - {"H", "W"})
  if unexpected:
    raise PermuterError(f"permuter {class_name!r}: unexpected params {unexpected} "
                        f"(taming's constructor takes only H and W)")
  sizes = {}
  for key, label, given in (("H", "height", height), ("W", "width", width)):
    value = params.get(key, given)
    if value is None:
      raise PermuterError(f"permuter {class_name!r}: the grid {label} is unknown "
                          f"(no params[{key!r}] and no {label}= argument)")
    if given is not None and key in params and params[key] != given:
      raise PermuterError(f"permuter {class_name!r}: params[{key!r}] = {params[key]} "
                          f"disagrees with {label}={given}")
    sizes[label] = value
  return make_permuter(TAMING_CLASSES[class_name], sizes["height"], sizes["width"])


def from_buffers(forward_idx, backward_idx, height: int, width: int) -> Permuter:
  """Builds a permuter from taming's buffers, e.g. those of a converted checkpoint.

  Args:
    forward_idx: integer[H*W] `permuter.forward_shuffle_idx`.
    backward_idx: integer[H*W] `permuter.backward_shuffle_idx`.
    height: latent height H.
    width: latent width W.

  Returns:
    A `Permuter` named after the first of `NAMES` with the same forward order on
    this grid, or named "custom" when none matches.

  Raises:
    PermuterError: a buffer is not a permutation of range(H*W), or the two are not
      inverses of each other.
  """
  _check_grid("permuter buffers", height, width)
  where = f"permuter buffers for the {_grid(height, width)}"
  forward, backward = _checked_pair(forward_idx, backward_idx, int(height) * int(width),
                                    where)
  for name in NAMES:
    try:
      candidate = make_permuter(name, height, width)
    except PermuterError:  # this ordering does not exist on this grid
      continue
    if np.array_equal(candidate.forward_idx, forward):
      return candidate
  return Permuter("custom", int(height), int(width), forward, backward)
