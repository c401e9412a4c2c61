"""Importing features made elsewhere: .npy folders and SLRT's gzip pickles, into stage shards."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cslr_pipe.features.imported import (FeatureFileError, RestrictedUnpickler, UnsafePickleError,
                                         read_feature_dir, read_slrt_features, slrt_name_to_id)
from cslr_pipe.features.store import load_records, open_cache
from cslr_pipe.pipeline.imports import import_features
from cslr_pipe.features.manifest import ManifestRow
from cslr_pipe.pipeline.runner import CacheConflict, plan_shards

STAGE = "features.rgb"


def make_rows(n: int = 7) -> list[ManifestRow]:
    return [ManifestRow(id=f"vid-{i}", split=("train", "dev", "test")[i % 3],
                        video=f"frames/vid-{i}", glosses=("A", "B")[: 1 + i % 2]) for i in range(n)]


def make_features(rows, dim: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {row.id: rng.normal(0, 3, (5 + 2 * k, dim)).astype(np.float32) for k, row in enumerate(rows)}


def write_slrt(path: Path, entries: list[dict], protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    with gzip.open(path, "wb") as handle:
        pickle.dump(entries, handle, protocol=protocol)
    return path


def slrt_entries(features: dict[str, np.ndarray], as_tensor: bool) -> list[dict]:
    """Entries as SLRT's extract_feature.py writes them: split-prefixed names, CPU tensors."""
    return [{"name": f"train/{video_id}", "gloss": "A B", "text": "a b", "num_frames": len(array),
             "sign": torch.from_numpy(array) if as_tensor else array}
            for video_id, array in features.items()]


def assert_imported(cache_root: Path, features: dict[str, np.ndarray], ids) -> None:
    cache = open_cache(cache_root)
    for video_id in ids:
        stored = cache.read(video_id, [STAGE])[STAGE]
        expected = features[video_id].astype(np.float16).astype(np.float32)
        assert stored.dtype == np.float32 and stored.shape == features[video_id].shape
        np.testing.assert_array_equal(stored, expected)
        np.testing.assert_allclose(stored, features[video_id], rtol=1e-3, atol=1e-3)
    cache.close()


# ------------------------------------------------------------------------------------ readers


def test_read_feature_dir_in_id_order(tmp_path):
    for name in ("b", "a", "c"):
        np.save(tmp_path / f"{name}.npy", np.full((2, 3), ord(name), np.float32))
    (tmp_path / "notes.txt").write_text("not a feature")
    got = list(read_feature_dir(tmp_path))
    assert [video_id for video_id, _ in got] == ["a", "b", "c"]
    assert got[1][1][0, 0] == ord("b")


def test_read_feature_dir_bad_file(tmp_path):
    np.save(tmp_path / "good.npy", np.zeros((2, 3), np.float32))
    (tmp_path / "broken.npy").write_bytes(b"not numpy at all")
    with pytest.raises(FeatureFileError, match="broken.npy"):
        list(read_feature_dir(tmp_path))
    errors: dict[str, str] = {}
    assert [i for i, _ in read_feature_dir(tmp_path, errors)] == ["good"]
    assert list(errors) == ["broken"]


