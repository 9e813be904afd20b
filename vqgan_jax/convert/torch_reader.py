"""Torch-free reader for PyTorch / PyTorch Lightning checkpoint files.

Reads both serialization formats of `torch.save` (the zip format of torch >=
1.6 and the legacy pre-1.6 stream of pickles) with numpy, ml_dtypes and the
standard library only. Tensors come back as C-contiguous numpy arrays (copies).

The unpickler is restricted: only an explicit allow-list of globals resolves to
real objects (this module's own versions of torch's tensor rebuild functions,
storage types, `collections.OrderedDict` and a few inert builtins). Any other
global becomes an inert `Unresolved` placeholder class that only records how it
was called, and BUILD is only honoured on placeholders and on OrderedDicts
(the `_metadata` of state dicts). Nothing in a file can make code run.
"""

import collections
from collections.abc import Mapping
import os
import pickle
import re
import zipfile

import ml_dtypes
import numpy as np

_MAGIC = 0x1950a86a20f9469cfc6c       # first pickle of a legacy torch file
_STORAGE_DTYPES = {n + 'Storage': np.dtype(d) for n, d in [
    ('Half', np.float16), ('BFloat16', ml_dtypes.bfloat16),
    ('Float', np.float32), ('Double', np.float64), ('Long', np.int64),
    ('Int', np.int32), ('Short', np.int16), ('Char', np.int8),
    ('Byte', np.uint8), ('Bool', np.bool_), ('ComplexFloat', np.complex64),
    ('ComplexDouble', np.complex128), ('Untyped', np.uint8)]}
# torch pickles a dtype as the global torch.<canonical name>.
_TORCH_DTYPES = {n: np.dtype(getattr(ml_dtypes, n, n)) for n in [
    'float16', 'bfloat16', 'float32', 'float64', 'int64', 'int32', 'int16',
    'int8', 'uint8', 'uint16', 'uint32', 'uint64', 'bool', 'complex64',
    'complex128', 'float8_e4m3fn', 'float8_e5m2', 'float8_e4m3fnuz',
    'float8_e5m2fnuz']}


class CheckpointFormatError(ValueError):
  """A file is missing, is not a torch checkpoint, or is malformed."""


class _Problem(Exception):
  """Internal: a format problem; load_torch_file prefixes the file path."""


class _UnresolvedMeta(type):
  """Placeholder classes compare and hash by (module, name), across loads."""

  def __eq__(cls, other):
    if isinstance(other, _UnresolvedMeta):
      return (cls.module, cls.name) == (other.module, other.name)
    return NotImplemented

  def __hash__(cls):
    return hash(('Unresolved', cls.module, cls.name))

  def __repr__(cls):
    return f'<Unresolved {cls.module}.{cls.name}>'


class Unresolved(metaclass=_UnresolvedMeta):
  """Base of the inert stand-ins for globals outside the allow-list.

  Each stand-in is a subclass with class attributes `module` and `name` (the
  global's import path). Calling it, `__new__`, BUILD (`__setstate__`), item
  assignment and appends only record their arguments, in `args`, `kwargs`,
  `state`, `dict_items` and `list_items`. BUILD on the class sets `cls.state`.
  """
  module = name = ''
  state = None

  def __new__(cls, *args, **kwargs):
    self = object.__new__(cls)
    self.args, self.kwargs = args, kwargs
    self.dict_items, self.list_items = [], []
    return self

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):
    self.dict_items.append((key, value))

  def append(self, value):  # APPENDS falls back to it item by item
    self.list_items.append(value)

  def __repr__(self):
    return f'<Unresolved {self.module}.{self.name} instance, args={self.args!r}>'


class _StorageType:
  """Inert marker for a `torch.<Name>Storage` global (not callable)."""

  def __init__(self, name):
    self.name, self.dtype = name, _STORAGE_DTYPES[name]


_STORAGE_TYPES = {n: _StorageType(n) for n in _STORAGE_DTYPES}


class _Storage:
  """Raw bytes (1-D uint8 array) of one torch storage and its saved dtype."""

  def __init__(self, raw, dtype, big_endian):
    self.raw, self.dtype, self.big_endian = raw, dtype, big_endian
    self._typed = {}

  def typed(self, dtype):
    """Returns the storage as a 1-D native-order array of `dtype` (cached)."""
    if dtype not in self._typed:
      raw = self.raw[:self.raw.size - self.raw.size % dtype.itemsize]
      if dtype == np.bool_:
        arr = raw != 0
      elif self.big_endian and dtype.itemsize > 1:
        unit = dtype.itemsize // (2 if dtype.kind == 'c' else 1)
        arr = raw.view(f'>u{unit}').astype(f'u{unit}').view(dtype)
      else:
        arr = raw.view(dtype)
      self._typed[dtype] = arr
    return self._typed[dtype]


