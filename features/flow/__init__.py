"""Optical flow backends: pairs of RGB frames in, dense flow out, built by name.

Convention. A backend maps pairs of RGB uint8 frames ``first, second [n, H, W, 3]`` to flow
``[n, 2, H, W]`` float32 in pixels, channel 0 = x (right), 1 = y (down), such that
``first(p) ~ second(p + flow(p))`` (backward warping), as OpenCV's ``calcOpticalFlow*(prev,
next)`` and torchvision's ``raft(image1, image2)`` return it.

Built-ins (``build_flow_backend(name, weights=None, device="cpu", **options)``): ``dis`` (the
default) and ``farneback`` (:mod:`.opencv`), ``raft-small`` and ``raft-large`` (:mod:`.raft`).
Streaming over a long video in bounded memory: :func:`iter_flow`. Storage and colour-wheel
pictures: :mod:`cslr_pipe.features.codecs`. Speeds: docs/benchmarks.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.registry import Registry


class FlowBackend(ABC):
    """Turns pairs of frames into dense optical flow."""

    name: str = ""
    weights: Path | None = None  # the file its results depend on (its sha256 goes to provenance)

    @abstractmethod
    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """[n, H, W, 3] uint8 RGB twice -> [n, 2, H, W] float32 flow in pixels (x right, y down)
        with ``first[i](p) ~ second[i](p + flow[i](p))``."""

    def close(self) -> None:
        """Release what the backend holds (models, GPU memory); it is not used afterwards."""

    @classmethod
    def locate_weights(cls, weights: Path | None) -> Path | None:
        """The weights file this backend would use (raises MissingWeights), or None if it needs none."""
        return weights

    def __enter__(self) -> "FlowBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two frame batches as arrays; InputError unless both are [n, H, W, 3] uint8 of one shape."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.ndim != 4 or first.shape[-1] != 3:
        raise InputError(f"expected two [n, H, W, 3] arrays of one shape, got {first.shape} and {second.shape}")
    if first.dtype != np.uint8 or second.dtype != np.uint8:
        raise InputError(f"expected uint8 RGB frames, got {first.dtype} and {second.dtype}")
    return first, second


Factory = Callable[..., FlowBackend]  # (weights: Path | None, device: str, **options)

# Built-in backends by import path, so that importing this package imports none of their
# dependencies (OpenCV; torch and torchvision for RAFT).
BACKENDS = Registry("flow backend", {
    "dis": f"{__name__}.opencv:DISFlow",
    "farneback": f"{__name__}.opencv:FarnebackFlow",
    "raft-small": f"{__name__}.raft:RAFTSmall",
    "raft-large": f"{__name__}.raft:RAFTLarge",
})
register_flow_backend = BACKENDS.register  # plug in your own: factory(weights, device, **options)
flow_backend_names = BACKENDS.names
flow_backend_factory = BACKENDS.factory


def build_flow_backend(name: str, weights: str | Path | None = None, device: str = "cpu",
                       **options) -> FlowBackend:
    """Build a backend by name, with its weights file (if it needs one) and options."""
    return flow_backend_factory(name)(weights=Path(weights) if weights else None, device=device, **options)


def iter_flow(backend: FlowBackend | Callable[[np.ndarray, np.ndarray], np.ndarray],
              frame_chunks: Iterable[np.ndarray], batch: int = 64) -> Iterator[np.ndarray]:
    """Flow between consecutive frames of a video given as chunks [n_i, H, W, 3] (as
    ``iter_frames`` yields them): yields [m, 2, H, W] chunks, ``batch`` pairs each (the last may
    be shorter), T - 1 fields in all (none for a one-frame video). The last frame of each chunk is
    carried into the next, so memory is the chunk being read plus at most ``batch`` frames,
    however long the video. Empty chunks are skipped. To store the result:
    :func:`cslr_pipe.features.codecs.iter_encode_flow`."""
    if batch < 1:
        raise InputError("batch must be >= 1")
    pending: np.ndarray | None = None  # frames not yet used as the first of a pair, plus one
    for chunk in frame_chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim != 4:
            raise InputError(f"expected frame chunks [n, H, W, 3], got shape {chunk.shape}")
        if len(chunk) == 0:
            continue
        if pending is not None and pending.shape[1:] != chunk.shape[1:]:
            raise InputError(f"frame chunk of shape {chunk.shape[1:]} after frames of {pending.shape[1:]}")
        pending = chunk if pending is None else np.concatenate([pending, chunk])
        while len(pending) > batch:
            yield backend(pending[:batch], pending[1:batch + 1])
            pending = pending[batch:]
    if pending is not None and len(pending) > 1:
        yield backend(pending[:-1], pending[1:])
