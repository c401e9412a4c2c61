"""The training Dataset over cache shards, and the CTC padding collate."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cslr_pipe.features.store import Provenance, ShardWriter, write_index
from cslr_pipe.pipeline.imports import import_features
from cslr_pipe.pipeline.manifest import BLANK, ManifestRow, build_vocabulary, write_manifest
from cslr_pipe.pipeline.runner import plan_shards
from cslr_pipe.training.data import CachedSequenceDataset, collate_padded

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
