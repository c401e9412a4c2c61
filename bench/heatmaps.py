"""Keypoint heatmap rendering (features/heatmaps.py) against the dense per-pixel formula.

    python bench/heatmaps.py [--frames T] [--repeats R] [--long-frames N] [--gpu-frames G]

For T frames (64) of 133 random whole-body keypoints (10% undetected) rendered as TwoStream-SLR's
79 channels at 112x112, sigma 4, float32 output, best of R round-robin repeats
(the slow dense baselines: best of 2):

    (a)   baseline: the dense formula vectorised in numpy, meshgrid broadcast over [T, K, h, w]
          (what straightforward code does; numpy promotes it to float64, cast to float32 at the end)
    (a')  the dense formula kept in float32 throughout (a fairer, careful baseline)
    (a'') the dense formula in torch on CPU, as TwoStream-SLR's gen_gaussian_hmap_op computes it
    (b)   ours: render_heatmaps, numpy
    (b')  ours: render_heatmaps, numpy, into a preallocated out= (no page faults of fresh memory)
    (c)   ours: render_heatmaps, torch CPU
    (w)   floor: filling a preallocated [T, 79, 112, 112] float32 array (numpy), i.e. the writes
    (w')  floor: np.full of a fresh one (the writes + the page faults of new memory)

and, for the "slrt-phoenix" preset (SLRT TwoStream-SLR's eval-time maps: sigma 8 drawn at the
260x210 frame, scores ignored, resized to 112x112 by torchvision's antialiased bilinear Resize):

    (s)   baseline: SLRT's own steps in torch on CPU, gen_gaussian_hmap_op's dense formula at
          260x210 in SLRT's chunks of ceil(T / 16) frames, each resized by torchvision's Resize
    (p)   ours: render_heatmaps(**PRESETS["slrt-phoenix"]), numpy
    (p')  ours: the same, torch CPU

prints ms per frame, frames/s and the speed-ups (b)/(a), (c)/(a), (p)/(s) and (p')/(s); the
project's goal: >= 20x on CPU. With CUDA: torch GPU float32 / float16 throughput against the
memory-bandwidth floor (bytes
written per frame / write bandwidth measured here by filling and copying a large tensor). Last,
peak traced memory (tracemalloc, numpy) of an N-frame (2000) sequence streamed with iter_heatmaps
against rendering it all at once (done only when the machine has the memory free).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc

import math

import numpy as np
import torch
import torchvision

from cslr_pipe.features.heatmaps import PRESETS, iter_heatmaps, render_heatmaps
from cslr_pipe.features.pose.wholebody import NUM_KEYPOINTS, TWOSTREAM_79

GOAL = 20.0  # (b)/(a) and (c)/(a) speed-up wanted on CPU
FRAME_SIZE, OUT_SIZE, SIGMA, K = (260, 210), (112, 112), 4.0, len(TWOSTREAM_79)


def make_keypoints(T: int, seed: int = 0) -> np.ndarray:
    """[T, 133, 3] float32 random points inside the frame, 10% undetected (0, 0, 0)."""
    rng = np.random.default_rng(seed)
    H, W = FRAME_SIZE
    kp = np.stack([rng.uniform(0, W, (T, NUM_KEYPOINTS)), rng.uniform(0, H, (T, NUM_KEYPOINTS)),
                   rng.uniform(0.1, 1, (T, NUM_KEYPOINTS))], -1).astype(np.float32)
    kp[rng.random((T, NUM_KEYPOINTS)) < 0.1] = 0
    return kp


def dense_numpy(kp: np.ndarray) -> np.ndarray:
    """Baseline (a): straightforward vectorised numpy, [T, 79, h, w] float32."""
    (H, W), (h, w) = FRAME_SIZE, OUT_SIZE
    kp = kp[:, list(TWOSTREAM_79)]
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = kp[..., 0] * w / W
    y = kp[..., 1] * h / H
    d2 = (cols - x[..., None, None]) ** 2 + (rows - y[..., None, None]) ** 2
    heatmaps = np.exp(-d2 / (2 * SIGMA ** 2)) * (kp[..., 2] > 0)[..., None, None]
    return heatmaps.astype(np.float32)


def dense_numpy_f32(kp: np.ndarray) -> np.ndarray:
    """(a'): the same, every array float32."""
    (H, W), (h, w) = FRAME_SIZE, OUT_SIZE
    kp = kp[:, list(TWOSTREAM_79)]
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    x = kp[..., 0] * np.float32(w / W)
    y = kp[..., 1] * np.float32(h / H)
    d2 = (cols - x[..., None, None]) ** 2 + (rows - y[..., None, None]) ** 2
    d2 *= np.float32(-1 / (2 * SIGMA ** 2))
    heatmaps = np.exp(d2, out=d2)
    heatmaps *= (kp[..., 2] > 0)[..., None, None]
    return heatmaps


def dense_torch(kp: torch.Tensor) -> torch.Tensor:
    """(a''): TwoStream-SLR's gen_gaussian_hmap_op formula (score mask added), [T, 79, h, w]."""
    (H, W), (h, w) = FRAME_SIZE, OUT_SIZE
    kp = kp[:, list(TWOSTREAM_79)]
    y, x = torch.meshgrid(torch.arange(h, device=kp.device), torch.arange(w, device=kp.device),
                          indexing="ij")
    coords = torch.stack([kp[..., 1] * h / H, kp[..., 0] * w / W], dim=0)  # [2, T, K]
    grid = torch.stack([y, x], dim=0)  # [2, h, w]
    d2 = ((grid[:, None, None] - coords[..., None, None]) ** 2).sum(dim=0)  # [T, K, h, w]
    return torch.exp(-d2 / (2 * SIGMA ** 2)) * (kp[..., 2] > 0)[..., None, None]


def slrt_steps(kp: torch.Tensor) -> torch.Tensor:
    """(s): SLRT's gen_gaussian_hmap_op (raw_size 260x210, no map_size, sigma 8, scores ignored)
    on chunks of ceil(T / 16) frames as its generate_batch_heatmap splits them, each resized to
    112x112 by torchvision's Resize (eval), [T, 79, 112, 112] float32."""
    (H, W), sigma = FRAME_SIZE, PRESETS["slrt-phoenix"]["sigma"]
    y, x = torch.meshgrid(torch.arange(H, device=kp.device), torch.arange(W, device=kp.device), indexing="ij")
    grid = torch.stack([y, x], dim=0)  # [2, H, W]
    resize = torchvision.transforms.Resize(list(OUT_SIZE))
    out = []
    for chunk in torch.split(kp[:, list(TWOSTREAM_79)], math.ceil(len(kp) / 16)):
        coords = torch.stack([chunk[..., 1], chunk[..., 0]], dim=0)  # [2, t, K]
        hmap = torch.exp(-((grid[:, None, None] - coords[..., None, None]) ** 2).sum(dim=0) / (2 * sigma ** 2))
        out.append(resize(hmap))
    return torch.cat(out)


def best_times(fns: dict, repeats: int, sync=lambda: None) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` round-robin runs (the first is a warm-up too).

    Round-robin, so a slow spell of the machine (other tenants) hits every measurement alike.
    """
    sync()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return 0


def traced_peak(fn) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def gpu_section(frames: int, repeats: int, device: str = "cuda") -> None:
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else device
    print(f"\n{name}, {frames} frames, best of {repeats}")
    big = torch.empty(1 << 30, dtype=torch.uint8, device=dev)  # 1 GiB
    other = torch.empty_like(big)
    t = best_times({"fill": lambda: big.fill_(1), "copy": lambda: other.copy_(big)}, max(repeats, 5), sync)
    fill_bw, copy_bw = big.numel() / t["fill"], 2 * big.numel() / t["copy"]  # copy: read + write
    print(f"measured bandwidth: fill (write) {fill_bw / 1e9:.0f} GB/s, "
          f"copy (read+write) {copy_bw / 1e9:.0f} GB/s")
    del big, other
    kp = torch.from_numpy(make_keypoints(frames, seed=1)).to(dev)
    fns = {}
    for dtype, name in ((torch.float32, "fp32"), (torch.float16, "fp16")):
        for chunk in (64, 256, frames):
            fns[f"{name} chunk {chunk}"] = (lambda d=dtype, c=chunk: render_heatmaps(
                kp, FRAME_SIZE, OUT_SIZE, SIGMA, points="twostream", chunk_size=c, dtype=d))
    fns["dense torch fp32 (a'')"] = lambda: dense_torch(kp)
    fns["slrt-phoenix fp32 chunk 64"] = lambda: render_heatmaps(kp, FRAME_SIZE, points="twostream",
                                                                **PRESETS["slrt-phoenix"])
    fns["SLRT's steps fp32 (s)"] = lambda: slrt_steps(kp)
    t = best_times(fns, repeats, sync)
    print(f"{'measurement':<28}{'ms/frame':>10}{'frames/s':>12}{'floor ms/frame':>16}{'of floor':>10}")
    for name, seconds in t.items():
        bytes_per_value = 2 if name.startswith("fp16") else 4
        floor = K * OUT_SIZE[0] * OUT_SIZE[1] * bytes_per_value / max(fill_bw, copy_bw / 2)
        per_frame = seconds / frames
        print(f"{name:<28}{per_frame * 1e3:>10.4f}{1 / per_frame:>12.0f}"
              f"{floor * 1e3:>16.4f}{floor / per_frame:>10.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=64, help="frames per measurement (64)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="repeats per measurement, best kept (5; the dense baselines: 2)")
    parser.add_argument("--long-frames", type=int, default=2000, help="frames of the memory test (2000)")
    parser.add_argument("--gpu-frames", type=int, default=1024, help="frames of the GPU measurement (1024)")
    args = parser.parse_args(argv)
    T = args.frames
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs")
    print(f"{T} frames x {K} points -> {OUT_SIZE[0]}x{OUT_SIZE[1]}, sigma {SIGMA}, float32; "
          f"best of {args.repeats}")

    kp = make_keypoints(T)
    kp_t = torch.from_numpy(kp)
    check, check_t = kp[:8], kp_t[:8]  # all methods agree (on a few frames, to save time)
    ref = dense_numpy(check)
    for name, got in (("(a')", dense_numpy_f32(check)), ("(a'')", dense_torch(check_t).numpy()),
                      ("(b)", render_heatmaps(check, FRAME_SIZE, points="twostream")),
                      ("(c)", render_heatmaps(check_t, FRAME_SIZE, points="twostream").numpy())):
        err = float(np.abs(got - ref).max())
        assert err <= 1e-5, f"{name} differs from (a) by {err}"
    slrt_ref = slrt_steps(check_t).numpy()
    for name, got in (("(p)", render_heatmaps(check, FRAME_SIZE, points="twostream", **PRESETS["slrt-phoenix"])),
                      ("(p')", render_heatmaps(check_t, FRAME_SIZE, points="twostream",
                                               **PRESETS["slrt-phoenix"]).numpy())):
        err = float(np.abs(got - slrt_ref).max())
        assert err <= 1e-4, f"{name} differs from SLRT's steps (s) by {err}"
        print(f"{name} slrt-phoenix preset vs SLRT's steps (s): max |difference| {err:.1e}")
    floor_out = np.empty((T, K, *OUT_SIZE), np.float32)
    t = best_times({  # the dense baselines are slow and their noise small: best of 2
        "a": lambda: dense_numpy(kp),
        "a1": lambda: dense_numpy_f32(kp),
        "a2": lambda: dense_torch(kp_t),
        "s": lambda: slrt_steps(kp_t),
    }, min(args.repeats, 2))
    t |= best_times({
        "b": lambda: render_heatmaps(kp, FRAME_SIZE, OUT_SIZE, SIGMA, points="twostream"),
        "b1": lambda: render_heatmaps(kp, FRAME_SIZE, OUT_SIZE, SIGMA, points="twostream", out=floor_out),
        "c": lambda: render_heatmaps(kp_t, FRAME_SIZE, OUT_SIZE, SIGMA, points="twostream"),
        "w": lambda: floor_out.fill(0.5),
        "w1": lambda: np.full((T, K, *OUT_SIZE), 0.5, np.float32),
        "p": lambda: render_heatmaps(kp, FRAME_SIZE, points="twostream", **PRESETS["slrt-phoenix"]),
        "p1": lambda: render_heatmaps(kp_t, FRAME_SIZE, points="twostream", **PRESETS["slrt-phoenix"]),
    }, args.repeats)
    rows = [("(a)   dense numpy, meshgrid [T,K,h,w] (float64 promoted) [baseline]", "a"),
            ("(a')  dense numpy, float32 throughout", "a1"),
            ("(a'') dense torch CPU (TwoStream-SLR formula)", "a2"),
            ("(b)   render_heatmaps, numpy", "b"),
            ("(b')  render_heatmaps, numpy, out= a preallocated array", "b1"),
            ("(c)   render_heatmaps, torch CPU", "c"),
            ("(w)   floor: fill a preallocated float32 [T,79,112,112]", "w"),
            ("(w')  floor: np.full, a fresh float32 [T,79,112,112]", "w1"),
            ("(s)   SLRT's steps, torch CPU: dense 260x210 + Resize [preset baseline]", "s"),
            ("(p)   render_heatmaps slrt-phoenix preset, numpy", "p"),
            ("(p')  render_heatmaps slrt-phoenix preset, torch CPU", "p1")]
    print(f"\n{'measurement':<70}{'ms/frame':>10}{'frames/s':>10}")
    for name, key in rows:
        print(f"{name:<70}{t[key] / T * 1e3:>10.3f}{T / t[key]:>10.0f}")
    print()
    for label, key in (("(b)/(a)  numpy renderer vs dense numpy", "b"),
                       ("(c)/(a)  torch CPU renderer vs dense numpy", "c")):
        ratio = t["a"] / t[key]
        print(f"{label:<46}{ratio:>7.1f}x  (goal >= {GOAL:.0f}x: {'MET' if ratio >= GOAL else 'NOT MET'})")
    for label, base, key in (("(b)/(a')  numpy renderer vs dense float32", "a1", "b"),
                             ("(c)/(a'') torch CPU renderer vs dense torch", "a2", "c"),
                             ("(p)/(s)   slrt-phoenix numpy vs SLRT's steps", "s", "p"),
                             ("(p')/(s)  slrt-phoenix torch vs SLRT's steps", "s", "p1")):
        print(f"{label:<46}{t[base] / t[key]:>7.1f}x")

    if torch.cuda.is_available():
        gpu_section(args.gpu_frames, args.repeats)
    else:
        print("\nGPU: no CUDA device; GPU rows pending a GPU machine")

    n = args.long_frames
    long_kp = make_keypoints(n, seed=2)
    whole_bytes = n * K * OUT_SIZE[0] * OUT_SIZE[1] * 4
    print(f"\npeak traced memory, {n} frames (output alone {whole_bytes / 2**20:.0f} MiB):")

    def stream(reuse):
        total = 0.0
        for chunk in iter_heatmaps(long_kp, FRAME_SIZE, OUT_SIZE, SIGMA, points="twostream", reuse=reuse):
            total += float(chunk[:, :, 56, 56].sum())  # stand-in for a shard write / model step
        return total

    for reuse in (False, True):
        start = time.perf_counter()
        peak = traced_peak(lambda: stream(reuse))
        print(f"  iter_heatmaps(chunk_size=64, reuse={reuse!s:<5})  peak {peak / 2**20:6.0f} MiB   "
              f"{(time.perf_counter() - start) / n * 1e3:.3f} ms/frame")
    if mem_available() > 1.5 * whole_bytes:
        start = time.perf_counter()
        peak = traced_peak(lambda: render_heatmaps(long_kp, FRAME_SIZE, OUT_SIZE, SIGMA,
                                                   points="twostream"))
        print(f"  render_heatmaps, all at once             peak {peak / 2**20:6.0f} MiB   "
              f"{(time.perf_counter() - start) / n * 1e3:.3f} ms/frame")
    else:
        print(f"  render_heatmaps, all at once: skipped ({mem_available() / 2**30:.1f} GiB available), "
              f"needs >= {whole_bytes / 2**20:.0f} MiB")
    print(f"  dense baseline (a) all at once would hold ~{3 * 2 * whole_bytes / 2**30:.0f} GiB "
          "of float64 temporaries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
