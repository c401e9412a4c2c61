"""Training-batch throughput: per-frame JPEG folders decoded on the fly vs cached feature shards.

    python bench/loader.py [--videos 24] [--size 256] [--dim 512] [--repeats 2] [--workers 0 2]

Builds, in a temporary directory, a synthetic corpus (``make_corpus``, ``--videos`` videos of
``--size`` x ``--size`` pixels), writes every video as a folder of per-frame JPEGs (as PHOENIX-
and CSL-Daily-style corpora store them) and a ``features.rgb`` cache for the same sequences
([T, ``--dim``] float16 written with ShardWriter, gzip as the pipeline's default; random values:
what is measured is the loader). Then times full passes of a DataLoader (batch 4, one pass =
every sequence of the corpus once) for each ``--workers`` count:

  (a) baseline: frame folders decoded as VAC/CorrNet do: cv2.imread per frame, BGR -> RGB,
      cv2.resize to 224x224, stacked into [T, 3, 224, 224] float32 in [0, 1], zero-padded
      batches (collate_padded)
  (b) ours: CachedSequenceDataset over the feature shards, collate_padded

Workers are persistent and every configuration is warmed up (worker start, lazily opened
files: 2 batches per worker) before the best of ``--repeats`` timed full passes is kept. Prints
sequences/s for each and the ratio (b)/(a) at equal worker counts. The project's goal: >= 10x.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cslr_pipe.features.store import Provenance, ShardWriter, write_index
from cslr_pipe.features.video import iter_frames, list_frame_files
from cslr_pipe.features.manifest import ManifestRow, read_manifest, read_vocabulary
from cslr_pipe.pipeline.runner import plan_shards
from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus
from cslr_pipe.training.data import CachedSequenceDataset, collate_padded

GOAL = 10.0
BATCH = 4
INPUT_SIZE = 224


class FrameFolderDataset(Dataset):
    """The baseline: decode and resize every frame of a JPEG folder when an item is asked for."""

    def __init__(self, folders: dict[str, Path], rows: list[ManifestRow], vocabulary: list[str]):
        index = {gloss: i for i, gloss in enumerate(vocabulary)}
        self.rows = rows
        self.folders = folders
        self.labels = [torch.tensor([index[g] for g in row.glosses], dtype=torch.long) for row in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        frames = []
        for path in list_frame_files(self.folders[row.id]):
            image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            frames.append(cv2.resize(image, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR))
        video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        return {"id": row.id, "inputs": {"video": video}, "labels": self.labels[i],
                "length": len(frames), "lengths": {"video": len(frames)}}


def build(work: Path, args) -> tuple[list[ManifestRow], list[str], dict[str, Path], Path]:
    spec = CorpusSpec(num_videos=args.videos, height=args.size, width=args.size, seed=args.seed)
    manifest = make_corpus(work / "corpus", spec)
    rows = read_manifest(manifest)
    vocabulary = read_vocabulary(work / "corpus" / "vocabulary.json")
    folders = {}
    for row in rows:  # every video as a folder of JPEG frames
        folder = work / "jpeg" / row.id
        folder.mkdir(parents=True)
        index = 0
        for chunk in iter_frames(work / "corpus" / row.video):
            for frame in chunk:
                index += 1
                cv2.imwrite(str(folder / f"{index:06d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        folders[row.id] = folder
    cache = work / "cache"
    rng = np.random.default_rng(args.seed)
    provenance = Provenance(stage="features.rgb", backend="bench-random", config={"dim": args.dim})
    for shard, shard_rows in enumerate(plan_shards(rows, 8)):
        with ShardWriter(cache / "features.rgb", shard, [r.id for r in shard_rows], provenance) as writer:
            for row in shard_rows:
                features = rng.normal(0, 1, (row.num_frames, args.dim)).astype(np.float16)
                writer.write(row.id, {"features.rgb": features})
            writer.commit()
    write_index(cache / "features.rgb")
    return rows, vocabulary, folders, cache


def time_passes(dataset: Dataset, workers: int, repeats: int) -> tuple[float, int]:
    """Best time of one full pass (after a short warm-up) and the bytes of input a pass yields."""
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=False, num_workers=workers,
                        collate_fn=collate_padded, persistent_workers=workers > 0)
    for _ in itertools.islice(loader, 2 * max(workers, 1)):  # warm-up: worker start, file handles
        pass
    best, nbytes = float("inf"), 0
    for _ in range(repeats):
        nbytes = 0
        start = time.perf_counter()
        for batch in loader:  # consumed as a training step would receive it
            nbytes += sum(x.numel() * x.element_size() for x in batch["inputs"].values())
        best = min(best, time.perf_counter() - start)
    del loader
    return best, nbytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--size", type=int, default=256, help="frame height and width")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"Python {platform.python_version()}, torch {torch.__version__}, opencv {cv2.__version__}, "
          f"numpy {np.__version__}, {platform.machine()} with {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory(prefix="cslr-bench-loader-") as tmp:
        start = time.perf_counter()
        rows, vocabulary, folders, cache = build(Path(tmp), args)
        frames = sum(row.num_frames for row in rows)
        jpeg_mb = sum(p.stat().st_size for f in folders.values() for p in f.iterdir()) / 2**20
        shard_mb = sum(p.stat().st_size for p in (cache / "features.rgb").glob("*.h5")) / 2**20
        print(f"{len(rows)} sequences, {frames} frames ({frames / len(rows):.0f} per sequence); "
              f"JPEG {args.size}x{args.size}: {jpeg_mb:.1f} MiB, feature shards [T, {args.dim}] "
              f"float16 gzip: {shard_mb:.1f} MiB; built in {time.perf_counter() - start:.1f} s")
        baseline = FrameFolderDataset(folders, rows, vocabulary)
        ours = CachedSequenceDataset(cache, rows, vocabulary, ["features.rgb"], split=None)
        assert len(ours) == len(baseline) == len(rows)

        results = {}
        print("\n| | data | workers | best pass (s) | sequences/s | frames/s | batch input per pass |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for workers in args.workers:
            for key, name, dataset in (("a", "JPEG folders, imread + resize to [T,3,224,224] float32",
                                        baseline),
                                       ("b", f"feature shards, CachedSequenceDataset [T,{args.dim}]",
                                        ours)):
                seconds, nbytes = time_passes(dataset, workers, args.repeats)
                results[key, workers] = seconds
                print(f"| ({key}) | {name} | {workers} | {seconds:.3f} | {len(rows) / seconds:.0f} | "
                      f"{frames / seconds:.0f} | {nbytes / 2**20:.0f} MiB |", flush=True)
        print(f"\n| ratio (b)/(a), sequences/s, goal >= {GOAL:.0f}x | value |")
        print("|---|---:|")
        met = True
        for workers in args.workers:
            ratio = results["a", workers] / results["b", workers]
            met &= ratio >= GOAL
            print(f"| {workers} workers each | **{ratio:.1f}x** |")
        if 0 in args.workers and len(args.workers) > 1:
            most = max(args.workers)
            print(f"| (b) with 0 workers vs (a) with {most} | {results['a', most] / results['b', 0]:.1f}x |")
        print(f"\ngoal {'met' if met else 'NOT met'}; total {time.perf_counter() - start:.1f} s")
        ours.close()
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
