"""The "hrnet" pose backend: mmpose's HRNet-W48 COCO-WholeBody (DARK, 384x288) without mmpose.

It reproduces mmpose's top-down inference for one box per frame (by default the whole frame,
as CSLR corpora show one signer; this is also what mmpose's ``inference_topdown`` does without
boxes):

- box -> centre and scale: ``bbox_xyxy2cs(padding=1.25)``, then the scale is widened to the
  model's 3:4 (w:h) aspect (``TopdownAffine._fix_aspect_ratio``);
- crop: ``get_warp_matrix`` with rotation 0 and ``cv2.warpAffine`` (bilinear, black border) to
  288x384, RGB, ImageNet mean/std on 0-255 values;
- flip test (the config's ``flip_test=True, flip_mode='heatmap', shift_heatmap=True``): the crop
  is mirrored, its heatmaps mirrored back, left/right channels swapped, shifted one column to the
  right, and averaged with the heatmaps of the crop itself;
- DARK decoding (``MSRAHeatmap(unbiased=True, blur_kernel_size=11)``; mmpose 0.x, with which the
  checkpoint was trained and its published AP measured, used ``modulate_kernel=17``: pass
  ``blur_kernel=17`` for that), heatmap pixels times 4 to crop pixels, then back to frame pixels
  as mmpose does (``x / input_size * scale + centre - scale / 2``, the inverse of the warp).

A point whose heatmap maximum is not positive is reported as (0, 0, 0). Coordinates are not
clipped (as in mmpose): the crop is the frame padded by 1.25 and widened to 3:4, so a point can
lie outside the frame by up to the padding, e.g. ~21% of the height for a 512x600 portrait.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import cv2
import numpy as np
import torch

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.pose import PoseBackend
from cslr_pipe.features.pose.dark import decode_dark
from cslr_pipe.features.pose.hrnet import hrnet_w48_wholebody
from cslr_pipe.features.pose.wholebody import NUM_KEYPOINTS, flip_permutation
from cslr_pipe.features.weights import (CheckpointError, PublishedWeights, find_weights, load_state_dict,
                                        resolve_device)

# mmpose's checkpoint (torchvision publishes no whole-body model); the hash in its name is the start
# of its sha256 (mmpose's tools/misc/publish_model.py). Mean/std: ImageNet's, on 0-255 RGB as the
# 1.x config's data_preprocessor gives them (0.x: NormalizeTensor on [0, 1], the same values / 255).
WEIGHTS = PublishedWeights(
    file="hrnet_w48_coco_wholebody_384x288_dark-f5726563_20200918.pth",
    url="https://download.openmmlab.com/mmpose/top_down/hrnet/"
        "hrnet_w48_coco_wholebody_384x288_dark-f5726563_20200918.pth",
    mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), value_range=255.0,
    source="mmpose config td-hm_hrnet-w48_dark-8xb32-210e_coco-wholebody-384x288")
INPUT_SIZE = (288, 384)  # model input (w, h); heatmaps are 72x96
PADDING = 1.25  # mmpose's GetBBoxCenterScale default
BLUR_KERNEL = 11  # mmpose 1.x's DARK modulation kernel (MSRAHeatmap default); 0.x's config: 17


def box_center_scale(boxes: np.ndarray, padding: float = PADDING,
                     input_size: tuple[int, int] = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(x1, y1, x2, y2) boxes [..., 4] -> centres [..., 2] and scales (w, h) [..., 2]: the box
    times ``padding``, widened in one direction to the aspect of ``input_size``."""
    boxes = np.asarray(boxes, np.float64)
    center = (boxes[..., :2] + boxes[..., 2:]) * 0.5
    size = (boxes[..., 2:] - boxes[..., :2]) * padding
    w, h = size[..., 0], size[..., 1]
    aspect = input_size[0] / input_size[1]
    wide = w > h * aspect
    scale = np.stack([np.where(wide, w, h * aspect), np.where(wide, w / aspect, h)], axis=-1)
    return center, scale