def _make_array(storage, offset, size, stride, dtype=None, metadata=None):
  """Copies the (offset, size, stride) view of `storage`, in elements.

  Returns a C-contiguous array of shape `size` and `dtype` (default: the
  storage's dtype); geometry outside the storage raises _Problem.
  """
  if not isinstance(storage, _Storage):
    raise _Problem(f'expected a storage for a tensor, got {type(storage)!r}')
  size, stride = tuple(size), tuple(stride)
  if (not all(isinstance(v, int) and v >= 0 for v in (offset,) + size + stride)
      or len(size) != len(stride)):
    raise _Problem(f'invalid tensor geometry: offset {offset!r}, size '
                   f'{size!r}, stride {stride!r}')
  flat = storage.typed(storage.dtype if dtype is None else dtype)
  if 0 in size:
    return np.zeros(size, flat.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= flat.size:
    raise _Problem(f'tensor (offset {offset}, size {size}, stride {stride}) '
                   f'reaches element {last}, but its storage holds '
                   f'{flat.size} {flat.dtype} elements')
  # as_strided goes through __array_interface__, which cannot spell the
  # ml_dtypes types (bfloat16, float8): stride over same-size void items.
  items = flat[offset:].view(np.dtype((np.void, flat.itemsize)))
  view = np.lib.stride_tricks.as_strided(
      items, size, [s * flat.itemsize for s in stride], writeable=False)
  out = np.array(view, order='C', copy=True).view(flat.dtype)
  if isinstance(metadata, Mapping):  # torch's lazy conj / neg bits
    out = np.negative(out) if metadata.get('neg') else out
    out = np.conj(out) if metadata.get('conj') else out
  return out


def _rebuild_tensor(storage, storage_offset, size, stride):
  """torch._utils._rebuild_tensor -> numpy array."""
  return _make_array(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, metadata=None):
  """torch._utils._rebuild_tensor_v2 -> numpy array (hooks dropped)."""
  del requires_grad, backward_hooks
  return _make_array(storage, storage_offset, size, stride, None, metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  """torch._utils._rebuild_tensor_v3 (untyped storage + explicit dtype)."""
  del requires_grad, backward_hooks
  if not isinstance(dtype, np.dtype):
    raise _Problem(f'unsupported tensor dtype {dtype!r}')
  return _make_array(storage, storage_offset, size, stride, dtype, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
  """torch._utils._rebuild_parameter(_with_state): the parameter's data."""
  del requires_grad, backward_hooks, state
  if not isinstance(data, np.ndarray):
    raise _Problem(f'expected a tensor inside a Parameter, got {type(data)!r}')
  return data


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
                      _rebuild_parameter)


def _rebuild_from_type(func, new_type, args, state):
  """torch._tensor._rebuild_from_type(_v2): only for the rebuilders above."""
  del new_type, state
  if not any(func is f for f in _TENSOR_REBUILDERS) or not isinstance(
      args, tuple):
    raise _Problem(f'_rebuild_from_type_v2 with disallowed function {func!r}')
  return func(*args)


def _codecs_encode(text, encoding='utf-8'):
  """_codecs.encode as protocol-2 pickles of bytes use it (latin1 only)."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise _Problem(f'unsupported _codecs.encode({text!r:.50}, {encoding!r})')
  return text.encode('latin1')


_ALLOWED = {
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('torch._tensor', '_rebuild_from_type'): _rebuild_from_type,
    ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch', 'Size'): tuple,
    ('torch', 'device'): lambda kind, index=None: (  # -> 'cuda:0'
        str(kind) if index is None else f'{kind}:{index}'),
    ('builtins', 'set'): set, ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice, ('builtins', 'complex'): complex,
    ('builtins', 'bytes'): lambda: b'',
    ('_codecs', 'encode'): _codecs_encode,
}


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Restricted pure-Python unpickler (its opcodes can be overridden).

  `storage_loader(pid)` resolves ('storage', ...) persistent ids. With
  `scan=True` every global except storage types is a placeholder (used to
  list a legacy file's storages before their bytes are read).
  """
  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file, storage_loader, scan=False):
    super().__init__(file, encoding='utf-8')
    self._storage_loader, self._scan, self._placeholders = (
        storage_loader, scan, {})

  def find_class(self, module, name):
    module = {'__builtin__': 'builtins', 'copy_reg': 'copyreg'}.get(
        module, module)
    if module in ('torch', 'torch.cuda', 'torch.storage') and (
        name in _STORAGE_TYPES):
      return _STORAGE_TYPES[name]
    if not self._scan and (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if not self._scan and module == 'torch' and name in _TORCH_DTYPES:
      return _TORCH_DTYPES[name]
    if (module, name) not in self._placeholders:
      self._placeholders[(module, name)] = _UnresolvedMeta(
          re.sub(r'\W', '_', name)[:100] or '_', (Unresolved,),
          {'module': module, 'name': name})
    return self._placeholders[(module, name)]

  def persistent_load(self, pid):
    if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == 'module':
      return pid[1]  # legacy save of a whole nn.Module: its class
    if not (isinstance(pid, tuple) and len(pid) in (5, 6)
            and pid[0] == 'storage' and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str) and isinstance(pid[4], int)
            and pid[4] >= 0):
      raise _Problem("expected persistent ids ('storage', <StorageType>, key,"
                     f' location, numel[, view]), got {pid!r:.200}')
    return self._storage_loader(pid)

  def _load_build(self):
    state, inst = self.stack.pop(), self.stack[-1]
    if isinstance(inst, (Unresolved, _UnresolvedMeta)):
      inst.state = state
    elif type(inst) is collections.OrderedDict and isinstance(state, dict):
      inst.__dict__.update((str(k), v) for k, v in state.items())
    else:
      raise _Problem(f'BUILD on a {type(inst).__name__} is not allowed')

  def _no_extensions(self):
    raise _Problem('pickle extension codes (EXT1/2/4) are not supported')

  dispatch[pickle.BUILD[0]] = _load_build
  dispatch.update(dict.fromkeys(
      (pickle.EXT1[0], pickle.EXT2[0], pickle.EXT4[0]), _no_extensions))


def _reject_storage(pid):
  raise _Problem(f'unexpected persistent id {pid!r:.200} in a header pickle')


def _load_zip(zf):
  """Unpickles `<root>/data.pkl` of a torch >= 1.6 zip checkpoint."""
  names = set(zf.namelist())
  roots = sorted(n[:-len('/data.pkl')] for n in names
                 if n.endswith('/data.pkl') and n.count('/') == 1)
  if len(roots) != 1:
    raise _Problem('expected exactly one <root>/data.pkl in the zip archive, '
                   f'found {len(roots)}')
  root, order, cache = roots[0], 'little', {}
  if f'{root}/byteorder' in names:
    order = zf.read(f'{root}/byteorder').decode('ascii', 'replace').strip()
    if order not in ('little', 'big'):
      raise _Problem(f"expected byteorder 'little' or 'big', got {order!r}")

  def load_storage(pid):
    stype, key, numel = pid[1], pid[2], pid[4]
    if key not in cache:
      record = f'{root}/data/{key}'
      if record not in names:
        raise _Problem(f'missing storage record {record!r}')
      nbytes, data = numel * stype.dtype.itemsize, zf.read(record)
      if len(data) < nbytes:
        raise _Problem(f'storage record {record!r} holds {len(data)} bytes, '
                       f'expected {nbytes} ({numel} x {stype.name})')
      cache[key] = _Storage(np.frombuffer(data, np.uint8)[:nbytes],
                            stype.dtype, order == 'big')
    return cache[key]

  with zf.open(f'{root}/data.pkl') as f:
    return _Unpickler(f, load_storage).load()


def _load_legacy(f):
  """Reads the pre-1.6 format: magic, protocol, sys_info, object, keys, data."""
  if _Unpickler(f, _reject_storage).load() != _MAGIC:
    raise _Problem('not a PyTorch checkpoint: expected the legacy magic '
                   'number as first pickle')
  protocol = _Unpickler(f, _reject_storage).load()
  if protocol != 1001:
    raise _Problem(f'expected legacy protocol 1001, got {protocol!r}')
  sys_info = _Unpickler(f, _reject_storage).load()
  little = not isinstance(sys_info, Mapping) or bool(
      sys_info.get('little_endian', True))
  start, seen = f.tell(), {}
  file_size = os.fstat(f.fileno()).st_size
  _Unpickler(f, lambda pid: seen.setdefault(pid[2], pid), scan=True).load()
  keys = _Unpickler(f, _reject_storage).load()
  if not isinstance(keys, list):
    raise _Problem(f'expected the list of storage keys, got {type(keys)!r}')
  storages = {}
  for key in keys:
    if key not in seen:
      raise _Problem(f'storage key {key!r} is not used by the pickled object')
    stype, numel = seen[key][1], seen[key][4]
    head = f.read(8)
    count = int.from_bytes(head, 'little' if little else 'big', signed=True)
    if len(head) < 8 or count != numel:
      raise _Problem(f'storage {key!r}: expected an int64 element count of '
                     f'{numel}, got {head!r} (truncated file?)')
    nbytes = numel * stype.dtype.itemsize
    data = f.read(min(nbytes, max(0, file_size - f.tell())))
    if len(data) < nbytes:
      raise _Problem(f'storage {key!r}: expected {nbytes} bytes, the file '
                     f'ends after {len(data)} (truncated file?)')
    storages[key] = _Storage(np.frombuffer(data, np.uint8), stype.dtype,
                             not little)

  def load_storage(pid):
    if pid[2] not in storages:
      raise _Problem(f'missing data for storage {pid[2]!r}')
    root, view = storages[pid[2]], (pid[5] if len(pid) == 6 else None)
    if view is None:
      return root
    size = root.dtype.itemsize
    if not (isinstance(view, tuple) and len(view) == 3
            and all(isinstance(v, int) and v >= 0 for v in view[1:])
            and (view[1] + view[2]) * size <= root.raw.size):
      raise _Problem(f'invalid storage view {view!r} of storage {pid[2]!r}')
    return _Storage(root.raw[view[1] * size:(view[1] + view[2]) * size],
                    root.dtype, root.big_endian)

  f.seek(start)
  return _Unpickler(f, load_storage).load()


def load_torch_file(path: str | os.PathLike) -> object:
  """Loads a `torch.save` file without torch.

  Args:
    path: str or os.PathLike of a zip-format (torch >= 1.6) or legacy file.

  Returns:
    The unpickled object tree: dicts / OrderedDicts (with any `_metadata`
    attribute), lists, tuples, scalars and strings; every tensor is a
    C-contiguous numpy array with the tensor's shape and dtype (float16 stays
    float16, bfloat16 / float8 are ml_dtypes types). Globals outside the
    allow-list are `Unresolved` placeholder classes; torch dtypes are numpy
    dtypes, torch.Size a tuple, torch.device a string such as 'cuda:0'.

  Raises:
    CheckpointFormatError: naming `path` and what was expected.
  """
  path = os.fspath(path)
  try:
    with open(path, 'rb') as f:
      head = f.read(4)
      f.seek(0)
      if head == b'PK\x03\x04':
        try:
          zf = zipfile.ZipFile(f)
        except zipfile.BadZipFile as e:
          raise _Problem(f'truncated or corrupt zip archive ({e}); expected '
                         'a torch >= 1.6 zip checkpoint') from None
        with zf:
          return _load_zip(zf)
      if not head.startswith(b'\x80'):
        raise _Problem('not a PyTorch checkpoint: expected a zip archive '
                       '(torch >= 1.6) or a legacy pickle stream')
      return _load_legacy(f)
  except _Problem as e:
    raise CheckpointFormatError(f'{path}: {e}') from None
  except OSError as e:
    raise CheckpointFormatError(
        f'{path}: cannot read the checkpoint file ({e.strerror or e})') from e
  except (EOFError, pickle.UnpicklingError) as e:
    raise CheckpointFormatError(
        f'{path}: truncated or corrupt pickle data ({e}); expected a complete '
        'torch.save file') from e
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointFormatError(
        f'{path}: not a readable torch checkpoint (expected a zip or legacy '
        f'torch.save file; {type(e).__name__}: {e})') from e


def _is_state_dict(obj):
  return isinstance(obj, Mapping) and all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Returns the model state dict of a checkpoint as {name: np.ndarray}.

  Args:
    path: a Lightning checkpoint or `{'state_dict': ...}` file (its
      'state_dict' entry is returned), or a bare state dict file (a non-empty
      mapping of str -> tensor).

  Returns:
    dict[str, np.ndarray] in file order, dtypes as stored (e.g. float16).

  Raises:
    CheckpointFormatError: naming `path` and the top-level keys found when
      nothing looks like a state dict.
  """
  obj = load_torch_file(path)
  if isinstance(obj, Mapping) and 'state_dict' in obj:
    if _is_state_dict(obj['state_dict']):
      return dict(obj['state_dict'])
  elif isinstance(obj, Mapping) and obj and _is_state_dict(obj):
    return dict(obj)
  found = (f'top-level keys {list(obj)[:30]!r}' if isinstance(obj, Mapping)
           else f'top-level object of type {type(obj).__name__}')
  raise CheckpointFormatError(
      f"{os.fspath(path)}: no state dict found: expected a 'state_dict' entry "
      f'mapping str -> tensor, or a bare mapping of str -> tensor; {found}')
