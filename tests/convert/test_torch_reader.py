"""Tests for vqgan_jax.convert.torch_reader (torch-free checkpoint reading).

Reference data: tests/fixtures/taming_tiny (Lightning checkpoints written by
real torch 2.13, zip and legacy format) and tests/fixtures/torch_files (small
files plus the values torch itself reported, made by make_torch_files.py).
Hostile and malformed files are written here with hand-assembled pickle
opcodes, so that no torch is needed.
"""

import os
import pathlib
import pickle
import shutil
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from torch_writer import (G, Build, Call, Fill, NewObj, Pid, Raw, _dumps, _enc,  # noqa: F401
                          _tensor, _write_zip)
from vqgan_jax.convert import torch_reader as tr

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'fixtures'
TAMING = FIXTURES / 'taming_tiny'
TORCH_FILES = FIXTURES / 'torch_files'
MAGIC = 0x1950a86a20f9469cfc6c


@pytest.fixture(scope='module')
def loaded():
  """Memoized load_torch_file over the fixture files."""
  cache = {}

  def load(path):
    if path not in cache:
      cache[path] = tr.load_torch_file(path)
    return cache[path]

  return load


def _write_legacy(path, obj, storages):
  """Writes a legacy-format file; storages: [(key, numel, raw bytes)]."""
  with open(path, 'wb') as f:
    for header in (MAGIC, 1001, {'protocol_version': 1001,
                                 'little_endian': True,
                                 'type_sizes': {'short': 2, 'int': 4,
                                                'long': 8}}):
      pickle.dump(header, f, protocol=2)
    f.write(_dumps(obj))
    pickle.dump([k for k, _, _ in storages], f, protocol=2)
    for _, numel, raw in storages:
      f.write(struct.pack('<q', numel) + raw)
  return path


def _assert_same_tree(a, b, where='root'):
  """Deep equality of two loaded trees (arrays by dtype, shape and bits)."""
  if isinstance(a, np.ndarray):
    assert isinstance(b, np.ndarray), where
    assert (a.dtype, a.shape) == (b.dtype, b.shape), where
    assert a.tobytes() == b.tobytes(), where
  elif isinstance(a, dict):
    assert type(a) is type(b) and list(a) == list(b), where
    for k in a:
      _assert_same_tree(a[k], b[k], f'{where}/{k}')
  elif isinstance(a, (list, tuple)):
    assert type(a) is type(b) and len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      _assert_same_tree(x, y, f'{where}/{i}')
  else:
    assert a == b and type(a) is type(b), where


# --- the taming_tiny Lightning checkpoints ---


@pytest.mark.parametrize('stem', ['vqgan_tiny', 'n2n_class_tiny'])
def test_zip_and_legacy_give_identical_trees(loaded, stem):
  zipped = loaded(TAMING / f'{stem}.ckpt')
  legacy = loaded(TAMING / f'{stem}_legacy.ckpt')
  _assert_same_tree(zipped, legacy)
  assert zipped['state_dict']._metadata == legacy['state_dict']._metadata


# (stem, global_step, best score, best path, params per group, states, keys,
# state_dict prefixes): the README table.
_TABLE = [
    ('vqgan_tiny', 1, np.float32(0.5386000275611877),
     'logs/2020-12-01T00-00-00_vqgan_tiny/checkpoints/epoch=000000.ckpt',
     [[179], [10]], [0, 0], 195,
     ['decoder', 'encoder', 'loss', 'post_quant_conv', 'quant_conv',
      'quantize']),
    ('gumbel_tiny', 1, 0, '', [[181], [10]], [0, 0], 197,
     ['decoder', 'encoder', 'loss', 'post_quant_conv', 'quant_conv',
      'quantize']),
    ('n2n_class_tiny', 3, 0,
     'logs/2020-12-01T00-00-00_n2n_class_tiny/checkpoints/last.ckpt',
     [[13, 24]], [37], 218, ['first_stage_model', 'transformer']),
    ('n2n_depth_tiny', 1, 0, '', [[13, 24]], [0], 373,
     ['cond_stage_model', 'first_stage_model', 'transformer']),
]


