"""Keypoint extraction speed per pose backend, on the synthetic signer at PHOENIX frame size.

    python bench/keypoints.py [--frames 48] [--hrnet-frames 4]
    python bench/keypoints.py --refine-hands   # MediaPipe's hand refinement on the real signing video

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


def refine_hands_on_real_video(repeats: int = 3) -> None:
    """MediaPipe Holistic without and with ``refine_hands`` on tests/data/real-signing/test_video.mp4:
    frames with a left/right hand, the added hands' wrist distance to the pose wrist (in shoulder
    widths; no reference annotation exists, so this is a consistency check) and seconds per frame."""
    from cslr_pipe.features.video import read_video

    frames = read_video(Path(__file__).parents[1] / "tests" / "data" / "real-signing" / "test_video.mp4")
    print(f"real signing video: {len(frames)} frames, {frames.shape[2]}x{frames.shape[1]} (w x h), "
          f"best of {repeats} runs")
    results = {}
    for refine in (False, True):
        backend = build_pose_backend("mediapipe", refine_hands=refine)
        best = float("inf")
        for _ in range(repeats):
            backend.begin_video()
            start = time.perf_counter()
            keypoints = backend(frames)
            best = min(best, time.perf_counter() - start)
        backend.close()
        results[refine] = keypoints, best / len(frames)
    plain = results[False][0]
    shoulder = np.linalg.norm(plain[:, 5, :2] - plain[:, 6, :2], axis=1)
    print(f"\n{'refine_hands':<14}{'left':>6}{'right':>7}{'any':>6}{'s/frame':>10}{'vs off':>8}"
          f"  added hands: wrist distance")
    for refine, (keypoints, seconds) in results.items():
        found = [(keypoints[:, hand, 2] > 0).any(axis=1) for hand in (range(91, 112), range(112, 133))]
        distances = [np.linalg.norm(keypoints[t, hand0, :2] - keypoints[t, wrist, :2]) / shoulder[t]
                     for side, hand0, wrist in ((0, 91, 9), (1, 112, 10))
                     for t in np.flatnonzero(found[side] & ~(plain[:, hand0:hand0 + 21, 2] > 0).any(axis=1))]
        text = (f"{len(distances)}, max {max(distances):.3f} shoulder widths" if distances else "none")
        print(f"{str(refine):<14}{found[0].sum():>6}{found[1].sum():>7}{(found[0] | found[1]).sum():>6}"
              f"{seconds:>10.4f}{seconds / results[False][1]:>7.2f}x  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48, help="frames for mediapipe")
    parser.add_argument("--hrnet-frames", type=int, default=4, help="frames for hrnet (slow on CPU)")
    parser.add_argument("--refine-hands", action="store_true",
                        help="only: MediaPipe without and with refine_hands on the real signing video")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.refine_hands:
        refine_hands_on_real_video()
        return
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
