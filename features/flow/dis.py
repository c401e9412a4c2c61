"""The "dis" flow backend (the default): OpenCV's Dense Inverse Search (Kroeger et al. 2016).

Grey frames, ``preset="medium"`` (``ultrafast``, ``fast``, ``medium``); a few ms per 224x224 pair
on one core. Optional overrides: ``finest_scale``, ``patch_size``, ``patch_stride``,
``gradient_descent_iterations``, ``variational_refinement_iterations``, ``use_spatial_propagation``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.flow.opencv import OpenCVFlow


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