def test_npy_object_arrays_are_not_unpickled(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(FeatureFileError, match="obj.npy"):
        list(read_feature_dir(tmp_path))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_read_slrt_features(tmp_path, protocol, as_tensor):
    features = make_features(make_rows(3))
    features["vid-1"] = features["vid-1"].astype(np.float16)  # half tensors / arrays too
    path = write_slrt(tmp_path / "train.pkl", slrt_entries(features, as_tensor), protocol)
    got = dict(read_slrt_features(path))
    assert list(got) == list(features)
    for video_id, array in got.items():
        assert isinstance(array, np.ndarray) and array.dtype == features[video_id].dtype
        np.testing.assert_array_equal(array, features[video_id])


def test_read_slrt_plain_pickle_and_non_contiguous_tensor(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    path = tmp_path / "dev.pkl"
    path.write_bytes(pickle.dumps([{"name": "dev/x", "sign": base[:, ::2]}]))  # a strided view
    (video_id, array), = read_slrt_features(path)
    assert video_id == "x"
    np.testing.assert_array_equal(array, base[:, ::2].numpy())


def test_slrt_name_to_id():
    assert slrt_name_to_id("train/01April_2010_Thursday_heute-6694") == "01April_2010_Thursday_heute-6694"
    assert slrt_name_to_id("dev/a") == "a" and slrt_name_to_id("test/b") == "b"
    assert slrt_name_to_id("S000007_P0003_T00") == "S000007_P0003_T00"


# ------------------------------------------------------------------------------------ security


class _System:
    """Pickles as os.system(command): what a malicious feature file would do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _StorageBytes:
    """Pickles as torch.storage._load_from_bytes(payload): the nested unpickler of tensors."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def __reduce__(self):
        import torch.storage

        return (torch.storage._load_from_bytes, (self.payload,))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = write_slrt(tmp_path / "evil.pkl",
                      [{"name": "train/vid-0", "sign": _System(f"touch {marker}")}])
    with pytest.raises(UnsafePickleError, match=r"refused to load posix\.system|refused to load os\.system"):
        list(read_slrt_features(path))
    assert not marker.exists()
    out = tmp_path / "cache"
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        import_features(make_rows(3), path, out, stream="rgb", shard_size=2)
    assert not marker.exists()
    assert not (out / STAGE).exists() or not load_records(out / STAGE)


def test_malicious_payload_inside_tensor_storage_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_System(f"touch {marker}"), protocol=2)
    path = write_slrt(tmp_path / "evil.pkl", [{"name": "x", "sign": _StorageBytes(inner)}])
    with pytest.raises(UnsafePickleError, match="weights_only=True"):
        list(read_slrt_features(path))
    assert not marker.exists()


def test_only_array_globals_are_allowed():
    for module, name in [("builtins", "eval"), ("builtins", "getattr"), ("subprocess", "Popen"),
                         ("numpy", "load"), ("torch", "load"), ("collections", "namedtuple")]:
        data = pickle.dumps(None)
        with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
            RestrictedUnpickler(__import__("io").BytesIO(data)).find_class(module, name)


def test_object_arrays_in_pickles_are_refused(tmp_path):
    path = write_slrt(tmp_path / "obj.pkl", [{"name": "x", "sign": np.array([1.0, "a"], dtype=object)}])
    with pytest.raises(UnsafePickleError, match="object arrays"):
        list(read_slrt_features(path))


def test_not_a_feature_file(tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(FeatureFileError, match="junk.pkl"):
        list(read_slrt_features(path))
    path = write_slrt(tmp_path / "wrong.pkl", [{"video": "x"}])
    with pytest.raises(FeatureFileError, match="entry 0"):
        list(read_slrt_features(path))


# ------------------------------------------------------------------------------------ import


def test_import_npy_dir_round_trip(tmp_path):
    rows = make_rows(7)
    features = make_features(rows)
    folder = tmp_path / "npy"
    folder.mkdir()
    for video_id, array in features.items():
        np.save(folder / f"{video_id}.npy", array)
    out = tmp_path / "cache"
    result = import_features(rows, folder, out, stream="rgb", shard_size=3)
    count, failures = result
    assert (count, failures, result.unmatched) == (7, {}, [])
    assert_imported(out, features, features)

    records = load_records(out / STAGE)
    assert [r.planned for r in records.values()] == [[r.id for r in s] for s in plan_shards(rows, 3)]
    provenance = records[0].provenance
    assert (provenance.stage, provenance.backend, provenance.weights_sha256) == (STAGE, "imported", "none")
    assert provenance.config["source"] == "npy" and provenance.config["stream"] == "rgb"
    index = json.loads((out / STAGE / "index.json").read_text())
    assert index["completed"] == sorted(features)
    cache = open_cache(out)
    assert cache.attrs("vid-3", STAGE)["dim"] == 16
    with h5_file(out / STAGE / "shard-00000.h5") as handle:
        assert handle["vid-0"][STAGE].dtype == np.float16


def h5_file(path):
    import h5py

    return h5py.File(path, "r")


@pytest.mark.parametrize("as_tensor", [False, True])
def test_import_slrt_round_trip(tmp_path, as_tensor):
    rows = make_rows(5)
    features = make_features(rows, dim=32, seed=1)
    extra = {"not-in-manifest": np.ones((3, 32), np.float32)}
    path = write_slrt(tmp_path / "train.pkl", slrt_entries({**features, **extra}, as_tensor))
    out = tmp_path / "cache"
    result = import_features(rows, path, out, stream="rgb", shard_size=2)
    assert result.imported == 5 and result.failures == {}
    assert result.unmatched == ["not-in-manifest"]
    assert_imported(out, features, features)
    assert "not-in-manifest" not in open_cache(out)


def test_missing_and_bad_features_fail_alone(tmp_path):
    rows = make_rows(8)
    features = make_features(rows)
    folder = tmp_path / "npy"
    folder.mkdir()
    bad = {
        "vid-1": np.zeros((4, 3, 2), np.float32),  # not 2-D
        "vid-2": np.where(np.arange(12).reshape(4, 3) == 5, np.nan, 1.0).astype(np.float32),
        "vid-3": np.full((4, 3), 1e6, np.float32),  # overflows float16
        "vid-4": np.zeros((0, 16), np.float32),  # empty
    }
    for video_id, array in {**features, **bad}.items():
        if video_id != "vid-5":  # missing
            np.save(folder / f"{video_id}.npy", array)
    (folder / "vid-6.npy").write_bytes(b"corrupt")
    count, failures = import_features(rows, folder, tmp_path / "cache", stream="rgb", shard_size=3)
    assert count == 2 and sorted(failures) == ["vid-1", "vid-2", "vid-3", "vid-4", "vid-5", "vid-6"]
    assert "2-D" in failures["vid-1"] and "NaN" in failures["vid-2"]
    assert "float16 range" in failures["vid-3"] and "empty" in failures["vid-4"]
    assert "no features for vid-5" in failures["vid-5"] and "vid-6.npy" in failures["vid-6"]
    assert all("\n" not in reason for reason in failures.values())
    assert_imported(tmp_path / "cache", features, ["vid-0", "vid-7"])
    cache = open_cache(tmp_path / "cache")
    assert cache.ids(STAGE) == ["vid-0", "vid-7"]
    assert cache.failed(STAGE) == failures


def test_duplicate_names_fail(tmp_path):
    rows = make_rows(2)
    features = make_features(rows)
    entries = slrt_entries(features, as_tensor=False)
    entries.append({"name": "dev/vid-0", "sign": features["vid-0"]})
    path = write_slrt(tmp_path / "all.pkl", entries)
    count, failures = import_features(rows, path, tmp_path / "cache", stream="rgb")
    assert count == 1 and "2 entries" in failures["vid-0"]


def test_reimport_conflicts_unless_forced(tmp_path):
    rows = make_rows(4)
    features = make_features(rows)
    first = write_slrt(tmp_path / "a.pkl", slrt_entries(features, as_tensor=True))
    out = tmp_path / "cache"
    assert import_features(rows, first, out, stream="rgb", shard_size=2)[0] == 4
    assert import_features(rows, first, out, stream="rgb", shard_size=2)[0] == 4  # same: rewrites
    other_features = make_features(rows, seed=7)
    other = write_slrt(tmp_path / "b.pkl", slrt_entries(other_features, as_tensor=True))
    with pytest.raises(CacheConflict, match="config.source"):
        import_features(rows, other, out, stream="rgb", shard_size=2)
    with pytest.raises(CacheConflict, match="shard-size"):
        import_features(rows, first, out, stream="rgb", shard_size=3)
    assert_imported(out, features, features)  # nothing was overwritten
    assert import_features(rows, other, out, stream="rgb", shard_size=2, force=True)[0] == 4
    assert_imported(out, other_features, other_features)


def test_bad_arguments(tmp_path):
    rows = make_rows(2)
    with pytest.raises(FeatureFileError, match="no such"):
        import_features(rows, tmp_path / "nothing", tmp_path / "cache", stream="rgb")
    with pytest.raises(ValueError, match="stream"):
        import_features(rows, tmp_path, tmp_path / "cache", stream="../x")
    with pytest.raises(ValueError, match="dtype"):
        import_features(rows, tmp_path, tmp_path / "cache", stream="rgb", dtype=np.int8)
