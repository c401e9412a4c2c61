"""Flow over a whole video in bounded memory, from the chunks ``video.iter_frames`` yields."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.flow import FlowBackend


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
