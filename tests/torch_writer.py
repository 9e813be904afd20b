"""A torch-free writer of torch checkpoint files, for tests: a protocol-2 pickle assembler
(no torch, no importable globals needed) and `save_state_dict`, which writes a dict of
numpy arrays in torch.save's zip format, as `torch.load` reads it."""

import struct
import zipfile

import numpy as np

class G:
  """A GLOBAL opcode naming `module.name`."""

  def __init__(self, module, name):
    self.module, self.name = module, name


class Call:
  """REDUCE: func(*args)."""

  def __init__(self, func, *args):
    self.func, self.args = func, args


class NewObj:
  """NEWOBJ: cls.__new__(cls, *args)."""

  def __init__(self, cls, *args):
    self.cls, self.args = cls, args


class Build:
  """BUILD: obj.__setstate__(state) (or __dict__ update)."""

  def __init__(self, obj, state):
    self.obj, self.state = obj, state


class Fill:
  """APPENDS `items` and SETITEMS `pairs` onto `obj`."""

  def __init__(self, obj, items=(), pairs=()):
    self.obj, self.items, self.pairs = obj, items, pairs


class Raw:
  """Opcodes inserted verbatim."""

  def __init__(self, data):
    self.data = data


class Pid:
  """BINPERSID of a tuple of fields."""

  def __init__(self, *fields):
    self.fields = fields


def _enc(x):
  """Encodes `x` as protocol-2 pickle opcodes (bytes)."""
  if x is None:
    return b'N'
  if isinstance(x, bool):
    return b'\x88' if x else b'\x89'
  if isinstance(x, int):
    if -2**31 <= x < 2**31:
      return b'J' + struct.pack('<i', x)
    raw = x.to_bytes((x.bit_length() + 8) // 8, 'little', signed=True)
    return b'\x8a' + bytes([len(raw)]) + raw
  if isinstance(x, float):
    return b'G' + struct.pack('>d', x)
  if isinstance(x, str):
    raw = x.encode()
    return b'X' + struct.pack('<I', len(raw)) + raw
  if isinstance(x, tuple):
    return b'(' + b''.join(_enc(v) for v in x) + b't'
  if isinstance(x, list):
    return b'](' + b''.join(_enc(v) for v in x) + b'e'
  if isinstance(x, dict):
    return b'}(' + b''.join(_enc(k) + _enc(v) for k, v in x.items()) + b'u'
  if isinstance(x, G):
    return b'c' + f'{x.module}\n{x.name}\n'.encode()
  if isinstance(x, Call):
    return _enc(x.func) + _enc(tuple(x.args)) + b'R'
  if isinstance(x, NewObj):
    return _enc(x.cls) + _enc(tuple(x.args)) + b'\x81'
  if isinstance(x, Build):
    return _enc(x.obj) + _enc(x.state) + b'b'
  if isinstance(x, Pid):
    return _enc(tuple(x.fields)) + b'Q'
  if isinstance(x, Fill):
    out = _enc(x.obj)
    if x.items:
      out += b'(' + b''.join(_enc(v) for v in x.items) + b'e'
    if x.pairs:
      out += b'(' + b''.join(_enc(k) + _enc(v) for k, v in x.pairs) + b'u'
    return out
  if isinstance(x, Raw):
    return x.data
  raise TypeError(type(x))


def _dumps(x):
  return b'\x80\x02' + _enc(x) + b'.'


def _tensor(key, stype, numel, offset, size, stride, location='cpu'):
  """Pickle node of torch._utils._rebuild_tensor_v2 over storage `key`."""
  storage = Pid('storage', G('torch', stype), key, location, numel)
  return Call(G('torch._utils', '_rebuild_tensor_v2'), storage, offset,
              tuple(size), tuple(stride), False,
              Call(G('collections', 'OrderedDict')))


def _write_zip(path, obj, records=None, root='any_root_name',
               byteorder='little'):
  """Writes a zip-format checkpoint holding `obj` and raw storage records."""
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr(f'{root}/data.pkl', _dumps(obj))
    z.writestr(f'{root}/byteorder', byteorder)
    z.writestr(f'{root}/version', '3\n')
    for key, raw in (records or {}).items():
      z.writestr(f'{root}/data/{key}', raw)
  return path


_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
            np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
            np.dtype(np.float16): "HalfStorage", np.dtype(np.uint8): "ByteStorage"}


def save_state_dict(path, arrays):
  """Writes {key: np.ndarray} as torch.save(OrderedDict of tensors) would (zip format,
  one contiguous storage per tensor)."""
  pairs, records = [], {}
  for i, (key, value) in enumerate(arrays.items()):
    a = np.ascontiguousarray(value)
    strides = tuple(s // a.itemsize for s in a.strides)
    pairs.append((key, _tensor(str(i), _STORAGE[a.dtype], a.size, 0, a.shape, strides)))
    records[str(i)] = a.astype(a.dtype.newbyteorder("<")).tobytes()
  obj = Fill(Call(G("collections", "OrderedDict")), pairs=pairs)
  return _write_zip(path, obj, records, root="archive")