@pytest.mark.parametrize('row', _TABLE, ids=[r[0] for r in _TABLE])
def test_lightning_checkpoint_structure(loaded, row):
  stem, step, score, best_path, params, states, n_keys, prefixes = row
  ck = loaded(TAMING / f'{stem}.ckpt')
  assert list(ck) == ['epoch', 'global_step', 'pytorch-lightning_version',
                      'callbacks', 'optimizer_states', 'lr_schedulers',
                      'state_dict']
  assert (ck['epoch'], ck['global_step']) == (1, step)
  assert ck['pytorch-lightning_version'] == '1.0.8'
  assert ck['lr_schedulers'] == []
  (cb_key, cb), = ck['callbacks'].items()
  assert cb['best_model_path'] == best_path
  if isinstance(score, np.float32):
    assert cb['best_model_score'].dtype == np.float32
    assert cb['best_model_score'].shape == ()
  assert cb['best_model_score'] == score
  opt = ck['optimizer_states']
  assert [[len(g['params']) for g in o['param_groups']] for o in opt] == params
  assert [len(o['state']) for o in opt] == states
  sd = ck['state_dict']
  assert len(sd) == n_keys
  assert sorted({k.split('.')[0] for k in sd}) == prefixes
  assert isinstance(sd._metadata, dict) and sd._metadata['']['version'] == 1


def test_callbacks_key_is_unresolved_placeholder(loaded):
  key, = loaded(TAMING / 'vqgan_tiny.ckpt')['callbacks']
  assert isinstance(key, type) and issubclass(key, tr.Unresolved)
  assert key.module == 'pytorch_lightning.callbacks.model_checkpoint'
  assert key.name == 'ModelCheckpoint'
  legacy_key, = loaded(TAMING / 'vqgan_tiny_legacy.ckpt')['callbacks']
  assert legacy_key == key and hash(legacy_key) == hash(key)
  assert {key: 1}[legacy_key] == 1


def test_codebook_matches_npz():
  sd = tr.read_state_dict(TAMING / 'vqgan_tiny.ckpt')
  codebook = np.load(TAMING / 'vqgan_tiny.npz')['codebook']
  assert sd['quantize.embedding.weight'].dtype == np.float16
  np.testing.assert_array_equal(
      sd['quantize.embedding.weight'].astype(np.float32), codebook)


def test_stored_dtypes_preserved():
  sd = tr.read_state_dict(TAMING / 'vqgan_tiny_legacy.ckpt')
  assert type(sd) is dict and len(sd) == 195
  assert sd['encoder.conv_in.weight'].dtype == np.float16
  assert sd['encoder.conv_in.weight'].shape == (32, 3, 3, 3)
  bn = 'loss.discriminator.main.3.'
  assert sd[bn + 'weight'].dtype == np.float16
  assert sd[bn + 'running_mean'].dtype == np.float32
  assert sd[bn + 'running_var'].dtype == np.float32
  assert sd[bn + 'num_batches_tracked'].dtype == np.int64
  assert sd[bn + 'num_batches_tracked'].shape == ()
  assert all(v.flags['C_CONTIGUOUS'] and v.flags['WRITEABLE']
             for v in sd.values())


def test_optimizer_state_populated(loaded):
  opt, = loaded(TAMING / 'n2n_class_tiny.ckpt')['optimizer_states']
  assert sorted(opt['state']) == list(range(37))
  assert sorted(sum((g['params'] for g in opt['param_groups']), [])) == list(
      range(37))
  for st in opt['state'].values():
    assert set(st) == {'step', 'exp_avg', 'exp_avg_sq'}
    assert st['step'].dtype == np.float32 and st['step'].shape == ()
    assert st['step'] == 2.0
    assert st['exp_avg'].shape == st['exp_avg_sq'].shape
    assert st['exp_avg'].dtype == np.float32
    assert np.all(st['exp_avg_sq'] >= 0) and np.any(st['exp_avg_sq'] > 0)
  group = opt['param_groups'][0]
  assert group['betas'] == (0.9, 0.95) and group['weight_decay'] == 0.01


# --- files written by real torch 2.13 (tests/fixtures/torch_files) ---

_EXPECTED = np.load(TORCH_FILES / 'expected.npz')
_SPECIAL = {'bf16': ml_dtypes.bfloat16, 'f8e4m3': ml_dtypes.float8_e4m3fn,
            'f8e5m2': ml_dtypes.float8_e5m2}


