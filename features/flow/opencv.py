"""OpenCV's classical flow backends, on grey frames, one pair at a time, on the CPU.

``dis`` (the default): Dense Inverse Search (Kroeger et al. 2016), ``preset="medium"``
(``ultrafast``, ``fast``, ``medium``); a few ms per 224x224 pair on one core. Optional overrides:
``finest_scale``, ``patch_size``, ``patch_stride``, ``gradient_descent_iterations``,
``variational_refinement_iterations``, ``use_spatial_propagation``.

``farneback``: ``cv2.calcOpticalFlowFarneback`` with the OpenCV tutorial's parameters by default
(``pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0``; each can
be overridden). Accurate to ~0.01 px for moderate motion, but fails beyond ~15-20 px per frame at
224x224, and 2-5x slower than DIS.
"""

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


class DISFlow(OpenCVFlow):
    """OpenCV's Dense Inverse Search flow (``cv2.DISOpticalFlow``): fast, the offline default."""

    name = "dis"
    PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}  # cv2.DISOPTICAL_FLOW_PRESET_*
    _SETTERS = {"finest_scale": "setFinestScale", "patch_size": "setPatchSize",
                "patch_stride": "setPatchStride",
                "gradient_descent_iterations": "setGradientDescentIterations",
                "variational_refinement_iterations": "setVariationalRefinementIterations",
                "use_spatial_propagation": "setUseSpatialPropagation"}

    def __init__(self, weights: Path | None = None, device: str = "cpu", preset: str = "medium",
                 **overrides):
        super().__init__(weights, device)
        import cv2

        if preset not in self.PRESETS:
            raise InputError(f"DIS preset must be one of {sorted(self.PRESETS)}, got {preset!r}")
        unknown = sorted(set(overrides) - set(self._SETTERS))
        if unknown:
            raise InputError(f"unknown DIS options {unknown}; known: {sorted(self._SETTERS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(self.PRESETS[preset])
        for option, value in overrides.items():
            getattr(self._dis, self._SETTERS[option])(value)

    def _pair(self, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return self._dis.calc(g1, g2, None)

    def close(self) -> None:
        self._dis = None


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
