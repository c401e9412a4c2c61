"""Optical flow speed per backend, and the size and error of each storage.

    python bench/flow.py [--frames 48] [--size 224] [--raft-pairs 4] [--updates 12] [--threads N]
                         [--gpu-pairs 64] [--gpu-batch 32] [--skip-raft] [--skip-sizes]

Frames: the synthetic signer (``cslr_pipe.pipeline.synthetic.render_video``) at size x size.

1. CPU frames/s (flow fields per second) for dis (ultrafast, fast, medium), farneback, and
   raft-small / raft-large with random weights saved in torchvision's layout and loaded through
   the backend (the compute of the real checkpoints), ``--updates`` refinement steps, on
   ``--raft-pairs`` pairs (RAFT is slow on a CPU). One warm-up pair is not timed.
2. Storage (``--skip-sizes`` to omit): DIS-medium flow at 112x112 and 224x224 of the signer
   video (still studio background) and of a real photo (grace_hopper.jpg) under a random camera
   walk with noise (motion and texture everywhere: the hard case), each written with the store's ShardWriter (gzip level 4 + shuffle, time-chunked): stored bytes
   per frame (the dataset's storage size in the file) and the raw array size, plus each
   storage's round-trip error against the clipped flow.
3. CUDA only (needs a GPU; skipped with a message otherwise): RAFT small and large on
   ``--gpu-pairs`` pairs, batched (``--gpu-batch`` pairs per pass) with fp16 autocast against a
   per-pair fp32 loop (batch_size=1), in one run, and the speed-up (goal: >= 5x).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch

from cslr_pipe.features.codecs import STORAGES, decode_flow, encode_flow, rgb_error_bound
from cslr_pipe.features.flow import build_flow_backend
from cslr_pipe.features.store import Provenance, ShardWriter
from cslr_pipe.pipeline.synthetic import CorpusSpec, render_video

GOAL = 5.0  # batched fp16 RAFT on a GPU vs a per-pair fp32 loop
GLOSSES = ["HELLO", "PLEASE", "RAIN", "CHANGE", "MORE"]


def signer_frames(size: int, count: int) -> np.ndarray:
    frames, _ = render_video(GLOSSES, CorpusSpec(height=size, width=size, seed=3))
    if len(frames) < count + 1:
        raise SystemExit(f"the synthetic video has {len(frames)} frames; ask for fewer")
    return np.ascontiguousarray(frames[: count + 1])


def random_raft_file(folder: Path, name: str) -> Path:
    """Random weights in torchvision's RAFT layout (no download), under a name of their own: the
    published names are hash-checked."""
    from torchvision.models import optical_flow

    architecture = {"raft-small": "raft_small", "raft-large": "raft_large"}[name]
    torch.manual_seed(0)
    path = folder / f"{architecture}_random.pth"
    torch.save(getattr(optical_flow, architecture)(weights=None, progress=False).state_dict(), path)
    return path


def fields_per_second(backend, frames: np.ndarray, chunk: int = 16) -> float:
    backend(frames[:1], frames[1:2])  # warm-up
    pairs = len(frames) - 1
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, pairs, chunk):
        stop = min(pairs, i + chunk)
        backend(frames[i:stop], frames[i + 1:stop + 1])  # returns numpy: synchronised
    return pairs / (time.perf_counter() - start)


def cpu_speeds(args, folder: Path) -> list[tuple[str, float]]:
    frames = signer_frames(args.size, args.frames)
    rows = []
    for preset in ("ultrafast", "fast", "medium"):
        rows.append((f"dis ({preset})", fields_per_second(build_flow_backend("dis", preset=preset), frames)))
    rows.append(("farneback", fields_per_second(build_flow_backend("farneback"), frames)))
    if not args.skip_raft:
        for name, pairs in (("raft-small", args.raft_pairs), ("raft-large", max(1, args.raft_pairs // 2))):
            backend = build_flow_backend(name, weights=random_raft_file(folder, name), device="cpu",
                                         num_updates=args.updates, batch_size=4)
            rows.append((f"{name} ({args.updates} updates, random weights)",
                         fields_per_second(backend, frames[: pairs + 1], chunk=4)))
            backend.close()
    return rows


def photo_frames(size: int, count: int) -> np.ndarray:
    """A real photo (matplotlib's grace_hopper.jpg) under a smooth random camera walk (sub-pixel
    shifts, slight zoom) with sensor-like noise: motion and texture everywhere, the hard case
    for compression (the signer's flat studio background is the easy one)."""
    from matplotlib import cbook

    image = cv2.cvtColor(cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))),
                         cv2.COLOR_BGR2RGB)[60:60 + 448, 32:32 + 448]
    rng = np.random.default_rng(0)
    steps = np.cumsum(rng.normal(0, 1.5, (count + 1, 2)), axis=0)
    zooms = 1 + 0.01 * np.cumsum(rng.normal(0, 0.3, count + 1))
    frames = []
    for (dx, dy), zoom in zip(steps, zooms):
        scale = zoom * size / 448
        matrix = np.array([[scale, 0, size / 2 - scale * 224 + dx], [0, scale, size / 2 - scale * 224 + dy]])
        frame = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
        frames.append(np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def storage_table(args, folder: Path) -> list[tuple]:
    rows = []
    dis = build_flow_backend("dis")
    for source, make in (("signer", signer_frames), ("photo", photo_frames)):
        for size in (112, 224):
            frames = make(size, args.frames)
            flow = dis(frames[:-1], frames[1:])
            n = len(flow)
            for storage in ("float32", *STORAGES):
                if storage == "float32":
                    array, attrs, error = flow, {}, 0.0
                else:
                    array, attrs = encode_flow(flow, storage)
                    decoded = decode_flow(array, attrs)
                    if storage == "uint8":
                        error = float(np.abs(decoded - np.clip(flow, -20, 20)).max())
                    elif storage == "float16":
                        error = float(np.abs(decoded - flow).max())
                    else:
                        norm = np.linalg.norm(flow, axis=1, keepdims=True)
                        clipped = flow * np.minimum(1, 20 / np.maximum(norm, 1e-12))
                        error = float(np.linalg.norm(decoded - clipped, axis=1).max())
                stage = folder / f"{source}-{size}-{storage}"
                with ShardWriter(stage, 0, ["v"], Provenance("flow", "dis", {})) as writer:
                    writer.write("v", {"flow": array}, attrs={"flow": attrs})
                    record = writer.commit()
                with h5py.File(stage / record.file, "r") as handle:
                    stored = handle["v/flow"].id.get_storage_size()
                rows.append((source, size, storage, array.nbytes / n, stored / n, error))
            speeds = np.linalg.norm(flow, axis=1)
            rows.append((source, size, f"|flow| max {speeds.max():.1f} px, 99th percentile "
                         f"{np.percentile(speeds, 99):.1f} px, {100 * (np.abs(flow) > 20).mean():.2f}% of "
                         "components beyond 20 px", None, None, None))
    return rows


def raft_loop_vs_batched(name: str, frames: np.ndarray, folder: Path, device: str = "cuda", updates: int = 12,
                         batch: int = 32, precision: str = "fp16") -> tuple[float, float]:
    """(fields/s of a per-pair fp32 loop, fields/s batched ``batch`` pairs per pass under
    ``precision`` autocast) of RAFT ``name`` with random weights on ``frames`` (pairs = len - 1)."""
    path = random_raft_file(folder, name)
    loop = build_flow_backend(name, weights=path, device=device, num_updates=updates,
                              batch_size=1, precision="fp32")
    batched = build_flow_backend(name, weights=path, device=device, num_updates=updates,
                                 batch_size=batch, precision=precision)
    try:
        slow = fields_per_second(loop, frames, chunk=batch)
        fast = fields_per_second(batched, frames, chunk=batch)
    finally:
        loop.close()
        batched.close()
    return slow, fast


def gpu_ratios(args, folder: Path) -> list[tuple]:
    frames = signer_frames(args.size, args.gpu_pairs)
    rows = []
    for name in ("raft-small", "raft-large"):
        slow, fast = raft_loop_vs_batched(name, frames, folder, "cuda", args.updates, args.gpu_batch)
        rows.append((name, slow, fast, fast / slow))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=48, help="pairs for dis/farneback and the sizes")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--raft-pairs", type=int, default=4, help="pairs for raft-small (large: half)")
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--gpu-pairs", type=int, default=64)
    parser.add_argument("--gpu-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch and OpenCV threads (0: their defaults). On a machine whose cores are "
                             "busy with other work, 1 avoids OpenMP's spin-waiting (RAFT ran 8x slower "
                             "with 2 threads than with 1 on 2 contended cores)")
    parser.add_argument("--skip-raft", action="store_true")
    parser.add_argument("--skip-sizes", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)

    print(f"torch {torch.__version__}, OpenCV {cv2.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, cv2 threads {cv2.getNumThreads()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"\nCPU, {args.size}x{args.size} synthetic signer, flow fields per second")
        print("| backend | fields/s | ms/field |\n|---|---:|---:|")
        for name, speed in cpu_speeds(args, folder):
            print(f"| {name} | {speed:.2f} | {1000 / speed:.1f} |")

        if not args.skip_sizes:
            print(f"\nStorage of DIS-medium flow ({args.frames} fields), per field; gzip 4 + shuffle")
            print("| source | size | storage | raw KiB | stored KiB | max round-trip error px |")
            print("|---|---|---|---:|---:|---:|")
            for source, size, storage, raw, stored, error in storage_table(args, folder):
                if error is None:
                    print(f"| {source} | {size} | ({storage}) | | | |")
                else:
                    print(f"| {source} | {size} | {storage} | {raw / 1024:.1f} | {stored / 1024:.2f} | {error:.4f} |")
            print(f"(stated bounds: uint8 <= 20/254 = {20 / 254:.4f} per component; rgb EPE <= "
                  f"2.6 * max_norm / 255 = {rgb_error_bound(20):.3f} at max_norm 20; float16 2**-11 relative)")

        if torch.cuda.is_available():
            print(f"\nCUDA ({torch.cuda.get_device_name()}): {args.gpu_pairs} pairs {args.size}x{args.size}, "
                  f"{args.updates} updates, random weights")
            print("| model | per-pair fp32 loop, fields/s | batched x{} fp16 autocast, fields/s | speed-up |"
                  .format(args.gpu_batch))
            print("|---|---:|---:|---:|")
            for name, slow, fast, ratio in gpu_ratios(args, folder):
                print(f"| {name} | {slow:.1f} | {fast:.1f} | {ratio:.1f}x {'(goal met)' if ratio >= GOAL else '(below goal)'} |")
        else:
            print("\nGPU part skipped: it needs a CUDA GPU (torch.cuda.is_available() is False). "
                  f"On one it compares batched fp16 RAFT with a per-pair fp32 loop (goal >= {GOAL:.0f}x).")


if __name__ == "__main__":
    main()
