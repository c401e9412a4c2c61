"""DARK heatmap decoding: sub-pixel keypoints from heatmaps (numpy, vectorised over [..., K, H, W]).

Zhang et al., "Distribution-Aware Coordinate Representation for Human Pose Estimation" (CVPR
2020), as mmpose decodes it (``get_heatmap_maximum`` + ``refine_keypoints_dark``):

1. the argmax of each heatmap and its value (the score);
2. modulation: blur each heatmap with a Gaussian kernel (zero padding outside the map; for
   ``kernel=11`` sigma 2, OpenCV's rule ``0.3 * ((kernel - 1) / 2 - 1) + 0.8``), rescale it to
   its original maximum, clamp at 1e-10 and take the log;
3. one Newton step on the log-heatmap at the argmax, ``offset = -H^-1 g``, with first and
   second derivatives from central differences (spacing 1 for the gradient, 2 for the
   diagonal of the Hessian, as mmpose does). A maximum within 2 px of the border, or a singular
   Hessian, keeps its integer position.

A heatmap whose maximum is <= 0 has no detection: its location is (-1, -1) as in mmpose.
Coordinates are in heatmap pixels, x along W and y along H.
"""

from __future__ import annotations

import numpy as np


def heatmap_maximum(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., H, W] -> locations [..., 2] (x, y) float32 and values [...]; (-1, -1) where value <= 0."""
    *lead, height, width = heatmaps.shape
    flat = heatmaps.reshape(*lead, height * width)
    index = flat.argmax(axis=-1)
    values = np.take_along_axis(flat, index[..., None], axis=-1)[..., 0]
    locations = np.stack([index % width, index // width], axis=-1).astype(np.float32)
    locations[values <= 0] = -1
    return locations, values


def gaussian_kernel(size: int) -> np.ndarray:
    """OpenCV's 1-D Gaussian for ``cv2.GaussianBlur(ksize=size, sigma=0)`` (sizes above 7)."""
    if size % 2 != 1:
        raise ValueError(f"blur kernel size must be odd, got {size}")
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


def gaussian_modulate(heatmaps: np.ndarray, kernel: int = 11) -> np.ndarray:
    """Blur [..., H, W] heatmaps (zero padded), each rescaled to keep its maximum (mmpose's
    ``gaussian_blur``); an all-zero map stays zero."""
    weights = gaussian_kernel(kernel).astype(np.float32)
    border = kernel // 2
    *lead, height, width = heatmaps.shape
    maps = heatmaps.reshape(-1, height, width).astype(np.float32)
    padded = np.pad(maps, ((0, 0), (border, border), (border, border)))
    windows = np.lib.stride_tricks.sliding_window_view
    blurred = windows(padded, kernel, axis=2) @ weights  # along W: [B, H + 2b, W]
    blurred = windows(blurred, kernel, axis=1) @ weights  # along H: [B, H, W]
    original_max = maps.max(axis=(1, 2))
    blurred_max = blurred.max(axis=(1, 2))
    nonzero = blurred_max != 0
    ratio = np.where(nonzero, original_max / np.where(nonzero, blurred_max, 1), 1)
    return (blurred * ratio[:, None, None].astype(np.float32)).reshape(*lead, height, width)


def refine_dark(locations: np.ndarray, heatmaps: np.ndarray, kernel: int = 11) -> np.ndarray:
    """One Newton step on the modulated log-heatmaps at integer ``locations`` [..., 2] (x, y)."""
    *lead, height, width = heatmaps.shape
    log_maps = np.log(np.maximum(gaussian_modulate(heatmaps, kernel), 1e-10)).reshape(-1, height * width)
    xy = locations.reshape(-1, 2)
    x, y = xy[:, 0].astype(np.int64), xy[:, 1].astype(np.int64)
    inside = (x > 1) & (x < width - 2) & (y > 1) & (y < height - 2)
    x, y = np.where(inside, x, 2), np.where(inside, y, 2)  # any valid index; result discarded

    def at(dx: int, dy: int) -> np.ndarray:
        index = (y + dy) * width + (x + dx)
        return np.take_along_axis(log_maps, index[:, None], axis=1)[:, 0].astype(np.float64)

    centre = at(0, 0)
    gx = 0.5 * (at(1, 0) - at(-1, 0))
    gy = 0.5 * (at(0, 1) - at(0, -1))
    hxx = 0.25 * (at(2, 0) - 2 * centre + at(-2, 0))
    hyy = 0.25 * (at(0, 2) - 2 * centre + at(0, -2))
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy ** 2
    use = inside & (det != 0)
    safe = np.where(use, det, 1.0)
    offset = -np.stack([hyy * gx - hxy * gy, hxx * gy - hxy * gx], axis=-1) / safe[:, None]
    refined = xy.astype(np.float64) + np.where(use[:, None], offset, 0.0)
    return refined.reshape(*lead, 2).astype(np.float32)


def decode_dark(heatmaps: np.ndarray, kernel: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """[..., K, H, W] heatmaps -> keypoints [..., K, 2] (x, y, heatmap pixels) and scores [..., K]."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    locations, scores = heatmap_maximum(heatmaps)
    return refine_dark(locations, heatmaps, kernel), scores
