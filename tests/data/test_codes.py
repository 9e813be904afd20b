"""Code dataset directories: chunks -> TFDS shards + metadata, the reader, resume checks.

The extraction CLI (tests/test_extract_codes.py) fills these from real models; here the
chunks are written directly with made-up codes.
"""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vqgan_jax.data import arrays, codes

GRID, COND = (4, 5), (2, 2)


def _manifest(num_chunks, chunk_size=4, kind="vq", image_size=16, tfrecord=True):
  cond = ({"kind": "vq", "cond_type": "depth", "cond_grid": list(COND), "n_embed": 32,
           "vqgan": {"path": "/m/cond", "config": {}}} if kind == "vq" else
          {"kind": "class", "n_classes": 3, "class_names": ["a", "b", "c"]})
  return {"format_version": 1,
          "dataset": {"vqgan": {"path": "/m/vq", "which": "vqgan", "config": {"n_embed": 1024},
                                "fingerprint": "sha256:0"},
                      "n_embed": 1024, "code_grid": list(GRID), "image_size": image_size,
                      "conditioning": cond, "tfds": codes.tfds_fields(tfrecord)},
          "source": {"kind": "images", "path": "/data/x", "num_examples": num_chunks * chunk_size},
          "chunk_size": chunk_size, "num_chunks": num_chunks,
          "command": ["--vqgan", "/m/vq", "--out", "D", "--split", "train"]}


def _examples(n, seed=0):
  rng = np.random.default_rng(seed)
  return {"z": rng.integers(0, 1024, (n,) + GRID).astype(np.int32),
          "c": rng.integers(0, 32, (n,) + COND).astype(np.int32),
          "label": (np.arange(n) % 3).astype(np.int32), "index": np.arange(n, dtype=np.int64)}


def _write(directory, split, data, chunks, kind="vq", finalize=True, **kw):
  """Writes chunk k with the examples at positions chunks[k] (a list of source indices)."""
  assert not codes.begin_split(directory, split, _manifest(len(chunks), kind=kind, **kw))
  for k, positions in enumerate(chunks):
    sel = np.asarray(positions, np.int64)
    records = codes.serialize(data["z"][sel], sel, data["label"][sel] if kind == "class" else None,
                              data["c"][sel] if kind == "vq" else None)
    codes.write_chunk(directory, split, k, records, {"skipped": []})
  return codes.finalize_split(directory, split) if finalize else None


def test_chunks_become_a_tfds_dataset_read_back_in_order(tmp_path):
  d, data = str(tmp_path), _examples(12)
  # Chunk 1 lost everything (all skipped): no shard for it; position 6 was skipped too.
  entry = _write(d, "train", data, [[0, 1, 2, 3], [], [4, 5, 7], [8, 9, 10, 11]])
  _write(d, "validation", _examples(3, seed=1), [[0, 1, 2]])
  assert entry["shard_lengths"] == [4, 3, 4] and entry["num_examples"] == 11
  assert codes.list_splits(d) == ["train", "validation"]
  src = codes.open_code_dataset(d, "train")
  assert isinstance(src, arrays.ArraySource) and src.num_examples == 11
  assert src.spec == {"z": (GRID, np.int32), "c": (COND, np.int32)}
  keep = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
  got = src.read(np.arange(11))
  np.testing.assert_array_equal(got["z"], data["z"][keep])
  np.testing.assert_array_equal(got["c"], data["c"][keep])
  assert src.meta["split"] == "train" and src.meta["code_grid"] == list(GRID)
  batch = next(arrays.train_batches(src, global_batch_size=4, seed=5))  # the trainer's reader
  assert set(batch) == {"z", "c"} and batch["z"].shape == (4, *GRID)
  # TFDS: random access over the array_record shards, tf.data over the tfrecord copy.
  ds = tfds.builder_from_directory(d).as_data_source("train")
  assert len(ds) == 11 and [int(ds[i]["index"]) for i in range(11)] == keep
  np.testing.assert_array_equal(ds[6]["z"], data["z"][7])
  elements = list(tfds.as_numpy(tfds.builder_from_directory(d).as_dataset("validation")))
  np.testing.assert_array_equal([e["c"] for e in elements], _examples(3, seed=1)["c"])
  # The record bytes are TFDS's own serialization of the feature spec.
  features = codes.code_features(GRID, False, COND)
  assert codes.serialize(data["z"][:1], [0], None, data["c"][:1])[0] == \
      features.serialize_example({"z": data["z"][0], "index": 0, "c": data["c"][0]})


