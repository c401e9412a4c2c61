"""Keypoints [T, K, 3] -> Gaussian heatmaps [T, K', h, w], the keypoint-stream input of TwoStream-SLR.

Channel k of frame t holds, at row i and column j of the integer grid,

    exp(-((j - x')^2 + (i - y')^2) / (2 sigma^2)),   x' = x * w / W,   y' = y * h / H,

for the point's (x, y) in source pixels of a frame of size (H, W) (the SignVTCL supplementary's
formula: sigma 4, 112x112, TwoStream-SLR's 79 points; TwoStream-SLR's code draws on a larger grid
and resizes, below). The Gaussian is separable, so each
channel is the outer product gy[k] (x) gx[k] of two 1-D Gaussians gy [K, h] and gx [K, w]: 1-D
exponentials only, then one multiply per output value written straight into the output, in chunks
of frames, so work memory is a few [chunk, K, 112] factors whatever T is.

Undetected points (score <= ``threshold``; pose backends store them with score 0 at (0, 0)) and
points with a non-finite coordinate give all-zero channels; ``threshold=None`` ignores scores.
Points outside the frame are drawn where they fall (the visible tail of the Gaussian).

TwoStream-SLR's own code (SLRT ``gen_gaussian_hmap_op`` + ``RecognitionNetwork``) makes them
differently: it ignores scores (only its ``confidence=True``, which no config sets, would multiply
each map by the score, zeroed at or below ``threshold``; CSL-Daily's ``threshold: 0.5`` is never
read), so an undetected point draws a blob at the (0, 0) corner; it draws at a larger grid (the raw
frame, 260x210 for PHOENIX, or ``map_size`` 170x170 of the 512x512 CSL-Daily frames), sigma 8 in
that grid's pixels, then resizes to 112x112 with torchvision's bilinear ``Resize`` (a random resized
crop in training) and maps to [-1, 1] by ``(h - 0.5) / 0.5`` before its S3D. ``render_size`` and
``antialias`` give that drawing-then-resizing; :data:`PRESETS` name the combinations. The resize is
linear and separable, so it is applied to the 1-D factors (``gy @ Ry``, ``gx @ Rx`` with the
interpolation matrices of :func:`resize_weights`): the output is still one outer product per value.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, Sequence

import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.pose.wholebody import KEYPOINT_ORDERS

QUANT_SCALE = 255  # uint8 step: quantisation error <= 0.5 / 255 = 1/510

# Keyword sets of render_heatmaps / iter_heatmaps (channel order aside: SLRT's is points="twostream").
# "signvtcl": the SignVTCL supplementary's formula, sigma 4 drawn at 112 (the default rendering).
# "slrt-*": SLRT TwoStream-SLR's eval-time maps (before its (h - 0.5) / 0.5) with torchvision >= 0.17,
# whose Resize antialiases tensors; SLRT's own environment pins torchvision 0.10, which does not:
# add antialias=False for those (up to ~0.02 per pixel apart). They draw undetected points too.
PRESETS: dict[str, dict[str, Any]] = {
    "signvtcl": {"out_size": (112, 112), "sigma": 4.0, "threshold": 0.0, "render_size": None},
    # experiments/configs/TwoStream/phoenix-2014t_keypoint.yaml: raw_size [260, 210], sigma 8
    "slrt-phoenix": {"out_size": (112, 112), "sigma": 8.0, "threshold": None, "render_size": (260, 210),
                     "antialias": True},
    # csl-daily_keypoint.yaml: raw_size [512, 512], map_size [170, 170], sigma 8 (threshold 0.5 unread)
    "slrt-csl-daily": {"out_size": (112, 112), "sigma": 8.0, "threshold": None, "render_size": (170, 170),
                       "antialias": True},
}


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _point_indices(points: str | Sequence[int] | None) -> tuple[int, ...] | None:
    if points is None:
        return None
    if isinstance(points, str):
        if points not in KEYPOINT_ORDERS:
            raise InputError(f"unknown keypoint order {points!r}; known: {sorted(KEYPOINT_ORDERS)}")
        return tuple(KEYPOINT_ORDERS[points])
    return tuple(int(i) for i in points)


def resize_weights(in_size: int, out_size: int, antialias: bool = True) -> np.ndarray:
    """[in_size, out_size] float64 matrix R of bilinear resizing along one axis, as torch's
    ``interpolate(mode="bilinear", align_corners=False)`` (torchvision's tensor ``Resize``) does
    it: ``out = in @ R``. Antialiased when shrinking: a triangle filter ``scale`` = in / out
    input pixels wide either side of ``(i + 0.5) * scale``, normalised (PyTorch's ``*_aa`` kernels);
    otherwise the two taps around ``(i + 0.5) * scale - 0.5``, clamped at the borders.
    """
    scale, i = in_size / out_size, np.arange(out_size)
    weights = np.zeros((in_size, out_size))
    if antialias and scale > 1:
        centre, j = scale * (i + 0.5), np.arange(in_size)[:, None]
        lo = np.maximum((centre - scale + 0.5).astype(np.int64), 0)  # the kernel's window, as torch
        hi = np.minimum((centre + scale + 0.5).astype(np.int64), in_size)
        tri = np.maximum(1 - np.abs((j - centre + 0.5) / scale), 0) * ((j >= lo) & (j < hi))
        return tri / tri.sum(axis=0)
    src = np.maximum(scale * (i + 0.5) - 0.5, 0)
    lo = src.astype(np.int64)
    frac = src - lo
    np.add.at(weights, (lo, i), 1 - frac)
    np.add.at(weights, (np.minimum(lo + 1, in_size - 1), i), frac)
    return weights


def _prepare(keypoints, frame_size, out_size, threshold, points, dtype):
    """x', y' [T, K'] (0 where invalid) and validity [T, K'], the output's torch device (None: numpy)
    and dtype. On the CPU the small per-point arrays are numpy also for torch input: numpy's float32
    exp is faster than torch's dispatch on [chunk, K, 112] arrays, and CPU results are then identical."""
    if keypoints.ndim != 3 or keypoints.shape[-1] not in (2, 3):
        raise ValueError(f"keypoints must be [T, K, 3] (x, y, score), got shape {tuple(keypoints.shape)}")
    index = _point_indices(points)
    if index and not -keypoints.shape[1] <= min(index) <= max(index) < keypoints.shape[1]:
        raise ValueError(f"points index up to {max(index)}, but keypoints have {keypoints.shape[1]} points")
    (H, W), (h, w) = frame_size, out_size
    device = None
    if not _is_torch(keypoints):
        out_dtype = np.dtype(dtype or np.float32)
    else:
        import torch
        device = keypoints.device
        out_dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or torch.float32)
        if device.type == "cpu":
            keypoints = keypoints.detach().to(torch.float64).numpy()
    if device is None or device.type == "cpu":
        kp = np.asarray(keypoints, np.float64)
        kp = kp if index is None else kp[:, np.asarray(index, np.intp)]
        finite, where = np.isfinite, np.where
    else:
        compute = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
        kp = keypoints.detach().to(compute)
        kp = kp if index is None else kp[:, torch.as_tensor(index, dtype=torch.long, device=device)]
        finite, where = torch.isfinite, torch.where
    x, y = kp[..., 0] * (w / W), kp[..., 1] * (h / H)  # [T, K']
    valid = finite(x) & finite(y)
    if kp.shape[-1] == 3 and threshold is not None:
        valid = valid & (kp[..., 2] > threshold)
    return where(valid, x, 0.0), where(valid, y, 0.0), valid, device, out_dtype


def _factors(x, y, valid, out_size, sigma, float64_out, resize=None):
    """The 1-D Gaussians gy [c, K, h] (0 for invalid points) and gx [c, K, w] of x, y, valid [c, K].

    The exponent is formed in the coordinates' precision (float64 but on mps) and exponentiated
    in the factors' (float32 unless the output is float64): the error stays < 1e-7 absolute, and
    numpy's float32 exp is vectorised where its float64 one is not (~9x faster here).
    With ``resize`` (Ry [h, h'], Rx [w, w'], arrays like x), (h, w) = ``out_size`` is the drawing
    grid and the factors returned are gy @ Ry [c, K, h'] and gx @ Rx [c, K, w'].
    """
    (h, w), scale = out_size, -0.5 / (sigma * sigma)
    if isinstance(x, np.ndarray):
        lib, factor = np, (np.float64 if float64_out else np.float32)
        ry, rx = np.arange(h, dtype=x.dtype), np.arange(w, dtype=x.dtype)
    else:
        import torch
        lib, factor = torch, (torch.float64 if float64_out else torch.float32)
        ry = torch.arange(h, dtype=x.dtype, device=x.device)
        rx = torch.arange(w, dtype=x.dtype, device=x.device)
    dy, dx = ry - y[..., None], rx - x[..., None]  # [c, K, h], [c, K, w]
    gy = lib.exp((dy * dy * scale).astype(factor) if lib is np else (dy * dy * scale).to(factor))
    gx = lib.exp((dx * dx * scale).astype(factor) if lib is np else (dx * dx * scale).to(factor))
    gy *= valid[..., None]
    if resize is not None:
        ry, rx = (m.astype(gy.dtype) if lib is np else m.to(gy.dtype) for m in resize)
        gy, gx = gy @ ry, gx @ rx
    return gy, gx


def _outer(gy, gx, out) -> None:
    """out[c, K, i, j] = gy[c, K, i] * gx[c, K, j], written in place (computed in the factors' dtype)."""
    if _is_torch(out):
        import torch
        if isinstance(gy, np.ndarray):
            gy, gx = torch.from_numpy(gy), torch.from_numpy(gx)
        torch.mul(gy[..., :, None], gx[..., None, :], out=out)  # casts on write for float16/bfloat16
    else:  # frame by frame: numpy's 3-D einsum loop is ~20% faster than its 4-D one
        for gy_t, gx_t, out_t in zip(gy, gx, out):
            if out.dtype == gy.dtype:
                np.einsum("ki,kj->kij", gy_t, gx_t, out=out_t)
            else:
                np.multiply(gy_t[:, :, None], gx_t[:, None, :], out=out_t, casting="same_kind")


def _empty(shape, device, dtype):
    if device is None:
        return np.empty(shape, dtype)
    import torch
    if device.type == "cpu" and dtype in (torch.float32, torch.float16, torch.float64):
        # numpy's allocator asks for transparent huge pages (madvise) and torch's does not: first
        # writes into a fresh 254 MB chunk then cost ~1/4 of the page faults (about 4x faster here)
        return torch.from_numpy(np.empty(shape, str(dtype).removeprefix("torch.")))
    return torch.empty(shape, dtype=dtype, device=device)


def _chunks(keypoints, frame_size, out_size, sigma, threshold, points, chunk_size, dtype,
            render_size=None, antialias=True):
    """Yields (T, K', out dtype, device) once, then (start, stop, gy, gx) per chunk of frames."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    grid = tuple(int(n) for n in (render_size or out_size))
    if len(grid) != 2 or min(grid) < 1:
        raise InputError(f"render_size must be (height, width) >= 1, got {render_size}")
    x, y, valid, device, out_dtype = _prepare(keypoints, frame_size, grid, threshold, points, dtype)
    yield x.shape[0], x.shape[1], out_dtype, device
    float64_out = str(out_dtype).endswith("float64")
    resize = None
    if grid != tuple(out_size):
        resize = [resize_weights(n, m, antialias) for n, m in zip(grid, out_size)]
        if not isinstance(x, np.ndarray):
            import torch
            resize = [torch.from_numpy(m).to(x.device, x.dtype) for m in resize]
    for start in range(0, x.shape[0], chunk_size):
        stop = min(start + chunk_size, x.shape[0])
        part = slice(start, stop)
        yield (start, stop, *_factors(x[part], y[part], valid[part], grid, sigma, float64_out, resize))


def render_heatmaps(keypoints, frame_size: tuple[int, int], out_size: tuple[int, int] = (112, 112),
                    sigma: float = 4.0, threshold: float | None = 0.0, points: str | Sequence[int] | None = None,
                    chunk_size: int = 64, dtype=None, out=None, render_size: tuple[int, int] | None = None,
                    antialias: bool = True):
    """Render one Gaussian heatmap per keypoint and frame.

    :param keypoints: [T, K, 3] (x, y, score) in source pixels (numpy or torch; [T, K, 2] means all
        detected). A torch input's output lives on the same device.
    :param frame_size: (H, W) of the frames the keypoints refer to.
    :param out_size: (h, w) of the heatmaps.
    :param sigma: Gaussian standard deviation in pixels of the grid drawn on (``render_size`` if
        given, else the heatmaps).
    :param threshold: points with score <= threshold get an all-zero channel; None: scores are
        ignored, every finite point is drawn (SLRT's behaviour: undetected (0, 0) points too).
    :param points: keypoints to render, in this order: indices, or a name of ``KEYPOINT_ORDERS``
        ("twostream": TwoStream-SLR's 79-channel order; "wholebody": the same points sorted).
    :param chunk_size: frames per step; work memory is O(chunk_size * K' * (h + w)) beside the output.
    :param dtype: output dtype, default float32; float16 / bfloat16 (torch, for GPUs) are computed in
        float32 and rounded once on write.
    :param out: optional [T, K', h, w] array / tensor to write into (e.g. a slice of a batch, or a
        reused buffer: fresh memory costs page faults on first write); ``dtype`` is then its dtype.
    :param render_size: (h', w') to draw the Gaussians at, then resize to ``out_size`` bilinearly
        (torchvision's tensor ``Resize``: half-pixel centres); None: drawn at ``out_size``.
    :param antialias: the resize antialiases when it shrinks (torchvision >= 0.17's default).
    :return: [T, K', h, w] heatmaps (numpy, or torch on the input's device), values in [0, 1].

    ``render_heatmaps(kp, frame_size, points="twostream", **PRESETS[name])`` renders a preset.
    """
    chunks = _chunks(keypoints, frame_size, out_size, sigma, threshold, points, chunk_size,
                     dtype if out is None else out.dtype, render_size, antialias)
    T, K, out_dtype, device = next(chunks)
    if out is None:
        out = _empty((T, K, *out_size), device, out_dtype)  # [T, K', h, w]
    elif tuple(out.shape) != (T, K, *out_size) or _is_torch(out) != (device is not None):
        kind = "numpy array" if device is None else "tensor"
        raise ValueError(f"out must be a {kind} of shape {(T, K, *out_size)}, "
                         f"got {type(out).__name__} {tuple(out.shape)}")
    for start, stop, gy, gx in chunks:
        _outer(gy, gx, out[start:stop])
    return out


def iter_heatmaps(keypoints, frame_size: tuple[int, int], out_size: tuple[int, int] = (112, 112),
                  sigma: float = 4.0, threshold: float | None = 0.0, points: str | Sequence[int] | None = None,
                  chunk_size: int = 64, dtype=None, reuse: bool = False,
                  render_size: tuple[int, int] | None = None, antialias: bool = True) -> Iterator[Any]:
    """Heatmaps of consecutive chunks of frames, for callers that stream (a shard writer, a model).

    Arguments are those of :func:`render_heatmaps`; yields [<= chunk_size, K', h, w] arrays whose
    concatenation along frames equals ``render_heatmaps(...)``, so memory is bounded by a chunk
    (64 x 79 x 112 x 112 float32: 254 MB) however long the video. A ``for`` loop holds two at
    once (its variable keeps the last chunk while the next is made) unless ``reuse``: then every
    chunk is a view of one buffer that the next chunk overwrites (copy what you keep), which also
    spares the page faults of fresh memory (~2x faster on CPU).
    """
    chunks = _chunks(keypoints, frame_size, out_size, sigma, threshold, points, chunk_size, dtype,
                     render_size, antialias)
    T, K, out_dtype, device = next(chunks)
    buffer = _empty((min(chunk_size, T), K, *out_size), device, out_dtype) if reuse else None
    for start, stop, gy, gx in chunks:
        chunk = buffer[:stop - start] if reuse else _empty((stop - start, K, *out_size), device, out_dtype)
        _outer(gy, gx, chunk)  # [c, K', h, w]
        yield chunk
        del chunk


def quantize_heatmaps(heatmaps):
    """[..] floats in [0, 1] -> uint8 round(h * 255) (numpy or torch); round trip error <= 1/510.

    The bound is half a step of 1/255; the float32 product and the dequantising division add
    rounding below 1e-7. Values outside [0, 1] are clipped.
    """
    if _is_torch(heatmaps):
        import torch
        if heatmaps.dtype != torch.float64:
            heatmaps = heatmaps.to(torch.float32)  # float16's 11 bits cannot hold h * 255 exactly
        scaled = heatmaps * QUANT_SCALE
        return scaled.round_().clamp_(0, QUANT_SCALE).to(torch.uint8)
    heatmaps = np.asarray(heatmaps)
    scale = np.float64(QUANT_SCALE) if heatmaps.dtype == np.float64 else np.float32(QUANT_SCALE)
    scaled = np.multiply(heatmaps, scale, dtype=scale.dtype)
    return np.clip(np.rint(scaled, out=scaled), 0, QUANT_SCALE, out=scaled).astype(np.uint8)


def dequantize_heatmaps(quantized, dtype=None):
    """uint8 from :func:`quantize_heatmaps` -> q / 255 as float32 (or ``dtype``), numpy or torch."""
    if _is_torch(quantized):
        import torch
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or torch.float32)
        return quantized.to(dtype) / QUANT_SCALE
    return np.divide(quantized, QUANT_SCALE, dtype=np.dtype(dtype or np.float32))