def _lookup(tree, stem, name):
  """The array of expected key `<stem>__<name>` inside a loaded file."""
  if stem in ('parameter', 'parameter_state'):
    return tree
  if stem == 'wrapped_state_dict':
    return tree['state_dict'][name]
  if stem == 'misc' and name[:-1] in ('list', 'tuple'):
    return tree[name[:-1]][int(name[-1])]
  return tree[name]


@pytest.mark.parametrize('key', sorted(_EXPECTED.files))
def test_values_match_torch(loaded, key):
  stem, name = key.split('__')
  got = _lookup(loaded(TORCH_FILES / f'{stem}.pt'), stem, name)
  want = _EXPECTED[key]
  plain = name.split('_', 1)[1] if stem == 'legacy' else name
  assert isinstance(got, np.ndarray) and got.flags['C_CONTIGUOUS']
  assert got.dtype == np.dtype(_SPECIAL.get(plain, want.dtype))
  assert got.shape == want.shape
  np.testing.assert_array_equal(got.astype(want.dtype), want)


def test_torch_files_cover_the_formats():
  with zipfile.ZipFile(TORCH_FILES / 'views.pt') as z:
    records = [n for n in z.namelist() if '/data/' in n]
  # 11 tensors over 3 storages: base and its views, `other`, the expand.
  assert len(records) == 3 and all(n.startswith('views/') for n in records)
  with zipfile.ZipFile(TORCH_FILES / 'cuda_location.pt') as z:
    assert b'cuda:0' in z.read('cuda_location/data.pkl')
  assert not zipfile.is_zipfile(TORCH_FILES / 'legacy.pt')
  assert (TORCH_FILES / 'legacy.pt').read_bytes()[:2] == b'\x80\x02'
  total = sum(p.stat().st_size for p in TORCH_FILES.iterdir())
  assert total < 200_000


def test_misc_objects(loaded):
  misc = loaded(TORCH_FILES / 'misc.pt')
  assert misc['size'] == (2, 3) and type(misc['size']) is tuple
  assert misc['device'] == 'cuda:1'
  assert misc['dtype'] == np.float16
  assert misc['bytes'] == b'\x00ab'
  assert misc['set'] == {1, 2, 3} and misc['frozenset'] == frozenset({'a'})
  assert misc['complex'] == 1 + 2j and misc['slice'] == slice(1, 5, 2)
  assert (misc['int'], misc['float'], misc['str'], misc['none']) == (
      3, 1.5, 'text', None)


def test_read_state_dict_variants():
  bare = tr.read_state_dict(TORCH_FILES / 'bare_state_dict.pt')
  wrapped = tr.read_state_dict(TORCH_FILES / 'wrapped_state_dict.pt')
  _assert_same_tree(bare, wrapped)
  assert list(bare) == ['0.weight', '0.bias', '1.weight', '1.bias',
                        '1.running_mean', '1.running_var',
                        '1.num_batches_tracked', '3.weight', '3.bias']
  assert bare['1.num_batches_tracked'] == 7
  cuda = tr.read_state_dict(TORCH_FILES / 'cuda_location.pt')
  assert cuda['w'].dtype == np.float16 and cuda['b'].dtype == np.int64


def test_read_state_dict_errors_list_top_level_keys():
  path = str(TORCH_FILES / 'misc.pt')
  with pytest.raises(tr.CheckpointFormatError) as e:
    tr.read_state_dict(path)
  assert path in str(e.value) and "'subclass'" in str(e.value)
  with pytest.raises(tr.CheckpointFormatError, match='ndarray'):
    tr.read_state_dict(TORCH_FILES / 'parameter.pt')


# --- hand-made files: security, validation, byte order, legacy views ---


