"""The training Dataset over cache shards, the CTC padding collate, augmentation and batching."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cslr_pipe.features import store
from cslr_pipe.features.store import Provenance, ShardWriter, write_index
from cslr_pipe.pipeline.imports import import_features
from cslr_pipe.features.manifest import BLANK, ManifestRow, build_vocabulary, write_manifest
from cslr_pipe.pipeline.runner import plan_shards
from cslr_pipe.training.data import (Augmentation, CachedSequenceDataset, LengthBucketSampler,
                                     collate_padded, rescale_time, resolve_streams)

DIM = 8


def make_rows() -> list[ManifestRow]:
    glosses = [("HELLO", "THANKS"), ("NO",), ("MORE", "MORE", "RAIN"), ("GOOD",), ("PLEASE", "NO"),
               ("CHANGE",), ("HELLO",), ("RAIN", "GOOD")]
    return [ManifestRow(id=f"v{i}", split="train" if i < 6 else "dev", video=f"videos/v{i}.mp4",
                        glosses=g) for i, g in enumerate(glosses)]


def frames(video_id: str) -> int:
    return 4 + 3 * int(video_id[1:])


def rgb(video_id: str) -> np.ndarray:
    t = frames(video_id)
    return (np.arange(t * DIM, dtype=np.float32).reshape(t, DIM) / 8 + int(video_id[1:])).astype(np.float16)


def keypoints(video_id: str) -> np.ndarray:
    t = frames(video_id)
    return np.random.default_rng(int(video_id[1:])).normal(0, 50, (t, 133, 3)).astype(np.float32)


def write_stage(root: Path, stage: str, rows, make, dataset: str, skip=(), shard_size=3) -> None:
    provenance = Provenance(stage=stage, backend="test", config={})
    for shard, shard_rows in enumerate(plan_shards(rows, shard_size)):
        with ShardWriter(root / stage, shard, [r.id for r in shard_rows], provenance) as writer:
            for row in shard_rows:
                if row.id in skip:
                    writer.fail(row.id, "test: no result")
                else:
                    writer.write(row.id, {dataset: make(row.id)})
            writer.commit()
    write_index(root / stage)


@pytest.fixture
def cache(tmp_path):
    rows = make_rows()
    root = tmp_path / "cache"
    write_stage(root, "features.rgb", rows, rgb, "features.rgb")
    write_stage(root, "keypoints", rows, keypoints, "keypoints", skip={"v2"})
    vocabulary = build_vocabulary(rows, splits=("train", "dev"))
    return root, rows, vocabulary


def test_items(cache):
    root, rows, vocabulary = cache
    data = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb"], split="train")
    assert len(data) == 6 and data.ids == [f"v{i}" for i in range(6)]
    item = data[2]
    assert item["id"] == "v2" and item["length"] == frames("v2")
    x = item["inputs"]["features.rgb"]
    assert x.dtype == torch.float32 and x.shape == (frames("v2"), DIM)
    np.testing.assert_array_equal(x.numpy(), rgb("v2").astype(np.float32))
    assert item["labels"].dtype == torch.long
    assert [vocabulary[i] for i in item["labels"]] == ["MORE", "MORE", "RAIN"]
    assert vocabulary[0] == BLANK and 0 not in item["labels"]


def test_missing_ids_are_skipped_with_a_warning(cache):
    root, rows, vocabulary = cache
    with pytest.warns(UserWarning, match=r"1 of 6 train videos skipped.*1 without keypoints"):
        data = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb", "keypoints"])
    assert "v2" not in data.ids and len(data) == 5
    item = data[0]
    assert item["inputs"]["keypoints"].shape == (frames("v0"), 133, 3)
    assert item["lengths"] == {"features.rgb": frames("v0"), "keypoints": frames("v0")}


def test_unknown_gloss_names_id_and_gloss(cache):
    root, rows, vocabulary = cache
    rows = rows + [ManifestRow(id="v1", split="dev", video="x", glosses=("NEVER-SEEN",))]
    with pytest.raises(ValueError, match=r"v1: gloss 'NEVER-SEEN' is not in the vocabulary"):
        CachedSequenceDataset(root, rows, vocabulary, ["features.rgb"], split="dev")


def test_unknown_stream(cache):
    root, rows, vocabulary = cache
    with pytest.raises(ValueError, match="features.pose"):
        CachedSequenceDataset(root, rows, vocabulary, ["features.pose"])


def test_short_stream_names_resolve_to_feature_stages():
    stages = ["keypoints", "flow", "features.rgb", "features.flow"]
    assert resolve_streams(["rgb", "flow", "keypoints", "features.rgb", "keypoint", "=flow"], stages) == \
        ["features.rgb", "features.flow", "keypoints", "features.rgb", "keypoint", "flow"]
    assert resolve_streams(["flow"], ["flow"]) == ["flow"]  # no features stage: the raw one


def test_manifest_path_and_all_splits(cache, tmp_path):
    root, rows, vocabulary = cache
    write_manifest(rows, tmp_path / "manifest.jsonl")
    data = CachedSequenceDataset(root, tmp_path / "manifest.jsonl", vocabulary, "features.rgb", split=None)
    assert data.ids == [row.id for row in rows]
    assert len(CachedSequenceDataset(root, rows, vocabulary, ["features.rgb"], split="dev")) == 2


def test_collate_padded(cache):
    root, rows, vocabulary = cache
    data = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb"])
    batch = collate_padded([data[0], data[2], data[1]])
    assert batch["ids"] == ["v0", "v2", "v1"]
    x = batch["inputs"]["features.rgb"]
    assert x.shape == (3, frames("v2"), DIM)
    assert batch["lengths"].tolist() == [frames("v0"), frames("v2"), frames("v1")]
    assert torch.all(x[0, frames("v0"):] == 0) and torch.all(x[2, frames("v1"):] == 0)
    np.testing.assert_array_equal(x[1].numpy(), rgb("v2").astype(np.float32))
    assert batch["label_lengths"].tolist() == [2, 3, 1]
    mask = batch["mask"]["features.rgb"]
    assert mask.dtype == torch.bool and mask.shape == (3, frames("v2"))
    assert mask.sum(1).tolist() == batch["lengths"].tolist() and mask[:, 0].all()
    assert torch.equal(mask, torch.arange(frames("v2")) < batch["lengths"][:, None])
    glosses = [vocabulary[i] for i in batch["labels"]]
    assert glosses == ["HELLO", "THANKS", "MORE", "MORE", "RAIN", "NO"]
    # the CTC convention: F.ctc_loss accepts it as it is
    log_probs = torch.randn(x.shape[1], 3, len(vocabulary)).log_softmax(-1)
    loss = torch.nn.functional.ctc_loss(log_probs, batch["labels"], batch["lengths"], batch["label_lengths"])
    assert torch.isfinite(loss)


def check_loader(data, vocabulary, **options):
    loader = DataLoader(data, batch_size=2, shuffle=False, num_workers=2, collate_fn=collate_padded,
                        **options)
    seen = []
    for batch in loader:
        b = len(batch["ids"])
        t_max = max(frames(i) for i in batch["ids"])
        assert batch["inputs"]["features.rgb"].shape == (b, t_max, DIM)
        assert batch["inputs"]["keypoints"].shape == (b, t_max, 133, 3)
        assert batch["lengths"].tolist() == [frames(i) for i in batch["ids"]]
        labels = iter(batch["labels"].tolist())
        for video_id, n in zip(batch["ids"], batch["label_lengths"].tolist()):
            row_glosses = data.glosses[data.ids.index(video_id)]
            assert [vocabulary[next(labels)] for _ in range(n)] == list(row_glosses)
            k = batch["ids"].index(video_id)
            np.testing.assert_array_equal(batch["inputs"]["keypoints"][k, :frames(video_id)].numpy(),
                                          keypoints(video_id))
        seen += batch["ids"]
    assert seen == data.ids


def test_dataloader_workers_fork(cache):
    root, rows, vocabulary = cache
    with pytest.warns(UserWarning):
        data = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb", "keypoints"], split=None)
    data[0]  # the parent has open handles: the workers must not share them
    check_loader(data, vocabulary, multiprocessing_context="fork")
    check_loader(data, vocabulary, multiprocessing_context="fork", persistent_workers=True)


@pytest.mark.slow
def test_dataloader_workers_spawn(cache):
    root, rows, vocabulary = cache
    with pytest.warns(UserWarning):
        data = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb", "keypoints"], split=None)
    data[0]
    check_loader(data, vocabulary, multiprocessing_context="spawn")


def test_pickles_without_handles(cache):
    root, rows, vocabulary = cache
    data = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb"])
    before = data[3]
    copy = pickle.loads(pickle.dumps(data))
    after = copy[3]
    assert after["id"] == before["id"]
    assert torch.equal(after["inputs"]["features.rgb"], before["inputs"]["features.rgb"])
    assert torch.equal(after["labels"], before["labels"])
    data.close()
    copy.close()


def test_imported_features_read_like_computed_ones(tmp_path):
    rows = make_rows()
    folder = tmp_path / "npy"
    folder.mkdir()
    for row in rows:
        np.save(folder / f"{row.id}.npy", rgb(row.id).astype(np.float32))
    count, failures = import_features(rows, folder, tmp_path / "cache", stream="rgb", shard_size=3)
    assert (count, failures) == (len(rows), {})
    vocabulary = build_vocabulary(rows)
    data = CachedSequenceDataset(tmp_path / "cache", rows, vocabulary, ["features.rgb"])
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate_padded)))
    assert batch["inputs"]["features.rgb"].shape == (4, frames("v3"), DIM)
    np.testing.assert_array_equal(batch["inputs"]["features.rgb"][3].numpy(), rgb("v3").astype(np.float32))


def test_rescale_time_linear_ramp():
    ramp = np.arange(10, dtype=np.float32)[:, None] * np.array([1, -2], np.float32) + 3  # [10, 2]
    assert rescale_time(ramp, 1.0) is ramp
    for factor, steps in [(2.0, 20), (0.5, 5), (1.37, 14), (0.01, 1)]:
        out = rescale_time(ramp, factor)
        assert out.shape == (steps, 2) and out.dtype == np.float32
        np.testing.assert_allclose(out[0], ramp[0])
        if steps > 1:  # still a ramp between the same end points
            np.testing.assert_allclose(out[-1], ramp[-1], rtol=1e-6)
            np.testing.assert_allclose(np.diff(out, axis=0), np.diff(out, axis=0)[:1].repeat(steps - 1, 0),
                                       atol=1e-5)
    np.testing.assert_allclose(rescale_time(ramp, 2.0)[::19], ramp[[0, -1]])
    flow = np.zeros((9, 2, 3, 4), np.float32)  # a stream one step shorter keeps its shape
    assert rescale_time(flow, 2.0).shape == (18, 2, 3, 4)
    assert rescale_time(ramp[:1], 3.0).tolist() == [[3, 3]] * 3
    with pytest.raises(ValueError):
        Augmentation(rescale=(1.5, 0.5))
    with pytest.raises(ValueError):
        Augmentation(feature_dropout=1.0)


def test_augmented_items(cache):
    root, rows, vocabulary = cache
    plain = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb", "keypoints"], split="dev")
    data = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb", "keypoints"], split="dev",
                                 augment=Augmentation(rescale=(2, 2)))
    item, original = data[1], plain[1]
    assert item["length"] == 2 * frames("v7") and item["lengths"] == {"features.rgb": 2 * frames("v7"),
                                                                       "keypoints": 2 * frames("v7")}
    assert torch.equal(item["labels"], original["labels"])
    x = item["inputs"]["features.rgb"].numpy()  # the stored rgb is a ramp in time
    np.testing.assert_allclose(x, rescale_time(rgb("v7").astype(np.float32), 2.0))
    np.testing.assert_allclose(x[[0, -1]], original["inputs"]["features.rgb"].numpy()[[0, -1]])
    assert data.lengths() == plain.lengths() == [frames("v6"), frames("v7")]
    assert data.lengths(epoch=3) == [2 * frames("v6"), 2 * frames("v7")]
    assert collate_padded([data[0], data[1]])["inputs"]["keypoints"].shape == (2, 2 * frames("v7"), 133, 3)


def test_augmentation_is_reproducible_per_seed_epoch_and_index(cache):
    root, rows, vocabulary = cache
    augment = Augmentation(rescale=(0.5, 1.5), feature_dropout=0.5)
    data = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb"], augment=augment, seed=1)
    first = data[5]["inputs"]["features.rgb"]
    assert torch.equal(first, data[5]["inputs"]["features.rgb"])
    data.set_epoch(1)
    assert not torch.equal(first, data[5]["inputs"]["features.rgb"])
    data.set_epoch(0)
    assert torch.equal(first, data[5]["inputs"]["features.rgb"])
    other = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb"], augment=augment, seed=2)
    assert not torch.equal(first, other[5]["inputs"]["features.rgb"])
    for epoch in range(3):  # lengths() predicts the rescaling of every epoch
        data.set_epoch(epoch)
        assert data.lengths(epoch) == [data[i]["length"] for i in range(len(data))]
    # channel dropout: whole channels zeroed in every step, the others scaled by 1 / (1 - p)
    dropout = CachedSequenceDataset(root, rows, vocabulary, ["keypoints"], split="dev", seed=1,
                                    augment=Augmentation(rescale=(1, 1), feature_dropout=0.25))
    x, clean = dropout[0]["inputs"]["keypoints"].numpy(), keypoints("v6")
    dropped = np.all(x == 0, axis=0)
    assert 0.2 < dropped.mean() < 0.3
    np.testing.assert_allclose(x[:, ~dropped], clean[:, ~dropped] / 0.75, rtol=1e-6)


def test_augmentation_in_persistent_workers(cache):
    root, rows, vocabulary = cache
    data = CachedSequenceDataset(root, rows, vocabulary, ["features.rgb"], seed=3,
                                 augment=Augmentation(rescale=(0.5, 1.5), feature_dropout=0.3))
    loader = DataLoader(data, batch_size=3, num_workers=2, collate_fn=collate_padded,
                        multiprocessing_context="fork", persistent_workers=True)
    for epoch in (0, 1):
        data.set_epoch(epoch)  # reaches the workers started in epoch 0
        for batch in loader:
            for k, video_id in enumerate(batch["ids"]):
                expected = data[data.ids.index(video_id)]["inputs"]["features.rgb"]
                assert batch["lengths"][k] == len(expected)
                assert torch.equal(batch["inputs"]["features.rgb"][k, :len(expected)], expected)


def test_lengths_read_no_arrays(cache, monkeypatch):
    root, rows, vocabulary = cache
    with pytest.warns(UserWarning):
        data = CachedSequenceDataset(root, rows, vocabulary, ["keypoints", "features.rgb"], split=None)
    monkeypatch.setattr(store, "decode", lambda dataset: pytest.fail("read an array"))
    assert data.lengths() == [frames(i) for i in data.ids]


def padding(batches: list[list[int]], lengths: np.ndarray) -> float:
    """Fraction of padded steps when the batches are collated."""
    return 1 - sum(lengths[b].sum() for b in batches) / sum(len(b) * lengths[b].max() for b in batches)


def test_length_buckets_cover_every_index_once_with_little_padding():
    lengths = np.random.default_rng(0).integers(10, 300, 1003)
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=0, bucket_size_multiplier=50)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 126
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert all(len(b) == 8 for b in batches if len(b) != 3)
    unsorted = list(LengthBucketSampler(lengths, batch_size=8, seed=0, bucket_size_multiplier=1))
    assert padding(batches, lengths) < 0.05 and padding(unsorted, lengths) > 0.3
    assert list(sampler) == batches  # deterministic per (seed, epoch)
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches
    assert list(LengthBucketSampler(lengths, batch_size=8, seed=1, bucket_size_multiplier=50)) != batches
    ordered = LengthBucketSampler(lengths, batch_size=8, shuffle=False, bucket_size_multiplier=200)
    first = list(ordered)
    ordered.set_epoch(5)
    assert list(ordered) == first and lengths[first[0]].max() <= lengths[first[1]].min()
    epochs = []  # lengths may depend on the epoch (augmented lengths)
    list(LengthBucketSampler(lambda epoch: epochs.append(epoch) or lengths, batch_size=8))
    assert epochs == [0, 0]


@pytest.mark.parametrize("size, replicas", [(1003, 2), (100, 3), (5, 4)])
def test_length_buckets_shard_over_replicas(size, replicas):
    lengths = np.random.default_rng(1).integers(1, 100, size)
    ranks = [LengthBucketSampler(lengths, batch_size=4, seed=2, num_replicas=replicas, rank=r,
                                 bucket_size_multiplier=10) for r in range(replicas)]
    for sampler in ranks:
        sampler.set_epoch(7)
    shards = [list(sampler) for sampler in ranks]
    assert all(len(shard) == len(ranks[0]) for shard in shards)
    in_order = [shards[k % replicas][k // replicas] for k in range(len(ranks[0]) * replicas)]
    distinct = math.ceil(size / 4)  # then repeats of the first batches, to even the counts out
    assert sorted(i for b in in_order[:distinct] for i in b) == list(range(size))
    assert in_order[distinct:] == in_order[:len(in_order) - distinct]
