"""Check that the plain-PyTorch "hrnet" backend computes what mmpose computes.

Needs the mmpose stack (docs/install-mmpose.md) with cslr-pipe installed beside it
(``pip install --no-deps -e .``). No trained checkpoint can be downloaded here, so both backends
load the same randomly initialised model: mmpose builds it from its own config
(``init_model(config, None)``), its BatchNorm statistics and affine parameters are randomised
mildly (so that eval-mode BatchNorm is exercised), and its state dict is saved in the layout of
the published 2020 checkpoint (``backbone.*``, ``keypoint_head.final_layer.*``). Each backend
loads that file through its own loader.

On real photos (matplotlib's grace_hopper.jpg, whole and a landscape crop, so that both
directions of the 3:4 aspect fix are used), with flip test on and off, it compares:

- the model input (normalised crop) each side feeds its network;
- the raw heatmaps (mmpose's ``output_heatmaps``; flip-averaged when flip test is on);
- DARK decoding alone: mmpose's codec and ours on the very same heatmaps, next to mmpose's own
  codec run in float32 and in float64 (the noise floor: on the flat heatmaps of a random model
  DARK's Newton step is ill-conditioned and can move a point several heatmap pixels, so rounding
  matters there; results are also given for the points whose step stays within one pixel, as with
  a trained model's peaked heatmaps);
- the backends' keypoints (x, y in frame pixels) and scores;
- seconds per image.

    python bench/compare_mmpose.py [--out result.json] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def versions() -> dict:
    import mmcv
    import mmengine
    import mmpose
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "mmpose": mmpose.__version__, "mmcv": mmcv.__version__,
            "mmengine": mmengine.__version__}


def random_checkpoint(config: Path, path: Path, seed: int) -> Path:
    """mmpose's model from its config with random weights, saved like the 2020 checkpoint."""
    from mmpose.apis import init_model

    torch.manual_seed(seed)
    model = init_model(str(config), None, device="cpu")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                module.bias.copy_(0.1 * torch.randn(c, generator=generator))
    state = {("keypoint_head." + key[len("head."):] if key.startswith("head.") else key): value
             for key, value in model.state_dict().items() if not key.startswith("data_preprocessor.")}
    torch.save({"meta": {"note": "random init, compare_mmpose.py"}, "state_dict": state}, path)
    return path


def images() -> dict[str, np.ndarray]:
    """RGB photos: the whole grace_hopper.jpg (portrait) and a landscape crop of it."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        data = np.frombuffer(handle.read(), np.uint8)
    rgb = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    return {f"grace_hopper {w}x{h}": rgb,
            "landscape crop 400x250": np.ascontiguousarray(rgb[60:310, 56:456])}


def capture_inputs(module: torch.nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_pre_hook(lambda _m, args: store.append(args[0].detach().float().cpu()))


def mmpose_run(backend, rgb: np.ndarray):
    """mmpose's inference_topdown on one frame (as the backend calls it), with its heatmaps and
    the network input(s)."""
    from mmpose.apis import inference_topdown

    model = backend.model
    model.test_cfg["output_heatmaps"] = True
    inputs: list[torch.Tensor] = []
    handle = capture_inputs(model.backbone, inputs)
    try:
        h, w = rgb.shape[:2]
        sample = inference_topdown(model, np.ascontiguousarray(rgb[..., ::-1]),
                                   np.array([[0, 0, w, h]], np.float32), bbox_format="xyxy")[0]
    finally:
        handle.remove()
        model.test_cfg["output_heatmaps"] = False
    heatmaps = sample.pred_fields.heatmaps
    heatmaps = heatmaps.cpu().numpy() if torch.is_tensor(heatmaps) else np.asarray(heatmaps)
    return {"input": torch.cat(inputs).numpy(),  # [1 or 2, 3, 384, 288]: the crop, then its mirror
            "heatmaps": heatmaps[None].astype(np.float32),  # [1, 133, 96, 72]
            "keypoints": np.asarray(sample.pred_instances.keypoints, np.float32),  # [1, 133, 2]
            "scores": np.asarray(sample.pred_instances.keypoint_scores, np.float32)}  # [1, 133]


def hrnet_run(backend, rgb: np.ndarray):
    """Our backend's steps on one frame (as its __call__ runs them), with heatmaps and inputs."""
    from cslr_pipe.features.pose.hrnet_backend import INPUT_SIZE, box_center_scale, warp_matrix

    h, w = rgb.shape[:2]
    center, scale = box_center_scale(np.array([[0.0, 0.0, w, h]]), backend.padding)
    crop = cv2.warpAffine(rgb, warp_matrix(center[0], scale[0]), INPUT_SIZE, flags=cv2.INTER_LINEAR)
    inputs: list[torch.Tensor] = []
    handle = capture_inputs(backend.model, inputs)
    try:
        heatmaps = backend.predict_heatmaps(crop[None])
    finally:
        handle.remove()
    return {"input": torch.cat(inputs).numpy(), "heatmaps": heatmaps, "center": center, "scale": scale}


