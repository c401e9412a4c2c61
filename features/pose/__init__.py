"""Whole-body pose backends: RGB frames in, COCO-WholeBody keypoints [n, 133, 3] out.

A backend is built once per shard by name (``build_pose_backend``) and then called on chunks of
frames. Its output is (x, y, score) in the pixels of the frames it was given, in the 133-point
order of :mod:`cslr_pipe.features.pose.wholebody`; a point it did not find has score 0 and
x = y = 0 (a position is never invented).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np

from cslr_pipe.features.registry import Registry


class PoseBackend(ABC):
    """Turns frames into whole-body keypoints."""

    name: str = ""
    weights: Path | None = None  # the file its results depend on (its sha256 goes to provenance)

    @abstractmethod
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """[n, H, W, 3] uint8 RGB -> [n, 133, 3] float32 (x, y, score) in those frames' pixels."""

    def begin_video(self) -> None:
        """Called before each video's first frame: forget tracking state of the previous one."""

    def close(self) -> None:
        """Release what the backend holds (graphs, sessions); it is not used afterwards."""

    @classmethod
    def locate_weights(cls, weights: Path | None) -> Path | None:
        """The weights file this backend would use (raises MissingWeights), or None if it needs none."""
        return weights


Factory = Callable[..., PoseBackend]  # (weights: Path | None, device: str, **options)

# Built-in backends by import path, so that importing this package imports none of their
# dependencies (MediaPipe, mmpose).
BACKENDS = Registry("pose backend", {
    "mediapipe": "cslr_pipe.features.pose.mediapipe_backend:MediaPipeHolistic",
    "hrnet": "cslr_pipe.features.pose.hrnet_backend:HRNetWholeBody",
    "mmpose": "cslr_pipe.features.pose.mmpose_backend:MMPoseWholeBody",
})
register_pose_backend = BACKENDS.register  # plug in your own: factory(weights, device, **options)
pose_backend_names = BACKENDS.names
pose_backend_factory = BACKENDS.factory


def build_pose_backend(name: str, weights: str | Path | None = None, device: str = "cpu",
                       **options) -> PoseBackend:
    """Build a backend by name, with its weights file (if it needs one) and options."""
    return pose_backend_factory(name)(weights=Path(weights) if weights else None, device=device, **options)
