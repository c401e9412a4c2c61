"""Keypoint extraction speed per pose backend, on the synthetic signer at PHOENIX frame size.

    python bench/keypoints.py [--frames 48] [--hrnet-frames 4]

Backends: mediapipe (when installed), hrnet with random weights (same compute as the real
checkpoint) with and without flip test, mmpose (when installed; random weights). Prints frames/s
and each backend's speed relative to MediaPipe measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cslr_pipe.features.pose import build_pose_backend
from cslr_pipe.pipeline.synthetic import CorpusSpec, render_video


def frames_per_second(backend, frames: np.ndarray, chunk: int = 16) -> float:
    backend.begin_video()
    backend(frames[:1])  # warm-up: graph start, first allocations
    backend.begin_video()
    start = time.perf_counter()
    for i in range(0, len(frames), chunk):
        backend(frames[i:i + chunk])
    return len(frames) / (time.perf_counter() - start)


def random_hrnet_checkpoint(folder: Path) -> Path:
    """A checkpoint in mmpose's layout with random weights: same compute as the real one."""
    from cslr_pipe.features.pose.hrnet import hrnet_w48_wholebody

    model = hrnet_w48_wholebody()
    state = {("keypoint_head." + k[len("head."):]) if k.startswith("head.") else k: v
             for k, v in model.state_dict().items()}
    path = folder / "hrnet_w48_wholebody_random.pth"  # not the published name: that one is hash-checked
    torch.save({"state_dict": state}, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48, help="frames for mediapipe")
    parser.add_argument("--hrnet-frames", type=int, default=4, help="frames for hrnet (slow on CPU)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = CorpusSpec(height=260, width=210)  # PHOENIX-2014 frame size
    frames, _ = render_video(["HELLO", "MORE", "THANKS", "RAIN"], spec, np.random.default_rng(0))
    frames = np.resize(frames, (max(args.frames, args.hrnet_frames), *frames.shape[1:]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; frames 260x210 (h x w)")
    rows = []
    if importlib.util.find_spec("mediapipe"):
        rows.append(("mediapipe (Holistic, complexity 1)", frames_per_second(
            build_pose_backend("mediapipe"), frames[:args.frames])))
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_hrnet_checkpoint(Path(tmp))
        for flip in (False, True):
            backend = build_pose_backend("hrnet", weights, "cpu", flip_test=flip)
            rows.append((f"hrnet (HRNet-w48 384x288, DARK, flip test {'on' if flip else 'off'})",
                         frames_per_second(backend, frames[:args.hrnet_frames], chunk=4)))
    baseline = rows[0][1]
    print(f"\n{'backend':<58}{'frames/s':>10}{'vs first row':>14}")
    for name, fps in rows:
        print(f"{name:<58}{fps:>10.2f}{fps / baseline:>13.2f}x")


if __name__ == "__main__":
    main()