def test_class_labels_and_array_record_only(tmp_path):
  d, data = str(tmp_path), _examples(5)
  _write(d, "train", data, [[0, 1, 2], [3, 4]], kind="class", tfrecord=False)
  src = codes.open_code_dataset(d, "train")
  assert src.spec == {"z": (GRID, np.int32), "label": ((), np.int32)}
  np.testing.assert_array_equal(src.read(np.arange(5))["label"], data["label"])
  assert not [f for f in os.listdir(d) if ".tfrecord-" in f]
  assert len(tfds.builder_from_directory(d).as_data_source("train")) == 5
  meta = codes.read_meta(d)
  assert meta["conditioning"]["n_classes"] == 3 and meta["tfds"]["file_formats"] == ["array_record"]


def test_unfinished_split_says_how_to_finish(tmp_path):
  d, data = str(tmp_path), _examples(8)
  assert not codes.begin_split(d, "train", _manifest(2))
  codes.write_chunk(d, "train", 0, codes.serialize(data["z"][:4], np.arange(4), None,
                                                   data["c"][:4]), {"skipped": []})
  with pytest.raises(ValueError, match=r"'train' .* is incomplete: 1 of 2 chunks.*"
                                       r"python -m vqgan_jax.extract_codes --vqgan /m/vq"):
    codes.open_code_dataset(d, "train")
  with pytest.raises(FileNotFoundError, match=r"not a code dataset.*\['train'\] are not final"):
    codes.read_meta(d)
  assert codes.list_splits(d) == [] and codes.list_splits(d, include_incomplete=True) == ["train"]
  with pytest.raises(ValueError, match=r"chunks \[1\] of 2 are missing"):
    codes.finalize_split(d, "train")


def test_resume_checks_name_the_changed_fields(tmp_path):
  d = str(tmp_path)
  assert not codes.begin_split(d, "train", _manifest(2))
  # Same arguments (the command may differ: other process flags; the model may move).
  again = _manifest(2)
  again["command"] = ["other"]
  again["dataset"]["vqgan"]["path"] = "/moved/vq"
  assert not codes.begin_split(d, "train", again)
  with pytest.raises(ValueError, match=r"started with other arguments \(differing fields: "
                                       r"dataset.image_size: 16 -> 32\)"):
    codes.begin_split(d, "train", _manifest(2, image_size=32))
  changed = _manifest(2)
  changed["source"]["path"] = "/data/y"
  with pytest.raises(ValueError, match=r"source.path: \"/data/x\" -> \"/data/y\""):
    codes.begin_split(d, "train", changed)
  # Another split must share the dataset fields (model, size, conditioning).
  with pytest.raises(ValueError, match=r"split 'train' used other settings.*"
                                       r"dataset.conditioning.kind: \"vq\" -> \"class\""):
    codes.begin_split(d, "validation", _manifest(1, kind="class"))


def test_finalisation_killed_half_way_finishes_on_rerun(tmp_path, monkeypatch):
  d, data = str(tmp_path), _examples(8)
  _write(d, "train", data, [[0, 1, 2, 3], [4, 5, 6, 7]], finalize=False)

  def killed(*a, **k):
    raise KeyboardInterrupt
  with monkeypatch.context() as m:
    m.setattr(codes, "_tfds_info", killed)
    with pytest.raises(KeyboardInterrupt):  # shards renamed, metadata not yet written
      codes.finalize_split(d, "train")
  assert codes.list_splits(d) == []
  codes.finalize_split(d, "train")
  assert codes.begin_split(d, "train", _manifest(2))  # finalised: nothing left to do
  np.testing.assert_array_equal(codes.open_code_dataset(d, "train").read(np.arange(8))["z"],
                                data["z"])


def test_not_a_code_dataset_and_damaged_ones(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"not a code dataset.*extract_codes"):
    codes.read_meta(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no such code dataset directory"):
    codes.open_code_dataset(str(tmp_path / "nope"), "train")
  with pytest.raises(ValueError, match="split='a-b'"):
    codes.open_code_dataset(str(tmp_path), "a-b")
  d = str(tmp_path / "ds")
  _write(d, "train", _examples(4), [[0, 1], [2, 3]])
  with pytest.raises(FileNotFoundError, match=r"no split 'test' \(finalised splits: \['train'\]"):
    codes.open_code_dataset(d, "test")
  os.remove(codes.shard_path(d, "train", 1, 2))
  with pytest.raises(FileNotFoundError, match="missing shard 1 of 2"):
    codes.open_code_dataset(d, "train")
  path = os.path.join(d, codes.SIDECAR)
  with open(path) as f:
    meta = json.load(f)
  with open(path, "w") as f:
    json.dump(dict(meta, format_version=99), f)
  with pytest.raises(ValueError, match="format_version 99 is newer"):
    codes.read_meta(d)
