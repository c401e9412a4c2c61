"""The "farneback" flow backend: ``cv2.calcOpticalFlowFarneback`` on grey frames.

The OpenCV tutorial's parameters by default (``pyr_scale=0.5, levels=3, winsize=15,
iterations=3, poly_n=5, poly_sigma=1.2, flags=0``; each can be overridden). Accurate to ~0.01 px
for moderate motion, but fails beyond ~15-20 px per frame at 224x224, and 2-5x slower than DIS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.flow.opencv import OpenCVFlow


class FarnebackFlow(OpenCVFlow):
    """``cv2.calcOpticalFlowFarneback`` with the OpenCV tutorial's parameters (overridable)."""

    name = "farneback"
    DEFAULTS = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5,
                "poly_sigma": 1.2, "flags": 0}

    def __init__(self, weights: Path | None = None, device: str = "cpu", **params):
        super().__init__(weights, device)
        unknown = sorted(set(params) - set(self.DEFAULTS))
        if unknown:
            raise InputError(f"unknown Farneback parameters {unknown}; known: {sorted(self.DEFAULTS)}")
        self.params = {**self.DEFAULTS, **params}

    def _pair(self, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
        import cv2

        p = self.params
        return cv2.calcOpticalFlowFarneback(g1, g2, None, p["pyr_scale"], p["levels"], p["winsize"],
                                            p["iterations"], p["poly_n"], p["poly_sigma"], p["flags"])
