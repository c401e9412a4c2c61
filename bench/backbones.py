"""Frozen backbone throughput (features/backbones.py): frames per CPU-second and frames/s wall.

    python bench/backbones.py --threads 1

(defaults: ``--backbones resnet18 resnet34 s3d --batch 32 --frames 256 --size 224 --device auto``;
on a GPU machine ``python bench/backbones.py --device cuda --frames 2048``.)

What is timed is what ``cslr-pipe cache-features --stream rgb`` does to one video: the backbone
built by ``build_backbone(name, "rgb", weights="none", device, batch_size=--batch)`` (random
weights: the compute of the real ones; no file is read or downloaded) and ``Backbone.features``
over the video's frames given in chunks of 64 (as the features stage reads them), preprocessing
included (uint8 frames -> resize 256x256 -> centre crop 224 -> [0, 1] -> mean/std -> network;
the result copied back to a numpy array). Input: ``--frames`` random uint8 RGB frames of
``--size`` x ``--size`` pixels, one video. S3D runs at its defaults (``--window`` 64,
``--context`` 32): a video longer than one window is computed in overlapping clips, so the
network sees more frames than the video has (printed: 1.75x for 256 frames, 2x in the long run).

Each backbone is warmed up first on a video of ``--warmup`` frames (not timed: first-call
allocations and oneDNN's per-shape kernel choices; by default the shape of the timed calls: one
batch for the ResNets, one clip of window + context frames for S3D), then the whole video is
timed once: process CPU time (``time.process_time``, all threads) and wall time
(``time.perf_counter``; features come back as numpy, so CUDA work is finished). Frames are input
video frames. The ratio is each row's wall frames/s over resnet18's (fp32, same device), measured
in the same run; resnet18 is always measured first. On CUDA every backbone gets two rows: fp32
and fp16 autocast (the backbones' ``precision="auto"`` on a GPU).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np
import torch

from cslr_pipe.features.backbones import RANDOM_INIT, RandomWeightsWarning, backbone_names, build_backbone
from cslr_pipe.features.weights import resolve_device

CHUNK = 64  # frames per chunk, as the features stage reads a video (pipeline/stages.py)
BASELINE = "resnet18"


def make_frames(count: int, size: int, seed: int = 0) -> np.ndarray:
    """[count, size, size, 3] uint8 random RGB frames."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), np.uint8)


def chunks(frames: np.ndarray):
    return (frames[i:i + CHUNK] for i in range(0, len(frames), CHUNK))


