"""The "hrnet" pose backend: HRNet-W48 in plain PyTorch, DARK decoding, mmpose's crop geometry.

No trained weights can be downloaded here, so the checkpoint is the untrained model saved in the
layout of mmpose's published file; geometry is checked with a stand-in model that draws a
Gaussian where the crop is brightest.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from cslr_pipe.features.pose import build_pose_backend
from cslr_pipe.features.pose.dark import decode_dark, gaussian_modulate, heatmap_maximum
from cslr_pipe.features.pose.hrnet import hrnet_w48_wholebody
from cslr_pipe.features.pose.hrnet_backend import (
    WEIGHTS, HRNetWholeBody, apply_affine, box_center_scale, flip_heatmaps,
    keypoints_from_heatmaps, model_state_dict, warp_matrix)
from cslr_pipe.features.pose.wholebody import NUM_KEYPOINTS, flip_permutation
from cslr_pipe.features.store import sha256_file
from cslr_pipe.features.weights import CheckpointError, MissingWeights

# HRNet-W48 at 384x288 has 63.6M parameters (Sun et al. 2019, 17 COCO keypoints: 63,595,745);
# the 133-channel head adds 116 x 49 = 5,684.
PARAMETERS = 63_601_429
STATE_KEYS = 1754  # parameters and BatchNorm buffers, num_batches_tracked included


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = hrnet_w48_wholebody()
    for module in net.modules():  # livelier than mmpose's N(0, 0.001): heatmaps with structure
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return net.eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """The model saved like mmpose's 2020 file: {"meta", "state_dict": backbone.*, keypoint_head.*},
    named like it with its own sha256 prefix (checked when loaded: it must match)."""
    saved = tmp_path_factory.mktemp("weights") / "hrnet.tmp"
    torch.save({"meta": {"mmpose_version": "0.7.0", "epoch": 210}, "state_dict": model.state_dict()}, saved)
    return saved.rename(saved.parent / f"{WEIGHTS.stem}-{sha256_file(saved)[:8]}_20200918.pth")


@pytest.fixture(scope="module")
def backend(checkpoint) -> HRNetWholeBody:
    return build_pose_backend("hrnet", weights=checkpoint, device="cpu", flip_test=False, batch_size=2)


def test_model_layout_matches_mmpose_checkpoint(model):
    state = model.state_dict()
    assert len(state) == STATE_KEYS
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS
    assert all(key.startswith(("backbone.", "keypoint_head.final_layer.")) for key in state)
    shapes = {
        "backbone.conv1.weight": (64, 3, 3, 3),
        "backbone.bn2.running_var": (64,),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer1.3.conv3.weight": (256, 64, 1, 1),
        "backbone.transition1.0.0.weight": (48, 256, 3, 3),
        "backbone.transition1.1.0.0.weight": (96, 256, 3, 3),
        "backbone.transition3.3.0.1.num_batches_tracked": (),
        "backbone.stage2.0.branches.1.3.conv2.weight": (96, 96, 3, 3),
        "backbone.stage3.3.fuse_layers.2.0.1.0.weight": (192, 48, 3, 3),  # two strided convs
        "backbone.stage3.3.fuse_layers.0.2.0.weight": (48, 192, 1, 1),
        "backbone.stage4.2.branches.3.3.bn2.weight": (384,),
        "backbone.stage4.2.fuse_layers.0.3.1.bias": (48,),
        "keypoint_head.final_layer.weight": (133, 48, 1, 1),
        "keypoint_head.final_layer.bias": (133,),
    }
    assert {key: tuple(state[key].shape) for key in shapes} == shapes
    # the last module fuses into the stride-4 branch only; stage 2/3 modules fuse into all
    assert not any(key.startswith("backbone.stage4.2.fuse_layers.1.") for key in state)
    assert any(key.startswith("backbone.stage4.1.fuse_layers.3.") for key in state)
    assert not any("transition2.0" in key or "transition2.1" in key for key in state)


@pytest.mark.slow
def test_backend_runs_a_checkpoint_in_mmpose_layout(backend, checkpoint):
    assert isinstance(backend, HRNetWholeBody) and backend.name == "hrnet"
    assert backend.weights == checkpoint
    frames = np.random.default_rng(0).integers(0, 256, (2, 260, 210, 3), dtype=np.uint8)
    shapes = []
    hook = backend.model.register_forward_hook(lambda module, args, out: shapes.append(
        (tuple(args[0].shape), tuple(out.shape))))
    try:
        keypoints = backend(frames)
    finally:
        hook.remove()
    assert shapes == [((2, 3, 384, 288), (2, 133, 96, 72))]
    assert keypoints.shape == (2, NUM_KEYPOINTS, 3) and keypoints.dtype == np.float32
    assert np.isfinite(keypoints).all()
    found = keypoints[..., 2] > 0
    assert found.any()
    assert (keypoints[~found] == 0).all()
    # the padded whole-frame box: 210 x 260 -> 262.5 x 350 around the frame centre
    x, y = keypoints[found][:, 0], keypoints[found][:, 1]
    assert (x >= -26.25 - 1e-3).all() and (x <= 236.25 + 1e-3).all()
    assert (y >= -45 - 1e-3).all() and (y <= 305 + 1e-3).all()
    assert backend(frames[:0]).shape == (0, NUM_KEYPOINTS, 3)


@pytest.mark.slow
def test_mmpose_1x_head_names_load_too(model, tmp_path):
    renamed = {key.replace("keypoint_head.", "head.", 1): value for key, value in model.state_dict().items()}
    path = tmp_path / "hrnet_1x.pth"
    torch.save({"meta": {"mmpose_version": "1.3.2"}, "state_dict": renamed}, path)
    loaded = HRNetWholeBody(path, flip_test=False).model.state_dict()
    expected = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_missing_weights_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(MissingWeights, match="nowhere.pth"):
        HRNetWholeBody(tmp_path / "nowhere.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeights) as error:
        build_pose_backend("hrnet")
    assert WEIGHTS.file in str(error.value) and "download.openmmlab.com" in str(error.value)


def test_another_file_under_the_published_name_is_refused(checkpoint, tmp_path):
    published = tmp_path / WEIGHTS.file
    published.symlink_to(checkpoint)  # our random model, not mmpose's file
    with pytest.raises(CheckpointError) as error:
        HRNetWholeBody(published)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{published}: refused")
    assert "f5726563" in message and checkpoint.name.split("-")[-1][:8] in message and WEIGHTS.url in message


def test_key_mismatch_fails_loudly(tmp_path):
    keys = ["backbone.conv1.weight", "keypoint_head.final_layer.weight"]
    tensor = torch.zeros(1)
    assert model_state_dict({"backbone.conv1.weight": tensor, "head.final_layer.weight": tensor},
                            keys).keys() == set(keys)
    with pytest.raises(ValueError, match=r"1 unexpected \[backbone.extra\]"):
        model_state_dict({**dict.fromkeys(keys, tensor), "backbone.extra": tensor}, keys)
    with pytest.raises(ValueError, match=r"1 keys missing \[backbone.conv1.weight\]"):
        model_state_dict({"keypoint_head.final_layer.weight": tensor}, keys)
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(64, 3, 3, 3)}}, path)
    with pytest.raises(ValueError, match="partial.pth is not an HRNet-W48"):
        HRNetWholeBody(path)


def gaussian_map(cx: float, cy: float, sigma: float = 2.0, width: int = 72, height: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def test_dark_recovers_a_subpixel_centre():
    heatmap = gaussian_map(31.37, 40.81)[None, None]  # [1, 1, 96, 72]
    argmax, score = heatmap_maximum(heatmap)
    assert np.linalg.norm(argmax[0, 0] - (31.37, 40.81)) > 0.35
    coords, scores = decode_dark(heatmap)
    assert np.linalg.norm(coords[0, 0] - (31.37, 40.81)) < 0.05
    assert scores[0, 0] == score[0, 0] == heatmap.max()
    assert np.linalg.norm(decode_dark(heatmap, kernel=17)[0][0, 0] - (31.37, 40.81)) < 0.05  # mmpose 0.x
    # vectorised over [N, K]; a maximum within 2 px of the border is not refined; no maximum -> -1
    rng = np.random.default_rng(1)
    centres = rng.uniform((8, 8), (64, 88), size=(2, 5, 2))
    maps = np.stack([np.stack([gaussian_map(*c) for c in row]) for row in centres])
    maps[1, 3] = gaussian_map(1.2, 50.0)
    maps[1, 4] = -maps[1, 4]
    coords, scores = decode_dark(maps)
    assert coords.shape == (2, 5, 2) and scores.shape == (2, 5)
    assert np.abs(coords - centres)[:, :3].max() < 0.05 and np.abs(coords - centres)[0].max() < 0.05
    assert tuple(coords[1, 3]) == (1.0, 50.0)
    assert tuple(coords[1, 4]) == (-1.0, -1.0) and scores[1, 4] <= 0


def test_modulation_matches_opencv_blur():
    maps = np.random.default_rng(2).random((3, 96, 72), dtype=np.float32)
    expected = []
    for heatmap in maps:  # mmpose's gaussian_blur: zero border, cv2.GaussianBlur, rescale to max
        padded = cv2.GaussianBlur(np.pad(heatmap, 5), (11, 11), 0)[5:-5, 5:-5]
        expected.append(padded * heatmap.max() / padded.max())
    assert np.abs(gaussian_modulate(maps) - np.stack(expected)).max() < 1e-5


def test_affine_warp_and_its_inverse():
    center, scale = box_center_scale(np.array([0, 0, 210, 260]))  # a PHOENIX frame
    assert np.allclose(center, (105, 130)) and np.allclose(scale, (262.5, 350))
    center2, scale2 = box_center_scale(np.array([[10, 20, 50, 40]]), padding=1.0)
    assert np.allclose(center2, [(30, 30)]) and np.allclose(scale2, [(40, 160 / 3)])
    matrix = warp_matrix(center, scale)
    points = np.array([[0.0, 0.0], [209.0, 259.0], [33.3, 101.7]])
    back = apply_affine(apply_affine(points, matrix), cv2.invertAffineTransform(matrix))
    assert np.abs(back - points).max() < 1e-9
    assert np.allclose(apply_affine(center, matrix), (144, 192))  # centre to centre
    # cv2.warpAffine follows the matrix: a lit pixel lands where the matrix sends it
    frame = np.zeros((260, 210, 3), np.uint8)
    frame[101, 33] = 255
    crop = cv2.warpAffine(frame, matrix, (288, 384), flags=cv2.INTER_LINEAR)
    ys, xs = np.nonzero(crop[..., 0])
    weights = crop[ys, xs, 0].astype(float)
    assert np.allclose([xs @ weights / weights.sum(), ys @ weights / weights.sum()],
                       apply_affine([33, 101], matrix), atol=0.05)
    # decoding maps heatmap pixels (x4 to crop pixels) back through the inverse warp
    crop_xy = np.array([123.0, 211.0])
    heatmaps = np.zeros((1, NUM_KEYPOINTS, 96, 72), np.float32)
    heatmaps[0, :] = gaussian_map(*(crop_xy / 4))
    keypoints = keypoints_from_heatmaps(heatmaps, center[None], scale[None])
    expected = apply_affine(crop_xy, cv2.invertAffineTransform(matrix))
    assert np.abs(keypoints[0, :, :2] - expected).max() < 0.05 * 4 * 350 / 384
    assert np.allclose(keypoints[0, :, 2], heatmaps.max())


def test_flip_helper_mirrors_swaps_and_shifts():
    permutation = flip_permutation()
    rng = np.random.default_rng(3)
    columns = rng.integers(2, 70, NUM_KEYPOINTS)
    rows = rng.integers(0, 96, NUM_KEYPOINTS)
    heatmaps = torch.zeros(1, NUM_KEYPOINTS, 96, 72)
    heatmaps[0, np.arange(NUM_KEYPOINTS), rows, columns] = 1
    # what a mirror-consistent model sees in the mirrored crop: the left wrist where the right was
    mirrored = torch.zeros_like(heatmaps)
    mirrored[0, permutation, rows, 71 - columns] = 1
    assert torch.equal(flip_heatmaps(mirrored, permutation, shift=False), heatmaps)
    shifted = flip_heatmaps(mirrored, permutation)
    assert torch.equal(shifted[..., 1:], heatmaps[..., :-1])
    assert torch.equal(shifted[..., 0], heatmaps[..., 0])  # column 0 is kept, as in mmpose
    twice = flip_heatmaps(flip_heatmaps(heatmaps, permutation, shift=False), permutation, shift=False)
    assert torch.equal(twice, heatmaps)
    assert (permutation[permutation] == np.arange(NUM_KEYPOINTS)).all()


class BrightSpot(nn.Module):
    """A stand-in model: every heatmap is a sigma-2 Gaussian at the crop's brightness centroid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        brightness = (x[:, 0] * WEIGHTS.std[0] + WEIGHTS.mean[0]).clamp(min=0)  # [N, 384, 288]
        ys, xs = torch.meshgrid(torch.arange(384.0), torch.arange(288.0), indexing="ij")
        total = brightness.sum((1, 2))
        cx, cy = (brightness * xs).sum((1, 2)) / total / 4, (brightness * ys).sum((1, 2)) / total / 4
        hy, hx = torch.meshgrid(torch.arange(96.0), torch.arange(72.0), indexing="ij")
        maps = torch.exp(-((hx - cx[:, None, None]) ** 2 + (hy - cy[:, None, None]) ** 2) / 8)
        return maps[:, None].expand(-1, NUM_KEYPOINTS, -1, -1)


