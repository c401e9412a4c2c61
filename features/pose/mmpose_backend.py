"""The "mmpose" pose backend: HRNet-W48 COCO-WholeBody (DARK, 384x288) run by mmpose itself.

For users who have the OpenMMLab stack (mmpose 1.3, mmcv 2.1 with its compiled ops, mmengine);
installing it is a long build, see docs/install-mmpose.md. It runs the same model and checkpoint
as the built-in "hrnet" backend (plain PyTorch, no mmpose), through mmpose's own inference API:
``init_model`` on the config shipped inside the installed mmpose package, then
``inference_topdown`` with one whole-frame box per frame. It is the reference the "hrnet"
backend is checked against (bench/compare_mmpose.py).

mmpose is imported when the backend is built, never when this module is imported. The checkpoint
is found with :func:`cslr_pipe.features.weights.find_weights` (``--weights`` or the torch hub
cache; never downloaded) and loaded with ``weights_only=True``; mmpose's load hooks map the 2020
file's ``keypoint_head.*`` names to mmpose 1.x's ``head.*``.

Output as for every backend: [n, 133, 3] float32 (x, y, score) in frame pixels; a point whose
heatmap maximum is not positive is (0, 0, 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cslr_pipe.features.errors import MissingFileError
from cslr_pipe.features.pose import PoseBackend
from cslr_pipe.features.weights import find_weights, load_state_dict, resolve_device

CONFIG = "td-hm_hrnet-w48_dark-8xb32-210e_coco-wholebody-384x288.py"
CONFIG_DIR = "wholebody_2d_keypoint/topdown_heatmap/coco-wholebody"  # under mmpose's configs/
CHECKPOINT = "hrnet_w48_coco_wholebody_384x288_dark-f5726563_20200918.pth"
PUBLISHED = f"https://download.openmmlab.com/mmpose/top_down/hrnet/{CHECKPOINT}"
NUM_KEYPOINTS = 133
INSTALL_HINT = "docs/install-mmpose.md"


def import_mmpose():
    """mmpose's package and its ``init_model`` / ``inference_topdown``; a one-line ImportError
    naming the install recipe when mmpose (or mmcv with its compiled ops) is missing."""
    try:
        import mmpose
        from mmpose.apis import inference_topdown, init_model
    except ImportError as error:
        raise ImportError(
            f"the 'mmpose' pose backend needs mmpose 1.3 with full mmcv 2.1 (compiled ops), which "
            f"cannot be imported here ({error}); install them with the recipe in {INSTALL_HINT}, "
            "or use the 'hrnet' backend (the same model in plain PyTorch)") from error
    return mmpose, init_model, inference_topdown


def find_config(mmpose_module, config: str | Path | None = None) -> Path:
    """``config`` if given, else the whole-body HRNet config shipped in the installed mmpose
    (``mmpose/.mim/configs`` for a wheel, ``configs/`` beside the package for a source checkout)."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise MissingFileError(f"mmpose config {path} not found")
        return path
    package = Path(mmpose_module.__file__).resolve().parent
    roots = [package / ".mim" / "configs", package.parent / "configs"]
    for root in roots:
        if (root / CONFIG_DIR / CONFIG).is_file():
            return root / CONFIG_DIR / CONFIG
    for root in roots:
        found = sorted(root.rglob(CONFIG)) if root.is_dir() else []
        if found:
            return found[0]
    raise MissingFileError(f"{CONFIG} not found under {' or '.join(map(str, roots))}; "
                            "pass its path with the backend option config=...")


class MMPoseWholeBody(PoseBackend):
    """mmpose's own top-down inference of the HRNet-W48 whole-body model; see the module docstring.

    ``config``: the mmpose config file (default: the one in the installed mmpose);
    ``flip_test``: average with the mirrored crop, as the config does (mmpose's default).
    ``__call__`` also takes per-frame ``boxes`` [n, 4] (x1, y1, x2, y2) instead of whole frames.
    """

    name = "mmpose"

    @classmethod
    def locate_weights(cls, weights: Path | None) -> Path:
        return find_weights(weights, CHECKPOINT, PUBLISHED)

    def __init__(self, weights: str | Path | None = None, device: str = "cpu",
                 config: str | Path | None = None, flip_test: bool = True):
        mmpose, init_model, self._inference_topdown = import_mmpose()
        from mmengine.config import Config

        self.weights = self.locate_weights(Path(weights) if weights else None)
        self.device = resolve_device(device)
        self.flip_test = bool(flip_test)
        self.config = find_config(mmpose, config)
        cfg = Config.fromfile(str(self.config))
        cfg.model.test_cfg = dict(cfg.model.get("test_cfg") or {}, flip_test=self.flip_test)
        # No checkpoint here: init_model would torch.load it without weights_only; the state dict
        # is loaded below instead (init_model also drops the backbone's ImageNet init_cfg, so
        # nothing is fetched).
        model = init_model(cfg, None, device="cpu")
        model.load_state_dict(load_state_dict(self.weights), strict=True)
        self.model = model.to(self.device).eval()

    def __call__(self, frames: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames [n, H, W, 3], got shape {frames.shape}")
        n, height, width = frames.shape[:3]
        if boxes is None:
            boxes = np.broadcast_to(np.array([0, 0, width, height], np.float32), (n, 4))
        boxes = np.asarray(boxes, np.float32).reshape(n, 4)
        keypoints = np.zeros((n, NUM_KEYPOINTS, 3), np.float32)
        for i in range(n):
            bgr = np.ascontiguousarray(frames[i, ..., ::-1], dtype=np.uint8)  # mmpose reads BGR
            sample = self._inference_topdown(self.model, bgr, boxes[i:i + 1], bbox_format="xyxy")[0]
            xy = np.asarray(sample.pred_instances.keypoints[0], np.float32)  # [133, 2]
            score = np.asarray(sample.pred_instances.keypoint_scores[0], np.float32)  # [133]
            found = score > 0
            keypoints[i, :, :2] = np.where(found[:, None], xy, 0)
            keypoints[i, :, 2] = np.where(found, score, 0)
        return keypoints

    def close(self) -> None:
        self.model = None
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.empty_cache()