def s3d_network_frames(frames: int, window: int, context: int) -> int:
    """Frames S3DBackbone feeds its network for one video: padded to a multiple of 8, then one clip
    [s - context, s + window + context) per window start s, cut at the (padded) video's ends."""
    padded = -(-frames // 8) * 8
    return sum(min(s + window + context, padded) - max(0, s - context) for s in range(0, padded, window))


def options_of(name: str, args) -> dict:
    return {"window": args.window, "context": args.context} if name == "s3d" else {}


def label_of(name: str, args) -> str:
    if name == "s3d":
        return f"s3d (window {args.window}, context {args.context})"
    return f"{name} (batch {args.batch})"


def warmup_frames(name: str, args) -> int:
    """Untimed warm-up length: --warmup, else the input shape of the timed calls."""
    if args.warmup:
        return args.warmup
    return min(args.frames, args.window + args.context if name == "s3d" else args.batch)


def measure(name: str, precision: str, frames: np.ndarray, args) -> dict:
    """One backbone, one precision: warm-up, then the timed video."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # random weights on purpose
        backbone = build_backbone(name, "rgb", RANDOM_INIT, args.device, batch_size=args.batch,
                                  precision=precision, **options_of(name, args))
    with backbone:
        backbone.features(chunks(make_frames(warmup_frames(name, args), args.size, seed=1)))
        cpu, wall = time.process_time(), time.perf_counter()
        features = backbone.features(chunks(frames))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    expected = -(-len(frames) // backbone.temporal_stride)
    if features.shape != (expected, backbone.dim) or not np.isfinite(features).all():
        raise SystemExit(f"{name}: unexpected features {features.shape} (wanted ({expected}, {backbone.dim})) "
                         "or non-finite values")
    return {"cpu": cpu, "wall": wall, "per_cpu_s": len(frames) / cpu, "per_s": len(frames) / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet34", "s3d"],
                        choices=backbone_names(), help="backbones to time (resnet18 resnet34 s3d); "
                        "resnet18, the baseline, is always timed first")
    parser.add_argument("--batch", type=int, default=32,
                        help="batch_size (32, as cache-features builds backbones); per-frame models")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames of the timed video (256 on the CPU, 2048 on CUDA)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="frames of the untimed warm-up video (0: --batch; s3d: window + context)")
    parser.add_argument("--size", type=int, default=224, help="frame height and width in pixels (224)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (auto: cuda if available)")
    parser.add_argument("--window", type=int, default=64, help="s3d window in frames (64, its default)")
    parser.add_argument("--context", type=int, default=32, help="s3d context in frames (32, its default)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    cuda = args.device.startswith("cuda")
    if args.frames is None:
        args.frames = 2048 if cuda else 256
    if args.frames < 1 or args.warmup < 0 or args.batch < 1 or args.size < 1:
        raise SystemExit("--frames, --batch and --size must be >= 1, --warmup >= 0")
    names = [BASELINE] + [name for name in dict.fromkeys(args.backbones) if name != BASELINE]
    precisions = ["fp32", "fp16"] if cuda else ["fp32"]

    import torchvision

    device_name = torch.cuda.get_device_name(args.device) if cuda else (platform.processor() or platform.machine())
    print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"numpy {np.__version__}")
    print(f"device {args.device} ({device_name}), {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"settings: backbones {' '.join(names)}; batch {args.batch}; {args.frames} frames "
          f"{args.size}x{args.size} uint8 RGB (one video, chunks of {CHUNK}); warm-up "
          f"{', '.join(f'{name} {warmup_frames(name, args)}' for name in names)} frames; "
          f"random weights; precisions {', '.join(precisions)}"
          + (f"; s3d window {args.window}, context {args.context}" if "s3d" in names else ""))

    frames = make_frames(args.frames, args.size)
    rows = []
    start = time.perf_counter()
    for name in names:
        for precision in precisions:
            result = measure(name, precision, frames, args)
            rows.append((name, precision, result))
            print(f"  {name} {precision}: {args.frames} frames in {result['wall']:.1f} s wall, "
                  f"{result['cpu']:.1f} s CPU", flush=True)
    total = time.perf_counter() - start
    base = rows[0][2]["per_s"]

    print(f"\nFrozen backbones, rgb, {args.size}x{args.size} frames, preprocessing included, random weights, "
          f"{args.device}, {torch.get_num_threads()} thread(s); baseline: {BASELINE} fp32")
    threads = f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}"
    print(f"\n| backbone | precision | frames per CPU-second ({threads}) | frames/s wall | wall vs {BASELINE} |")
    print("|---|---|---:|---:|---:|")
    for name, precision, result in rows:
        shown = "fp16 autocast" if precision == "fp16" else precision
        print(f"| {label_of(name, args)} | {shown} | {result['per_cpu_s']:.1f} | {result['per_s']:.1f} | "
              f"{result['per_s'] / base:.2f}x |")
    if "s3d" in names:
        seen = s3d_network_frames(args.frames, args.window, args.context)
        print(f"\ns3d: the {args.frames}-frame video is {seen} frames through the network "
              f"({seen / args.frames:.2f}x: overlapping clips of window {args.window} + context {args.context} "
              "each side); frames/s counts video frames")
    print(f"\nmeasured in {total:.0f} s (warm-ups included); load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