def test_malicious_globals_never_run(tmp_path):
  markers = [tmp_path / f'marker{i}' for i in range(5)]
  obj = {
      'system': Call(G('os', 'system'), f'touch {markers[0]}'),
      'posix': Call(G('posix', 'system'), f'touch {markers[1]}'),
      'eval': Call(G('builtins', 'eval'), f"open({str(markers[2])!r}, 'w')"),
      'exec': Call(G('__builtin__', 'exec'),
                   f"open({str(markers[3])!r}, 'w').close()"),
      'popen': Call(G('subprocess', 'Popen'), ['touch', str(markers[4])]),
      'newobj': Build(NewObj(G('evil', 'Thing'), 1, 2), {'x': 3}),
      'class_build': Build(G('evil', 'Other'), {'y': 4}),
      'getattr': Call(G('builtins', 'getattr'), G('os', 'path'), 'join'),
      'filled': Fill(Call(G('evil', 'Container')), [1, 2], [('k', 'v')]),
  }
  path = _write_zip(tmp_path / 'evil.ckpt', obj)
  out = tr.load_torch_file(path)
  assert not any(m.exists() for m in markers)
  for key in ('system', 'posix', 'eval', 'exec', 'popen', 'getattr'):
    assert isinstance(out[key], tr.Unresolved), key
  assert type(out['system']).module == 'os'
  assert type(out['system']).name == 'system'
  assert out['system'].args == (f'touch {markers[0]}',)
  assert out['exec'].module == 'builtins'
  assert out['newobj'].args == (1, 2) and out['newobj'].state == {'x': 3}
  assert issubclass(out['class_build'], tr.Unresolved)
  assert out['class_build'].state == {'y': 4}
  assert out['filled'].list_items == [1, 2]
  assert out['filled'].dict_items == [('k', 'v')]


@pytest.mark.parametrize('obj,match', [
    (Build(G('collections', 'OrderedDict'), (None, {'x': 1})), 'BUILD on'),
    (Build(G('torch', 'float16'), (3, '>', None)), 'BUILD on'),
    (Build(Call(G('torch._utils', '_rebuild_tensor_v2'),
                Pid('storage', G('torch', 'FloatStorage'), '0', 'cpu', 2), 0,
                (2,), (1,), False, None), (1, (2,), None, False, '')),
     'BUILD on'),
    (Build(G('torch._utils', '_rebuild_tensor_v2'), (None, {'a': 1})),
     'BUILD on'),
    (Raw(b'\x82\x01'), 'extension'),
    (Pid('module', G('x', 'y'), 'f.py'), 'persistent id'),
    (Pid('storage', G('os', 'system'), '0', 'cpu', 2), 'persistent id'),
])
def test_disallowed_pickle_operations(tmp_path, obj, match):
  path = _write_zip(tmp_path / 'op.pt', {'x': obj},
                    {'0': np.zeros(2, np.float32).tobytes()})
  with pytest.raises(tr.CheckpointFormatError, match=match) as e:
    tr.load_torch_file(path)
  assert str(path) in str(e.value)


def test_disallowed_function_in_rebuild_from_type(tmp_path):
  obj = Call(G('torch._tensor', '_rebuild_from_type_v2'), G('os', 'system'),
             G('torch', 'Tensor'), ('echo hi',), {})
  with pytest.raises(tr.CheckpointFormatError, match='disallowed'):
    tr.load_torch_file(_write_zip(tmp_path / 'x.pt', obj))


def test_big_endian_zip_and_any_root(tmp_path):
  f32 = (np.arange(6) - 2.5).astype('>f4')
  i64 = np.array([1, -2, 2**40], dtype='>i8')
  c64 = np.array([1 + 2j, -3j], dtype='>c8')
  obj = {'a': _tensor('0', 'FloatStorage', 6, 0, (3, 2), (1, 3)),
         'b': _tensor('1', 'LongStorage', 3, 1, (2,), (1,)),
         'c': _tensor('2', 'ComplexFloatStorage', 2, 0, (2,), (1,),
                      location='cuda:3')}
  records = {'0': f32.tobytes(), '1': i64.tobytes(), '2': c64.tobytes()}
  out = tr.load_torch_file(_write_zip(tmp_path / 'be.pt', obj, records,
                                      root='be', byteorder='big'))
  np.testing.assert_array_equal(out['a'], f32.reshape(2, 3).T)
  np.testing.assert_array_equal(out['b'], i64[1:])
  np.testing.assert_array_equal(out['c'], c64)
  assert out['a'].dtype == np.float32 and out['a'].dtype.isnative
  assert f32.dtype.byteorder == '>'


@pytest.mark.parametrize('offset,size,stride', [
    (5, (2,), (1,)),            # runs past the end (numel 6)
    (0, (3, 3), (3, 1)),        # 9 elements from 6
    (0, (2, 2), (1, 5)),        # large stride
    (6, (), ()),                # 0-d just past the end
    (-1, (2,), (1,)),           # negative offset
    (0, (2,), (-1,)),           # negative stride
    (0, (2, 2), (1,)),          # rank mismatch
])
def test_out_of_range_geometry_is_rejected(tmp_path, offset, size, stride):
  obj = {'t': _tensor('0', 'FloatStorage', 6, offset, size, stride)}
  path = _write_zip(tmp_path / 'bad.pt', obj,
                    {'0': np.zeros(6, np.float32).tobytes()})
  with pytest.raises(tr.CheckpointFormatError) as e:
    tr.load_torch_file(path)
  assert str(path) in str(e.value)


