"""What the OpenCV flow backends share: grey frames, one pair at a time, on the CPU."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.flow import FlowBackend, check_pairs


class OpenCVFlow(FlowBackend):
    """A backend over an OpenCV function of two grey frames; takes no weights."""

    def __init__(self, weights: Path | None = None, device: str = "cpu"):
        if weights:
            raise InputError(f"the {self.name} flow backend takes no weights (got {weights})")
        import cv2  # noqa: F401  (fail here, not on the first pair, if OpenCV is missing)

        self.device = "cpu"  # OpenCV's flow runs on the CPU whatever device the pipeline uses

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import cv2

        first, second = check_pairs(first, second)
        n, height, width, _ = first.shape
        out = np.empty((n, 2, height, width), np.float32)
        for i in range(n):
            g1 = cv2.cvtColor(first[i], cv2.COLOR_RGB2GRAY)
            g2 = cv2.cvtColor(second[i], cv2.COLOR_RGB2GRAY)
            out[i] = self._pair(g1, g2).transpose(2, 0, 1)
        return out

    @abstractmethod
    def _pair(self, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
        """Two grey frames [H, W] uint8 -> flow [H, W, 2] float32."""