def test_geometry_end_to_end_and_flip_test():
    spots = np.array([[80.3, 150.6], [140.8, 60.2], [105.0, 130.0]])
    y, x = np.mgrid[0:260, 0:210]
    frames = np.stack([np.repeat((255 * np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / 32))[..., None], 3, -1)
                       for sx, sy in spots]).round().astype(np.uint8)
    fake = HRNetWholeBody.from_model(BrightSpot(), flip_test=False, batch_size=2)
    assert fake.weights is None
    plain = fake(frames)  # batches of 2 and 1
    assert np.abs(plain[..., :2] - spots[:, None]).max() < 0.3
    fake.flip_test = True
    flipped = fake(frames)
    # mmpose's shifted flip-back lands a quarter heatmap pixel right; averaged: +1/8 px = 0.5 crop px
    assert np.allclose(flipped[..., 0] - plain[..., 0], 0.5 * 262.5 / 288, atol=0.1)
    assert np.abs(flipped[..., 1] - plain[..., 1]).max() < 0.05
    fake.box = np.array([40.0, 100.0, 120.0, 200.0])  # a fixed box for every frame
    boxed = fake(frames[:1])
    assert np.abs(boxed[0, :, :2] - spots[0]).max() < 0.3


def test_precision_option():
    """fp32 by default on the CPU; bf16 autocast gives about the same points; anything else is refused."""
    spots = np.array([[80.3, 150.6]])
    y, x = np.mgrid[0:260, 0:210]
    frames = np.stack([np.repeat((255 * np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / 32))[..., None], 3, -1)
                       for sx, sy in spots]).round().astype(np.uint8)
    plain = HRNetWholeBody.from_model(BrightSpot(), flip_test=False)
    assert plain.precision == "fp32"
    half = HRNetWholeBody.from_model(BrightSpot(), flip_test=False, precision="bf16")
    assert np.abs(half(frames)[..., :2] - plain(frames)[..., :2]).max() < 1.0
    with pytest.raises(ValueError, match="precision"):
        HRNetWholeBody.from_model(BrightSpot(), precision="int8")