def test_missing_and_short_records(tmp_path):
  obj = {'t': _tensor('0', 'HalfStorage', 4, 0, (4,), (1,))}
  missing = _write_zip(tmp_path / 'missing.pt', obj, {})
  with pytest.raises(tr.CheckpointFormatError, match='missing storage') as e:
    tr.load_torch_file(missing)
  assert str(missing) in str(e.value)
  short = _write_zip(tmp_path / 'short.pt', obj, {'0': b'\x00' * 6})
  with pytest.raises(tr.CheckpointFormatError, match='expected 8') as e:
    tr.load_torch_file(short)
  assert str(short) in str(e.value)


def test_legacy_storage_views(tmp_path):
  root = np.arange(10, dtype=np.int16)
  view = Pid('storage', G('torch', 'ShortStorage'), 'root', 'cuda:0', 10,
             ('view', 4, 5))
  whole = Pid('storage', G('torch', 'ShortStorage'), 'root', 'cpu', 10, None)
  rebuild = G('torch._utils', '_rebuild_tensor_v2')
  obj = [Call(rebuild, view, 1, (2, 2), (1, 2), False, None),
         Call(rebuild, whole, 0, (10,), (1,), False, None)]
  out = tr.load_torch_file(_write_legacy(tmp_path / 'v.pt', obj,
                                         [('root', 10, root.tobytes())]))
  np.testing.assert_array_equal(out[0], [[5, 7], [6, 8]])
  np.testing.assert_array_equal(out[1], root)
  bad = Call(rebuild, view, 4, (2,), (1,), False, None)  # view holds 5
  with pytest.raises(tr.CheckpointFormatError, match='reaches element 5'):
    tr.load_torch_file(_write_legacy(tmp_path / 'w.pt', bad,
                                     [('root', 10, root.tobytes())]))


@pytest.mark.parametrize('stem,fraction', [
    ('vqgan_tiny.ckpt', 0.5), ('vqgan_tiny_legacy.ckpt', 0.5),
    ('vqgan_tiny_legacy.ckpt', 0.01), ('n2n_class_tiny_legacy.ckpt', 0.999)])
def test_truncated_files(tmp_path, stem, fraction):
  data = (TAMING / stem).read_bytes()
  path = tmp_path / stem
  path.write_bytes(data[:int(len(data) * fraction)])
  with pytest.raises(tr.CheckpointFormatError) as e:
    tr.load_torch_file(path)
  assert str(path) in str(e.value)


def test_not_torch_files(tmp_path):
  garbage = tmp_path / 'garbage.ckpt'
  garbage.write_bytes(bytes(range(256)) * 4)
  plain = tmp_path / 'plain.pkl'
  plain.write_bytes(pickle.dumps({'a': 1}, protocol=2))
  empty = tmp_path / 'empty.ckpt'
  empty.write_bytes(b'')
  other_zip = tmp_path / 'other.zip'
  with zipfile.ZipFile(other_zip, 'w') as z:
    z.writestr('readme.txt', 'hello')
  for path, expected in [(garbage, 'not a PyTorch checkpoint'),
                         (plain, 'magic number'),
                         (empty, 'not a PyTorch checkpoint'),
                         (other_zip, 'data.pkl'),
                         (tmp_path / 'absent.ckpt', 'cannot read'),
                         (tmp_path, 'cannot read')]:
    with pytest.raises(tr.CheckpointFormatError) as e:
      tr.load_torch_file(path)
    assert str(path) in str(e.value) and expected in str(e.value), str(e.value)
  assert issubclass(tr.CheckpointFormatError, ValueError)


def test_fixture_copy_loads_from_another_directory(tmp_path):
  dst = tmp_path / 'copy' / 'model.ckpt'
  dst.parent.mkdir()
  shutil.copy(TAMING / 'vqgan_tiny_legacy.ckpt', dst)
  sd = tr.read_state_dict(os.fspath(dst))
  assert len(sd) == 195