def warp_matrix(center: np.ndarray, scale: np.ndarray,
                output_size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """The 2x3 affine taking the box (centre, scale) to ``output_size``: mmpose's
    ``get_warp_matrix`` with rotation 0 (one factor, ``output_w / scale_w``, on both axes)."""
    factor = output_size[0] / float(scale[0])
    return np.array([[factor, 0.0, output_size[0] * 0.5 - factor * float(center[0])],
                     [0.0, factor, output_size[1] * 0.5 - factor * float(center[1])]])


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points [..., 2] through a 2x3 affine matrix."""
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def flip_heatmaps(heatmaps: torch.Tensor, permutation: torch.Tensor | np.ndarray,
                  shift: bool = True) -> torch.Tensor:
    """Heatmaps of mirrored crops [N, K, H, W] -> heatmaps for the crops themselves (mmpose's
    ``flip_heatmaps(flip_mode='heatmap')``): mirror, swap left/right channels, and with ``shift``
    move one column right (column 0 is kept)."""
    flipped = heatmaps.flip(-1)[:, torch.as_tensor(permutation, device=heatmaps.device)]
    if shift:
        flipped[..., 1:] = flipped[..., :-1].clone()
    return flipped


def keypoints_from_heatmaps(heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray,
                            input_size: tuple[int, int] = INPUT_SIZE,
                            blur_kernel: int = BLUR_KERNEL) -> np.ndarray:
    """Heatmaps [n, K, H, W] of crops of boxes (centres, scales [n, 2]) -> [n, K, 3] float32
    (x, y, score) in frame pixels; (0, 0, 0) where a heatmap has no positive maximum."""
    heatmaps = np.asarray(heatmaps, np.float32)
    coords, scores = decode_dark(heatmaps, blur_kernel)  # [n, K, 2] heatmap pixels, [n, K]
    height, width = heatmaps.shape[-2:]
    input_size = np.asarray(input_size, np.float64)
    crop_xy = coords * (input_size / (width, height))  # crop pixels
    centers = np.asarray(centers, np.float64)[:, None]
    scales = np.asarray(scales, np.float64)[:, None]
    frame_xy = crop_xy / input_size * scales + centers - 0.5 * scales
    found = scores > 0
    keypoints = np.zeros(scores.shape + (3,), np.float32)
    keypoints[..., :2] = np.where(found[..., None], frame_xy, 0)
    keypoints[..., 2] = np.where(found, scores, 0)
    return keypoints


def model_state_dict(checkpoint: dict, expected, source: str | Path = "checkpoint") -> dict:
    """An mmpose checkpoint's tensors under this model's names: ``head.*`` (mmpose 1.x) becomes
    ``keypoint_head.*`` (0.x); any key missing or left over raises CheckpointError naming it."""
    state = {("keypoint_head." + key[len("head."):] if key.startswith("head.") else key): value
             for key, value in checkpoint.items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        raise CheckpointError(f"{source} is not an HRNet-W48 COCO-WholeBody checkpoint: "
                              f"{len(missing)} keys missing [{show(missing)}], "
                              f"{len(unexpected)} unexpected [{show(unexpected)}]")
    return state


class HRNetWholeBody(PoseBackend):
    """mmpose's HRNet-W48 DARK whole-body model in plain PyTorch; see the module docstring.

    ``box``: (x1, y1, x2, y2) in frame pixels used for every frame instead of the whole frame;
    ``__call__`` also takes per-frame ``boxes`` [n, 4]. ``padding``: box enlargement (mmpose 1.25);
    ``blur_kernel``: DARK modulation kernel (odd); ``precision``: ``auto`` (fp16 autocast on CUDA,
    fp32 elsewhere), ``fp32``, ``fp16`` or ``bf16`` (autocast on the backend's device).
    """

    name = "hrnet"

    @classmethod
    def locate_weights(cls, weights: Path | None) -> Path:
        return find_weights(weights, WEIGHTS.file, WEIGHTS.url)

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", flip_test: bool = True,
                 batch_size: int = 16, box=None, padding: float = PADDING, blur_kernel: int = BLUR_KERNEL,
                 precision: str = "auto"):
        path = self.locate_weights(weights)
        with torch.device("meta"):  # no memory, no random init: every tensor comes from the file
            model = hrnet_w48_wholebody(NUM_KEYPOINTS)
        state = model_state_dict(load_state_dict(path, (WEIGHTS,)), model.state_dict().keys(), path)
        model.load_state_dict({key: value.float() if value.is_floating_point() else value
                               for key, value in state.items()}, strict=True, assign=True)
        self._setup(model, device, flip_test, batch_size, box, padding, blur_kernel, precision)
        self.weights = path

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: str = "cpu", flip_test: bool = True,
                   batch_size: int = 16, box=None, padding: float = PADDING,
                   blur_kernel: int = BLUR_KERNEL, precision: str = "auto") -> HRNetWholeBody:
        """The same pipeline around a model in memory ([N, 3, 384, 288] -> [N, 133, 96, 72]), e.g.
        a fine-tuned one; ``weights`` is then None."""
        backend = cls.__new__(cls)
        backend._setup(model, device, flip_test, batch_size, box, padding, blur_kernel, precision)
        return backend

    def _setup(self, model, device, flip_test, batch_size, box, padding, blur_kernel, precision="auto") -> None:
        self.device = resolve_device(device)
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise InputError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        if precision == "auto":  # fp16 autocast on CUDA, fp32 elsewhere
            precision = "fp16" if self.device.startswith("cuda") else "fp32"
        self.precision = precision
        self.flip_test = bool(flip_test)
        self.batch_size = max(1, int(batch_size))
        self.box = None if box is None else np.asarray(box, np.float64).reshape(4)
        self.padding = float(padding)
        self.blur_kernel = int(blur_kernel)
        self.model = model.to(self.device).eval()
        self._mean = torch.tensor(WEIGHTS.mean, device=self.device).view(1, 3, 1, 1)  # on 0-255 values
        self._std = torch.tensor(WEIGHTS.std, device=self.device).view(1, 3, 1, 1)
        self._permutation = torch.as_tensor(flip_permutation(), device=self.device)

    def __call__(self, frames: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f"expected frames [n, H, W, 3], got shape {frames.shape}")
        n, height, width = frames.shape[:3]
        if boxes is None:
            box = self.box if self.box is not None else np.array([0.0, 0.0, width, height])
            boxes = np.broadcast_to(box, (n, 4))
        centers, scales = box_center_scale(np.asarray(boxes, np.float64).reshape(n, 4), self.padding)
        keypoints = np.zeros((n, NUM_KEYPOINTS, 3), np.float32)
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            crops = np.stack([cv2.warpAffine(np.ascontiguousarray(frames[i], dtype=np.uint8),
                                             warp_matrix(centers[i], scales[i]), INPUT_SIZE,
                                             flags=cv2.INTER_LINEAR)
                              for i in range(start, stop)])  # [b, 384, 288, 3] RGB
            keypoints[start:stop] = keypoints_from_heatmaps(self.predict_heatmaps(crops), centers[start:stop],
                                                            scales[start:stop], blur_kernel=self.blur_kernel)
        return keypoints

    def predict_heatmaps(self, crops: np.ndarray) -> np.ndarray:
        """[b, 384, 288, 3] uint8 RGB crops -> [b, 133, 96, 72] float32 heatmaps (flip-averaged)."""
        dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        autocast = (contextlib.nullcontext() if dtype is None
                    else torch.autocast(torch.device(self.device).type, dtype=dtype))
        with torch.inference_mode(), autocast:
            x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
            x = (x.permute(0, 3, 1, 2).float() - self._mean) / self._std  # [b, 3, 384, 288]
            b = x.shape[0]
            if self.flip_test:
                x = torch.cat([x, x.flip(-1)])  # [2b, 3, 384, 288]
            heatmaps = self.model(x).float()  # [b or 2b, 133, 96, 72]
            if self.flip_test:
                heatmaps = (heatmaps[:b] + flip_heatmaps(heatmaps[b:], self._permutation)) * 0.5
        return heatmaps.cpu().numpy()

    def close(self) -> None:
        self.model = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