def mmpose_decode(backend, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mmpose's own codec (MSRAHeatmap, unbiased) on [1, K, H, W] heatmaps -> heatmap pixels."""
    codec = backend.model.head.decoder
    keypoints, scores = codec.decode(heatmaps[0].copy())
    return keypoints / codec.scale_factor, scores  # back from input to heatmap pixels


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def compare(seed: int = 0) -> dict:
    from cslr_pipe.features.pose.dark import decode_dark, heatmap_maximum
    from cslr_pipe.features.pose.hrnet_backend import HRNetWholeBody
    from cslr_pipe.features.pose.mmpose_backend import MMPoseWholeBody, find_config, import_mmpose

    mmpose, _, _ = import_mmpose()
    config = find_config(mmpose)
    results = {"date": datetime.date.today().isoformat(), "versions": versions(), "config": config.name,
               "seed": seed, "cases": []}
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = random_checkpoint(config, Path(folder) / "random-hrnet-w48-wholebody.pth", seed)
        for flip_test in (False, True):
            ours = HRNetWholeBody(weights=checkpoint, flip_test=flip_test, batch_size=1)
            theirs = MMPoseWholeBody(weights=checkpoint, flip_test=flip_test)
            for name, rgb in images().items():
                a, b = hrnet_run(ours, rgb), mmpose_run(theirs, rgb)
                start = time.perf_counter()
                kp_ours = ours(rgb[None])
                t_ours = time.perf_counter() - start
                start = time.perf_counter()
                kp_theirs = theirs(rgb[None])
                t_theirs = time.perf_counter() - start
                # DARK alone, on mmpose's heatmaps; and mmpose's own float32 vs float64 DARK, the
                # noise floor where the Newton step is ill-conditioned (flat random-weight maps)
                dark_ours, score_ours = decode_dark(b["heatmaps"])
                dark_theirs, score_theirs = mmpose_decode(theirs, b["heatmaps"])
                dark_theirs64, _ = mmpose_decode(theirs, b["heatmaps"].astype(np.float64))
                argmax_xy, _ = heatmap_maximum(b["heatmaps"])
                offset = np.abs(dark_theirs[0] - argmax_xy[0]).max(-1)  # DARK's step, heatmap px
                positive = score_theirs[0] > 0
                steady = positive & (offset <= 1)  # a step within one heatmap pixel
                found = (kp_ours[..., 2] > 0) & (kp_theirs[..., 2] > 0)
                same_found = bool(np.array_equal(kp_ours[..., 2] > 0, kp_theirs[..., 2] > 0))
                xy_all = np.abs(kp_ours[..., :2] - kp_theirs[..., :2]).max(-1)  # [1, 133]
                xy_diff = xy_all[found]
                xy_steady = xy_all[found & steady[None]]
                hm_scale = float(np.abs(b["heatmaps"]).max())
                case = {
                    "image": name, "flip_test": flip_test,
                    "input_max_abs_diff": max_abs(a["input"], b["input"]),
                    "heatmap_max_abs": hm_scale,
                    "heatmap_max_abs_diff": max_abs(a["heatmaps"], b["heatmaps"]),
                    "argmax_agree": float(np.mean(
                        a["heatmaps"].reshape(133, -1).argmax(-1) == b["heatmaps"].reshape(133, -1).argmax(-1))),
                    "dark_only_max_diff_heatmap_px": max_abs(dark_ours[0][score_theirs[0] > 0],
                                                             dark_theirs[0][score_theirs[0] > 0]),
                    "dark_only_score_max_diff": max_abs(score_ours[0], score_theirs[0]),
                    "mmpose_dark_f32_vs_f64_max_diff_heatmap_px": max_abs(dark_theirs[0][positive],
                                                                          dark_theirs64[0][positive]),
                    "dark_steps_over_1_heatmap_px": int((positive & (offset > 1)).sum()),
                    "dark_only_max_diff_heatmap_px_steps_le_1": max_abs(dark_ours[0][steady],
                                                                        dark_theirs[0][steady]),
                    "points_found": [int((kp_ours[..., 2] > 0).sum()), int((kp_theirs[..., 2] > 0).sum())],
                    "same_points_found": same_found,
                    "keypoint_max_diff_px": float(xy_diff.max()) if xy_diff.size else 0.0,
                    "keypoint_median_diff_px": float(np.median(xy_diff)) if xy_diff.size else 0.0,
                    "keypoints_over_0.01px": int((xy_diff > 0.01).sum()),
                    "keypoint_max_diff_px_steps_le_1": float(xy_steady.max()) if xy_steady.size else 0.0,
                    "score_max_diff": max_abs(kp_ours[..., 2], kp_theirs[..., 2]),
                    "mmpose_raw_vs_backend_px": max_abs(b["keypoints"][found], kp_theirs[..., :2][found]),
                    "seconds_hrnet": round(t_ours, 3), "seconds_mmpose": round(t_theirs, 3),
                }
                results["cases"].append(case)
                print(json.dumps(case), flush=True)
            ours.close()
            theirs.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = compare(args.seed)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"date": results["date"], "versions": results["versions"]}))


if __name__ == "__main__":
    main()
