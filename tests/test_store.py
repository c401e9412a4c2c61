"""The HDF5 shard store: write, commit, read, index, encodings, and what is never trusted."""

from __future__ import annotations

import json
import multiprocessing
import pickle

import h5py
import numpy as np
import pytest

from cslr_pipe.features.codecs import quantize_linear
from cslr_pipe.features.store import CHUNK_BYTES, Provenance, ShardWriter, load_records, open_cache, write_index


def provenance(**config) -> Provenance:
    return Provenance("keypoints", "test-backend", config or {"sigma": 4})


def write_shard(stage_dir, shard, videos: dict[str, np.ndarray], failed=()):
    with ShardWriter(stage_dir, shard, [*videos, *failed], provenance()) as writer:
        for video_id, array in videos.items():
            writer.write(video_id, {"keypoints": array}, group_attrs={"height": 260})
        for video_id in failed:
            writer.fail(video_id, "broken\nvideo")
        return writer.commit()


def test_round_trip_index_and_provenance(tmp_path):
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(n, 133, 3)).astype(np.float32) for n in (5, 300, 1))
    write_shard(tmp_path / "keypoints", 0, {"a": a, "b": b}, failed=["x"])
    write_shard(tmp_path / "keypoints", 1, {"c": c})
    index = write_index(tmp_path / "keypoints")
    assert index["shards"] == {"a": "shard-00000.h5", "b": "shard-00000.h5", "c": "shard-00001.h5"}
    assert index["completed"] == ["a", "b", "c"] and index["failed"] == {"x": "broken video"}
    assert json.loads((tmp_path / "keypoints" / "index.json").read_text()) == index

    cache = open_cache(tmp_path)
    assert cache.stages() == ["keypoints"] and cache.ids() == ["a", "b", "c"]
    np.testing.assert_array_equal(cache.read("b")["keypoints"], b)
    assert cache.read("c")["keypoints"].dtype == np.float32
    assert cache.attrs("a", "keypoints")["height"] == 260
    assert cache.failed("keypoints") == {"x": "broken video"}
    assert cache.provenance("keypoints").key() == provenance().key()
    with h5py.File(tmp_path / "keypoints" / "shard-00000.h5") as handle:
        assert json.loads(handle.attrs["config"]) == {"sigma": 4}
        assert handle.attrs["backend"] == "test-backend" and handle.attrs["weights_sha256"] == "none"
        assert handle["b/keypoints"].compression == "gzip"
    with pytest.raises(KeyError, match="zzz"):
        cache.read("zzz")


def test_chunks_are_whole_time_steps_of_about_a_megabyte(tmp_path):
    heatmaps = np.zeros((40, 79, 112, 112), np.uint8)  # ~1 MB per frame: one frame a chunk
    keypoints = np.zeros((4000, 133, 3), np.float32)
    with ShardWriter(tmp_path / "s", 0, ["v"], provenance()) as writer:
        writer.write("v", {"heatmaps": heatmaps, "keypoints": keypoints, "empty": np.zeros((0, 3))})
        writer.commit()
    with h5py.File(tmp_path / "s" / "shard-00000.h5") as handle:
        assert handle["v/heatmaps"].chunks == (1, 79, 112, 112)
        steps = handle["v/keypoints"].chunks[0]
        assert handle["v/keypoints"].chunks[1:] == (133, 3)
        assert steps * 133 * 3 * 4 <= CHUNK_BYTES < (steps + 1) * 133 * 3 * 4
        assert handle["v/empty"].shape == (0, 3)


def test_failed_writer_leaves_nothing(tmp_path):
    stage_dir = tmp_path / "keypoints"
    with pytest.raises(RuntimeError):
        with ShardWriter(stage_dir, 0, ["a"], provenance()) as writer:
            writer.write("a", {"keypoints": np.ones((3, 133, 3), np.float32)})
            raise RuntimeError("killed")
    assert list(stage_dir.iterdir()) == []
    assert load_records(stage_dir) == {}


def test_data_without_its_record_is_not_trusted(tmp_path):
    record = write_shard(tmp_path / "keypoints", 0, {"a": np.ones((2, 133, 3), np.float32)})
    (tmp_path / "keypoints" / "shard-00000.json").unlink()  # as if killed between the two renames
    assert record.ids == ["a"]
    assert load_records(tmp_path / "keypoints") == {}
    assert open_cache(tmp_path).ids() == []


def test_quantized_values_decode_to_physical_units(tmp_path):
    values = np.linspace(-25, 25, 1000, dtype=np.float32).reshape(10, 100)
    codes, attrs = quantize_linear(values, -20.0, 20.0)
    with ShardWriter(tmp_path / "flow", 0, ["v"], provenance()) as writer:
        writer.write("v", {"flow": codes, "half": values.astype(np.float16)}, attrs={"flow": attrs})
        writer.commit()
    decoded = open_cache(tmp_path).read("v")
    assert decoded["flow"].dtype == np.float32 and decoded["half"].dtype == np.float32
    step = 40.0 / 255
    np.testing.assert_allclose(decoded["flow"], np.clip(values, -20, 20), atol=step / 2 + 1e-5)
    np.testing.assert_allclose(decoded["half"], values, rtol=1e-3)


def _read_in_child(cache):
    return float(cache.read("a")["keypoints"].sum())


def test_cache_pickles_and_reads_in_other_processes(tmp_path):
    write_shard(tmp_path / "keypoints", 0, {"a": np.full((4, 133, 3), 2.0, np.float32)})
    cache = open_cache(tmp_path)
    assert cache.read("a")["keypoints"].sum() == 4 * 133 * 3 * 2  # opens a handle here first
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.read("a")["keypoints"].shape == (4, 133, 3)
    for method in ("fork", "spawn"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            assert pool.map(_read_in_child, [cache, cache]) == [4 * 133 * 3 * 2.0] * 2


def test_provenance_differences_name_what_changed():
    old = Provenance("flow", "dis", {"size": 224, "bound": 20})
    new = Provenance("flow", "dis", {"size": 112, "bound": 20})
    assert new.differences(old) == ["config.size: 224 -> 112"]
    assert Provenance("flow", "raft", {"size": (1, 2)}).differences(
        Provenance("flow", "dis", {"size": [1, 2]})) == ["backend: 'dis' -> 'raft'"]


def test_streamed_chunks_are_written_like_a_whole_array(tmp_path):
    rng = np.random.default_rng(1)
    whole = rng.integers(0, 255, size=(70, 79, 16, 16), dtype=np.uint8)

    def broken():
        yield whole[:30]
        raise RuntimeError("video ended early")

    with ShardWriter(tmp_path / "heatmaps", 0, ["a", "b"], provenance()) as writer:
        writer.write("a", {"heatmaps": (whole[i:i + 32] for i in range(0, 70, 32))})
        with pytest.raises(RuntimeError):
            writer.write("b", {"heatmaps": broken(), "other": np.zeros(3)})
        writer.fail("b", "video ended early")
        record = writer.commit()
    assert record.ids == ["a"]
    cache = open_cache(tmp_path)
    np.testing.assert_array_equal(cache.read("a")["heatmaps"], whole)
    with h5py.File(tmp_path / "heatmaps" / "shard-00000.h5") as handle:
        assert "b" not in handle and handle["a/heatmaps"].chunks[1:] == (79, 16, 16)
