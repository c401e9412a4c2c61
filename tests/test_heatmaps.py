"""features/heatmaps.py against the dense per-pixel Gaussian formula, and its presets against SLRT's steps."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from cslr_pipe.features import heatmaps
from cslr_pipe.features.heatmaps import (PRESETS, dequantize_heatmaps, iter_heatmaps, quantize_heatmaps,
                                         render_heatmaps)
from cslr_pipe.features.pose.wholebody import NUM_KEYPOINTS, SORTED_79, TWOSTREAM_79


def dense_reference(keypoints, frame_size, out_size, sigma=4.0, threshold=0.0):
    """The formula pixel by pixel over the whole grid, float64, zero for undetected points."""
    (H, W), (h, w) = frame_size, out_size
    kp = np.asarray(keypoints, np.float64)
    out = np.zeros((kp.shape[0], kp.shape[1], h, w))
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")  # [h, w] each
    for t in range(kp.shape[0]):
        for k in range(kp.shape[1]):
            x, y, score = kp[t, k]
            if score > threshold:
                xs, ys = x * w / W, y * h / H
                out[t, k] = np.exp(-((cols - xs) ** 2 + (rows - ys) ** 2) / (2 * sigma ** 2))
    return out


def random_keypoints(T, K, frame_size, seed=0, undetected=0.2, outside=0.1):
    """[T, K, 3] with some undetected points (0, 0, 0) and some just outside the frame."""
    rng = np.random.default_rng(seed)
    H, W = frame_size
    kp = np.stack([rng.uniform(0, W, (T, K)), rng.uniform(0, H, (T, K)), rng.uniform(0.05, 1, (T, K))], -1)
    far = rng.random((T, K)) < outside
    kp[far, 0] = rng.uniform(-30, W + 30, far.sum())
    kp[far, 1] = rng.choice([-12.0, H + 9.0], far.sum())
    kp[rng.random((T, K)) < undetected] = 0.0
    return kp.astype(np.float32)


@pytest.mark.parametrize("frame_size,out_size,threshold", [
    ((260, 210), (112, 112), 0.0),  # TwoStream-SLR's raw size
    ((480, 640), (56, 80), 0.5),  # non-square both ways, a threshold
    ((90, 120), (112, 112), 0.3),  # upscaling
])
def test_matches_dense_formula(frame_size, out_size, threshold):
    kp = random_keypoints(5, 13, frame_size)
    got = render_heatmaps(kp, frame_size, out_size, threshold=threshold)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == (5, 13, *out_size)
    want = dense_reference(kp, frame_size, out_size, threshold=threshold)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    dropped = kp[..., 2] <= threshold
    assert dropped.any() and (~dropped).any()
    assert not got[dropped].any() and got[~dropped].max(axis=(1, 2)).min() > 0


def test_sigma_and_non_finite_points():
    kp = random_keypoints(3, 6, (100, 100))
    np.testing.assert_allclose(render_heatmaps(kp, (100, 100), (40, 30), sigma=1.5),
                               dense_reference(kp, (100, 100), (40, 30), sigma=1.5), atol=1e-5)
    kp[0, 0] = (np.nan, 5.0, 1.0)
    kp[1, 2] = (3.0, np.inf, 1.0)
    out = render_heatmaps(kp, (100, 100), (40, 30))
    assert np.isfinite(out).all() and not out[0, 0].any() and not out[1, 2].any()


def test_points_without_scores_are_all_detected():
    kp = random_keypoints(2, 4, (64, 64), undetected=0)
    np.testing.assert_array_equal(render_heatmaps(kp[..., :2], (64, 64), (32, 32)),
                                  render_heatmaps(kp, (64, 64), (32, 32)))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64])
def test_chunked_equals_unchunked(chunk_size):
    kp = random_keypoints(7, 9, (120, 160), seed=1)
    whole = render_heatmaps(kp, (120, 160), (48, 40), chunk_size=10_000)
    np.testing.assert_array_equal(render_heatmaps(kp, (120, 160), (48, 40), chunk_size=chunk_size), whole)
    chunks = list(iter_heatmaps(kp, (120, 160), (48, 40), chunk_size=chunk_size))
    assert [len(c) for c in chunks] == [min(chunk_size, 7 - s) for s in range(0, 7, chunk_size)]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
    reused = [c.copy() for c in iter_heatmaps(kp, (120, 160), (48, 40), chunk_size=chunk_size, reuse=True)]
    np.testing.assert_array_equal(np.concatenate(reused), whole)


def test_render_into_out():
    kp = random_keypoints(4, 6, (100, 80), seed=7)
    batch = np.full((2, 4, 6, 20, 16), 7.0, np.float32)
    got = render_heatmaps(kp, (100, 80), (20, 16), out=batch[1])
    assert np.shares_memory(got, batch) and (batch[0] == 7).all()
    np.testing.assert_array_equal(batch[1], render_heatmaps(kp, (100, 80), (20, 16)))
    half = torch.empty(4, 6, 20, 16, dtype=torch.float16)
    assert render_heatmaps(torch.from_numpy(kp), (100, 80), (20, 16), out=half) is half
    with pytest.raises(ValueError):
        render_heatmaps(kp, (100, 80), (20, 16), out=np.empty((4, 6, 16, 20), np.float32))


def test_empty_sequence_and_bad_arguments():
    assert render_heatmaps(np.zeros((0, 5, 3)), (10, 10), (8, 8)).shape == (0, 5, 8, 8)
    assert list(iter_heatmaps(np.zeros((0, 5, 3)), (10, 10))) == []
    with pytest.raises(ValueError):
        render_heatmaps(np.zeros((3, 5)), (10, 10))
    with pytest.raises(ValueError):
        render_heatmaps(np.zeros((1, 5, 3)), (10, 10), chunk_size=0)
    with pytest.raises(ValueError):
        render_heatmaps(np.zeros((1, 5, 3)), (10, 10), points="nope")
    with pytest.raises(ValueError):
        render_heatmaps(np.zeros((1, 5, 3)), (10, 10), points="twostream")  # needs 133 points


def test_torch_cpu_matches_numpy():
    kp = random_keypoints(6, 11, (200, 150), seed=2)
    want = render_heatmaps(kp, (200, 150), (64, 48), threshold=0.2, chunk_size=4)
    got = render_heatmaps(torch.from_numpy(kp), (200, 150), (64, 48), threshold=0.2, chunk_size=4)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.device.type == "cpu"
    np.testing.assert_array_equal(got.numpy(), want)
    streamed = torch.cat(list(iter_heatmaps(torch.from_numpy(kp), (200, 150), (64, 48), threshold=0.2,
                                            chunk_size=4)))
    assert torch.equal(streamed, got)
    reused = [c.clone() for c in iter_heatmaps(torch.from_numpy(kp), (200, 150), (64, 48), threshold=0.2,
                                               chunk_size=4, reuse=True)]
    assert torch.equal(torch.cat(reused), got)
    half = render_heatmaps(torch.from_numpy(kp), (200, 150), (64, 48), threshold=0.2, dtype=torch.float16)
    assert half.dtype == torch.float16
    np.testing.assert_allclose(half.float().numpy(), want, rtol=0, atol=2e-3)


def test_device_path_without_a_gpu():
    """The torch code that runs off the CPU: its 1-D factors on CPU tensors, the rest on 'meta'."""
    rng = np.random.default_rng(8)
    x, y = rng.uniform(-20, 130, (2, 3, 5))
    valid = rng.random((3, 5)) < 0.7
    want = heatmaps._factors(x, y, valid, (40, 56), 4.0, False)
    got = heatmaps._factors(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(valid),
                            (40, 56), 4.0, False)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        np.testing.assert_allclose(g.numpy(), w, rtol=0, atol=2e-7)
    kp = torch.rand(5, NUM_KEYPOINTS, 3).to("meta")
    out = render_heatmaps(kp, (100, 100), points="twostream", chunk_size=2, dtype=torch.bfloat16)
    assert out.shape == (5, 79, 112, 112) and out.dtype == torch.bfloat16 and out.device.type == "meta"
    chunks = iter_heatmaps(kp, (100, 100), (8, 8), chunk_size=2, reuse=True)
    assert [c.shape[0] for c in chunks] == [2, 2, 1]


def test_twostream_order():
    kp = random_keypoints(2, NUM_KEYPOINTS, (256, 256), seed=3)
    out = render_heatmaps(kp, (256, 256), (32, 32), points="twostream")
    assert out.shape == (2, 79, 32, 32)
    for c, k in enumerate(TWOSTREAM_79):
        alone = render_heatmaps(kp, (256, 256), (32, 32), points=[k])
        np.testing.assert_array_equal(out[:, c], alone[:, 0])
    sorted_out = render_heatmaps(kp, (256, 256), (32, 32), points="wholebody")
    np.testing.assert_array_equal(sorted_out, out[:, [TWOSTREAM_79.index(k) for k in SORTED_79]])
    by_index = render_heatmaps(kp, (256, 256), (32, 32), points=list(SORTED_79))
    np.testing.assert_array_equal(by_index, sorted_out)


def test_peak_at_rounded_scaled_position():
    frame_size, out_size = (300, 400), (60, 100)
    kp = random_keypoints(4, 10, frame_size, seed=4, undetected=0, outside=0)
    out = render_heatmaps(kp, frame_size, out_size)
    for t in range(4):
        for k in range(10):
            i, j = np.unravel_index(out[t, k].argmax(), out_size)
            x = float(kp[t, k, 0]) * out_size[1] / frame_size[1]
            y = float(kp[t, k, 1]) * out_size[0] / frame_size[0]
            if min(abs(y % 1 - 0.5), abs(x % 1 - 0.5)) > 1e-3:  # no near-tie between two pixels
                assert (i, j) == (round(y), round(x))


def test_quantisation_round_trip():
    out = render_heatmaps(random_keypoints(4, 8, (100, 100), seed=5), (100, 100), (50, 50))
    q = quantize_heatmaps(out)
    assert q.dtype == np.uint8 and q.max() == 255
    back = dequantize_heatmaps(q)
    assert back.dtype == np.float32
    assert np.abs(back - out).max() <= 1 / 510 + 1e-7
    grid = np.linspace(0, 1, 100_001, dtype=np.float32)  # every half-step boundary region
    assert np.abs(dequantize_heatmaps(quantize_heatmaps(grid)) - grid).max() <= 1 / 510 + 1e-7
    qt = quantize_heatmaps(torch.from_numpy(out))
    assert qt.dtype == torch.uint8 and torch.equal(qt, torch.from_numpy(q))
    assert torch.equal(dequantize_heatmaps(qt), torch.from_numpy(back))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    kp = torch.from_numpy(random_keypoints(9, NUM_KEYPOINTS, (260, 210), seed=6))
    cpu = render_heatmaps(kp, (260, 210), points="twostream", chunk_size=4)
    gpu = render_heatmaps(kp.cuda(), (260, 210), points="twostream", chunk_size=4)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert (gpu.cpu() - cpu).abs().max().item() <= 1e-5
    half = render_heatmaps(kp.cuda(), (260, 210), points="twostream", dtype=torch.float16)
    assert half.dtype == torch.float16 and (half.float().cpu() - cpu).abs().max().item() <= 2e-3
    streamed = torch.cat(list(iter_heatmaps(kp.cuda(), (260, 210), points="twostream", chunk_size=4)))
    assert torch.equal(streamed, gpu)


# --- presets: SLRT TwoStream-SLR's heatmaps (utils/gen_gaussian.py + modelling/recognition.py) ------


def slrt_gen_gaussian(coords, raw_size, map_size=None, sigma=8.0):
    """SLRT's gen_gaussian_hmap_op as its configs call it (confidence unset: scores ignored), torch
    float32: [T, C, 3] -> [T, C, map_h, map_w], drawn on the map grid (the raw frame if no map_size)."""
    raw_h, raw_w = raw_size
    map_h, map_w = map_size or raw_size
    factor_h, factor_w = (map_h / raw_h, map_w / raw_w) if map_size else (1, 1)
    coords_y, coords_x = coords[..., 1] * factor_h, coords[..., 0] * factor_w
    y, x = torch.meshgrid(torch.arange(map_h), torch.arange(map_w), indexing="ij")
    grid = torch.stack([y, x], dim=0)  # [2, H, W]
    centre = torch.stack([coords_y, coords_x], dim=0)[..., None, None]  # [2, T, C, 1, 1]
    return torch.exp(-((grid[:, None, None] - centre) ** 2).sum(dim=0) / (2 * sigma ** 2))


def slrt_eval_heatmaps(keypoints, raw_size, map_size=None, antialias=None):
    """The 79 channels at raw/map size, then torchvision's Resize([112, 112]) as SLRT's eval does
    (antialias=None: Resize's own default), before its (h - 0.5) / 0.5."""
    coords = torch.from_numpy(keypoints[:, list(TWOSTREAM_79)]).float()
    maps = slrt_gen_gaussian(coords, raw_size, map_size)
    if antialias is None:
        return torchvision.transforms.Resize([112, 112])(maps).numpy()
    return TF.resize(maps, [112, 112], InterpolationMode.BILINEAR, antialias=antialias).numpy()


SLRT_CONFIGS = {  # preset: (frame size = SLRT's raw_size, its map_size)
    "slrt-phoenix": ((260, 210), None),  # phoenix-2014t_keypoint.yaml
    "slrt-csl-daily": ((512, 512), (170, 170)),  # csl-daily_keypoint.yaml
}


def test_installed_resize_antialiases_tensors():
    """The presets follow torchvision >= 0.17, whose Resize antialiases tensors by default."""
    assert inspect.signature(torchvision.transforms.Resize).parameters["antialias"].default is True
    assert all(PRESETS[name]["antialias"] for name in SLRT_CONFIGS)


@pytest.mark.parametrize("name", sorted(SLRT_CONFIGS))
@pytest.mark.parametrize("antialias", [None, False])  # False: SLRT's pinned torchvision 0.10
def test_slrt_presets_match_slrt_steps(name, antialias):
    frame_size, map_size = SLRT_CONFIGS[name]
    kp = random_keypoints(6, NUM_KEYPOINTS, frame_size, seed=11)
    kp[0, 92] = (0.0, 0.0, 0.0)  # an undetected point (hand channel 1): SLRT draws it at the corner
    want = slrt_eval_heatmaps(kp, frame_size, map_size, antialias)
    options = PRESETS[name] if antialias is None else {**PRESETS[name], "antialias": antialias}
    got = render_heatmaps(kp, frame_size, points="twostream", chunk_size=4, **options)
    assert got.shape == want.shape == (6, 79, 112, 112) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    channel = TWOSTREAM_79.index(92)
    assert got[0, channel, 0, 0] > 0.9 and got[0, channel, 0, 0] == got[0, channel].max()
    streamed = np.concatenate(list(iter_heatmaps(kp, frame_size, points="twostream", chunk_size=5, **options)))
    np.testing.assert_array_equal(streamed, got)
    on_torch = render_heatmaps(torch.from_numpy(kp), frame_size, points="twostream", chunk_size=4, **options)
    np.testing.assert_array_equal(on_torch.numpy(), got)


def test_signvtcl_preset_is_the_default_rendering():
    kp = random_keypoints(4, NUM_KEYPOINTS, (260, 210), seed=12)
    kp[0, 92] = (0.0, 0.0, 0.0)
    got = render_heatmaps(kp, (260, 210), points="twostream", **PRESETS["signvtcl"])
    np.testing.assert_array_equal(got, render_heatmaps(kp, (260, 210), points="twostream"))
    assert not got[0, TWOSTREAM_79.index(92)].any()  # undetected: not drawn
    np.testing.assert_allclose(got, dense_reference(kp[:, list(TWOSTREAM_79)], (260, 210), (112, 112)),
                               rtol=0, atol=1e-5)


def test_threshold_none_ignores_scores():
    kp = random_keypoints(3, 7, (100, 120), seed=13)
    ignored = kp.copy()
    ignored[..., 2] = 1.0
    np.testing.assert_array_equal(render_heatmaps(kp, (100, 120), (50, 60), threshold=None),
                                  render_heatmaps(ignored, (100, 120), (50, 60)))


@pytest.mark.parametrize("sizes", [(260, 112), (170, 112), (50, 112), (9, 4), (112, 112), (5, 1)])
def test_resize_weights_match_torch(sizes):
    n_in, n_out = sizes
    image = torch.from_numpy(np.random.default_rng(n_in).random((3, n_in, 7)))
    for antialias in (True, False):
        want = TF.resize(image, [n_out, 7], InterpolationMode.BILINEAR, antialias=antialias).numpy()
        got = np.einsum("ih,cij->chj", heatmaps.resize_weights(n_in, n_out, antialias), image.numpy())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_render_size_on_the_device_path_and_bad_sizes():
    kp = torch.rand(5, NUM_KEYPOINTS, 3).to("meta")
    out = render_heatmaps(kp, (260, 210), points="twostream", chunk_size=2, **PRESETS["slrt-phoenix"])
    assert out.shape == (5, 79, 112, 112) and out.device.type == "meta"
    with pytest.raises(ValueError):
        render_heatmaps(np.zeros((1, 5, 3)), (10, 10), render_size=(0, 10))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_slrt_preset_matches_cpu():
    kp = torch.from_numpy(random_keypoints(9, NUM_KEYPOINTS, (260, 210), seed=14))
    cpu = render_heatmaps(kp, (260, 210), points="twostream", **PRESETS["slrt-phoenix"])
    gpu = render_heatmaps(kp.cuda(), (260, 210), points="twostream", **PRESETS["slrt-phoenix"])
    assert gpu.device.type == "cuda" and (gpu.cpu() - cpu).abs().max().item() <= 1e-5
