"""Storage encodings: what the store keeps may be quantised; readers always get physical units.

A dataset's attribute ``encoding`` names how its values were stored (``raw`` when absent), and
:func:`decode_values` maps them back. Built in:

- ``linear`` (:func:`quantize_linear`): unsigned integer codes, ``value = code * scale + offset``;
  used for heatmaps and for ``uint8`` flow.
- ``flow-rgb``: colour-wheel images of optical flow with a per-frame ``max_norm`` attribute.

Flow storage (``encode_flow(flow, storage, bound)``; each is read back as [n, 2, H, W] float32
pixels by :func:`decode_flow` and by ``Cache.read``):

- ``uint8`` (default): x and y as two grey images, clipped to +-``bound`` (20 px) and quantised
  linearly with zero motion exactly code 128, step ``bound / 127`` (error <= bound / 254 per
  component inside +-bound: 0.079 px).
- ``float16``: raw half floats (error <= 2**-11 relative).
- ``rgb``: colour-wheel images [n, H, W, 3] uint8 like torchvision's ``flow_to_image`` (as
  SignVTCL stores flow), each frame normalised by ``max_norm = min(max |flow|, bound)`` rounded up to float16 and kept as the
  dataset attribute ``max_norm`` [n] (HDF5 keeps attributes under 64 KiB: ~32000 frames);
  end-point error <= :func:`rgb_error_bound` (~2.6 * max_norm / 255).

Why ``uint8`` is the default, and the stored sizes of each storage: docs/benchmarks.md,
"Optical flow".
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Iterator

import numpy as np

from cslr_pipe.features.errors import InputError

STORAGES = ("uint8", "float16", "rgb")
DEFAULT_STORAGE = "uint8"
DEFAULT_BOUND = 20.0  # px: two-stream pipelines clip flow to +-20 before quantising
RGB_ENCODING = "flow-rgb"

Decoder = Callable[[np.ndarray, dict], np.ndarray]
DECODERS: dict[str, Decoder] = {}  # encoding name -> decoder; the built-ins are added at the end


def register_decoder(name: str, decoder: Decoder) -> None:
    """Teach the reader a storage encoding (dataset attribute ``encoding``)."""
    DECODERS[name] = decoder


def decode_values(values: np.ndarray, attrs: dict, where: str = "dataset") -> np.ndarray:
    """Values stored with an encoding, and their dataset attributes -> physical units (raw values
    are read as they are, by :func:`cslr_pipe.features.store.decode`). An unknown encoding raises
    InputError naming ``where``."""
    encoding = attrs["encoding"]
    if encoding not in DECODERS:
        raise InputError(f"{where}: unknown encoding {encoding!r}; known: raw, {', '.join(sorted(DECODERS))}")
    return DECODERS[encoding](values, attrs)


# ---------------------------------------------------------------------------------------------
# linear: integer codes


def quantize_linear(values: np.ndarray, low: float, high: float, dtype=np.uint8) -> tuple[np.ndarray, dict]:
    """Clip to [low, high] and map linearly onto the full range of an unsigned integer type.

    Returns the codes and the dataset attributes that let the reader map them back
    (``value = code * scale + offset``; error <= scale / 2 inside the range).
    """
    levels = np.iinfo(dtype).max
    scale = (high - low) / levels
    codes = np.rint((np.clip(values, low, high) - low) / scale).astype(dtype)
    return codes, {"encoding": "linear", "scale": scale, "offset": low}


def _decode_linear(codes: np.ndarray, attrs: dict) -> np.ndarray:
    return codes.astype(np.float32) * np.float32(attrs["scale"]) + np.float32(attrs["offset"])



# ---------------------------------------------------------------------------------------------
# Colour wheel (Baker et al. 2007, as torchvision.utils.flow_to_image draws it)


@functools.cache
def _colour_wheel() -> np.ndarray:
    """The Middlebury colour wheel [55, 3], float32 0..255 (torchvision's ``_make_colorwheel``);
    made on first use, so reading other encodings never pays for it."""
    segments = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))
    wheel = np.zeros((sum(n for _, n in segments), 3), np.float32)
    col = 0
    for name, n in segments:
        ramp = np.floor(255 * np.arange(n) / n)
        rows = slice(col, col + n)
        if name == "RY":
            wheel[rows, 0], wheel[rows, 1] = 255, ramp
        elif name == "YG":
            wheel[rows, 0], wheel[rows, 1] = 255 - ramp, 255
        elif name == "GC":
            wheel[rows, 1], wheel[rows, 2] = 255, ramp
        elif name == "CB":
            wheel[rows, 1], wheel[rows, 2] = 255 - ramp, 255
        elif name == "BM":
            wheel[rows, 2], wheel[rows, 0] = 255, ramp
        else:  # MR
            wheel[rows, 2], wheel[rows, 0] = 255 - ramp, 255
        col += n
    return wheel


_WHEEL_STEPS = 54  # hue -> wheel position in [0, 54] (the wheel's 55 colours), as torchvision maps it


@functools.cache
def _wheel_sextants() -> dict[tuple[int, int], tuple[int, np.ndarray, np.ndarray]]:
    """(channel at 255, channel at 0) -> (varying channel, its values, wheel positions), values
    increasing, for inverting the wheel by linear interpolation: on the wheel one channel is
    always 255, one 0, and the third moves monotonically within each sixth."""
    R, G, B = 0, 1, 2
    sixths = (((R, B), 0, 15), ((G, B), 15, 21), ((G, R), 21, 25),  # red-yellow, yellow-green, green-cyan
              ((B, R), 25, 36), ((B, G), 36, 49), ((R, G), 49, 54))  # cyan-blue, blue-magenta, magenta-red
    out = {}
    for (top, low), start, stop in sixths:
        positions = np.arange(start, stop + 1, dtype=np.float64)
        colours = _colour_wheel()[start:stop + 1]
        assert (colours[:, top] == 255).all() and (colours[:, low] == 0).all()
        varying = 3 - top - low
        values = colours[:, varying].astype(np.float64)
        if values[-1] < values[0]:
            values, positions = values[::-1], positions[::-1]
        assert (np.diff(values) > 0).all()
        out[(top, low)] = (varying, values, positions)
    return out



def _norm(flow: np.ndarray) -> np.ndarray:
    return np.sqrt(np.square(flow[:, 0], dtype=np.float32) + np.square(flow[:, 1], dtype=np.float32))


def _as_fields(flow: np.ndarray) -> tuple[np.ndarray, bool]:
    flow = np.asarray(flow, np.float32)
    single = flow.ndim == 3
    if single:
        flow = flow[None]
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise InputError(f"expected flow [n, 2, H, W] or [2, H, W], got shape {flow.shape}")
    return flow, single


def _colorize(flow: np.ndarray, max_norm: np.ndarray) -> np.ndarray:
    """[n, 2, H, W] and per-frame norms [n] -> [n, H, W, 3] uint8, torchvision's formula
    (``floor(255 * (1 - norm * (1 - wheel(angle))))``) with norms above max_norm clipped to 1."""
    norm = _norm(flow)
    scale = np.where(max_norm > 0, max_norm, 1).astype(np.float32)[:, None, None]
    unit = np.minimum(norm / scale, 1, dtype=np.float32)
    angle = np.arctan2(-flow[:, 1], -flow[:, 0]).astype(np.float32) / np.float32(np.pi)
    position = (angle + 1) / 2 * _WHEEL_STEPS
    k0 = np.floor(position).astype(np.int64)
    fraction = (position - k0)[..., None]
    k1 = k0 + 1
    k1[k1 == _WHEEL_STEPS + 1] = 0
    wheel = _colour_wheel() / np.float32(255)
    colour = (1 - fraction) * wheel[k0] + fraction * wheel[k1]
    colour = 1 - unit[..., None] * (1 - colour)
    return np.floor(np.float32(255) * colour).astype(np.uint8)


def flow_to_color(flow: np.ndarray, max_norm: float | None = None) -> np.ndarray:
    """Flow [n, 2, H, W] (or [2, H, W]) -> colour-wheel pictures [n, H, W, 3] (or [H, W, 3]) uint8.

    Hue = direction, saturation = speed, as torchvision's ``flow_to_image``; each frame is
    normalised by its own largest norm, or all by ``max_norm`` px (speeds above it saturate).
    """
    flow, single = _as_fields(flow)
    norms = np.full(len(flow), max_norm, np.float32) if max_norm is not None else \
        _norm(flow).reshape(len(flow), -1).max(1, initial=0)
    images = _colorize(flow, norms)
    return images[0] if single else images


def flow_color_wheel(radius: int) -> np.ndarray:
    """The legend of :func:`flow_to_color`: [2r+1, 2r+1, 3] uint8 whose pixel at offset (dx, dy)
    from the centre has the colour of the flow (dx, dy) * m / r in a picture normalised to m px
    (x right, y down: the pixel above the centre is the colour of upward motion (0, -m)). The
    centre is white (no motion); pixels beyond the radius are saturated like speeds above m."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    return flow_to_color(np.stack([dx, dy]), max_norm=float(radius))


def _float16_ceil(values: np.ndarray) -> np.ndarray:
    """Values rounded up to the nearest float16 (so a stored norm is never below the true one)."""
    halves = np.asarray(values, np.float32).astype(np.float16)
    low = halves.astype(np.float32) < values
    halves[low] = np.nextafter(halves[low], np.float16(np.inf))
    return halves


def flow_to_rgb(flow: np.ndarray, bound: float | None = DEFAULT_BOUND) -> tuple[np.ndarray, np.ndarray]:
    """The ``rgb`` encoding: colour-wheel images [n, H, W, 3] uint8 and the per-frame norms [n]
    float16 that invert them (``min(max |flow|, bound)`` rounded up; norms above clipped)."""
    flow, _ = _as_fields(flow)
    largest = _norm(flow).reshape(len(flow), -1).max(1, initial=0)
    if bound is not None:
        largest = np.minimum(largest, np.float32(bound))
    max_norm = _float16_ceil(largest)
    return _colorize(flow, max_norm.astype(np.float32)), max_norm


def rgb_to_flow(images: np.ndarray, max_norm: np.ndarray | float) -> np.ndarray:
    """Invert :func:`flow_to_rgb`: [n, H, W, 3] uint8 and norms [n] -> [n, 2, H, W] float32 px.

    Each code is read as the middle of its quantisation step; saturation gives the norm (the
    wheel's smallest channel is 0, so it is 1 - min), the remaining colour the wheel position.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputError(f"expected [n, H, W, 3] uint8 flow images, got {images.shape} {images.dtype}")
    n = len(images)
    max_norm = np.broadcast_to(np.asarray(max_norm, np.float32).reshape(-1), (n,))
    codes = images.astype(np.float32)
    colour = np.where(images == 255, np.float32(1), (codes + np.float32(0.5)) / np.float32(255))
    unit = 1 - colour.min(-1)  # norm / max_norm
    safe = np.maximum(unit, np.float32(1e-6))[..., None]
    wheel = np.clip(1 - (1 - colour) / safe, 0, 1) * 255  # the wheel colour before desaturation
    top = images.argmax(-1)
    low = images.argmin(-1)
    position = np.zeros(unit.shape, np.float64)
    for (t, l), (varying, values, positions) in _wheel_sextants().items():
        mask = (top == t) & (low == l)
        if mask.any():
            position[mask] = np.interp(wheel[..., varying][mask], values, positions)
    angle = (position / (_WHEEL_STEPS / 2) - 1) * np.pi  # = atan2(-y, -x)
    speed = (unit * max_norm[:, None, None]).astype(np.float64)
    speed[top == low] = 0  # grey/white: no motion
    flow = np.stack([-speed * np.cos(angle), -speed * np.sin(angle)], axis=1)
    return flow.astype(np.float32)


def rgb_error_bound(max_norm: float) -> float:
    """Largest end-point error (px) of the ``rgb`` round trip for a frame normalised by max_norm:
    half a code of speed plus up to 15 wheel positions per unit of colour (the RY sixth) times
    2 pi / 54 rad per position, i.e. ~(0.5 + 1.75 + margin) * max_norm / 255."""
    return 2.6 * float(max_norm) / 255


def _decode_rgb(images: np.ndarray, attrs: dict) -> np.ndarray:
    return rgb_to_flow(images, np.asarray(attrs["max_norm"], np.float32))



# ---------------------------------------------------------------------------------------------
# Flow storage


def _uint8_range(bound: float) -> tuple[float, float]:
    """[low, high] for quantize_linear such that 0 is exactly code 128 and +bound is 255 (the
    common ``(f + bound) * 255 / (2 bound)`` puts zero between two codes: still pixels would
    read back as +0.08 px)."""
    step = bound / 127
    return -128 * step, bound


def _check_storage(storage: str) -> None:
    if storage not in STORAGES:
        raise InputError(f"flow storage must be one of {STORAGES}, got {storage!r}")


def encode_flow(flow: np.ndarray, storage: str = DEFAULT_STORAGE,
                bound: float = DEFAULT_BOUND) -> tuple[np.ndarray, dict]:
    """Flow [n, 2, H, W] -> (array to store, its dataset attributes), for ``ShardWriter.write``.

    ``uint8``: [n, 2, H, W] codes, clipped to +-bound, error <= bound / 254 (the ``linear``
    encoding); ``float16``: [n, 2, H, W] raw; ``rgb``: [n, H, W, 3] colour-wheel images with
    the ``max_norm`` attribute (encoding ``flow-rgb``, error <= :func:`rgb_error_bound`).
    ``Cache.read`` reads each back as [n, 2, H, W] float32 pixels.
    """
    flow, _ = _as_fields(flow)
    _check_storage(storage)
    if storage == "float16":
        return flow.astype(np.float16), {"encoding": "raw", "flow_storage": "float16"}
    if not bound or bound <= 0:
        raise InputError(f"bound must be > 0 px, got {bound!r}")
    if storage == "uint8":
        low, high = _uint8_range(float(bound))
        codes, attrs = quantize_linear(np.clip(flow, -bound, bound), low, high, np.uint8)
        return codes, {**attrs, "flow_storage": "uint8", "bound": float(bound)}
    images, max_norm = flow_to_rgb(flow, bound)
    return images, {"encoding": RGB_ENCODING, "max_norm": max_norm, "flow_storage": "rgb",
                    "bound": float(bound)}


def iter_encode_flow(flow_chunks: Iterable[np.ndarray], storage: str = DEFAULT_STORAGE,
                     bound: float = DEFAULT_BOUND) -> tuple[Iterator[np.ndarray], dict]:
    """Encode a stream of flow chunks: (iterator of stored chunks, attributes of the dataset).

    The attributes are complete once the iterator is exhausted (``rgb``'s ``max_norm`` grows
    with each chunk), which is when ``ShardWriter.write`` applies them::

        chunks, attrs = iter_encode_flow(iter_flow(backend, iter_frames(video)))
        writer.write(video_id, {"flow": chunks}, attrs={"flow": attrs})
    """
    _check_storage(storage)
    attrs: dict = {}
    norms: list[np.ndarray] = []

    def chunks() -> Iterator[np.ndarray]:
        for flow in flow_chunks:
            array, chunk_attrs = encode_flow(flow, storage, bound)
            if storage == "rgb":
                norms.append(chunk_attrs.pop("max_norm"))
                attrs["max_norm"] = np.concatenate(norms)
            attrs.update(chunk_attrs)
            yield array

    if storage == "uint8":  # known before the first chunk
        attrs.update(encode_flow(np.zeros((0, 2, 1, 1), np.float32), storage, bound)[1])
    return chunks(), attrs


def decode_flow(array: np.ndarray, attrs: dict) -> np.ndarray:
    """Stored flow and its attributes -> [n, 2, H, W] float32 pixels (any of the storages)."""
    encoding = attrs.get("encoding", "raw")
    if encoding == "raw":
        return np.asarray(array, np.float32)
    if encoding == "linear":
        return _decode_linear(np.asarray(array), attrs)
    if encoding == RGB_ENCODING:
        return _decode_rgb(array, attrs)
    raise InputError(f"unknown flow encoding {encoding!r}")


DECODERS.update({"linear": _decode_linear, RGB_ENCODING: _decode_rgb})
