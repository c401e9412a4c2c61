"""Optical flow: backends, streaming over long videos, and compact storage.

Convention. A backend maps pairs of RGB uint8 frames ``first, second [n, H, W, 3]`` to flow
``[n, 2, H, W]`` float32 in pixels, channel 0 = x (right), 1 = y (down), such that
``first(p) ~ second(p + flow(p))`` (backward warping: sample ``second`` at ``p + flow`` to get
``first``). This is what OpenCV's ``calcOpticalFlow*(prev, next)`` and torchvision's
``raft(image1, image2)`` return. A video of T frames gives T - 1 fields (``iter_flow``).

Backends (``build_flow_backend(name, weights=None, device="cpu", **options)``):

- ``dis`` (default, no weights, CPU): OpenCV's DIS (Kroeger et al. 2016) on grey frames,
  ``preset="medium"`` (``ultrafast``, ``fast``, ``medium``); a few ms per 224x224 pair.
  Optional overrides: ``finest_scale``, ``patch_size``, ``patch_stride``,
  ``gradient_descent_iterations``, ``variational_refinement_iterations``.
- ``farneback`` (no weights, CPU): ``cv2.calcOpticalFlowFarneback`` on grey frames with the
  OpenCV tutorial's parameters, ``pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5,
  poly_sigma=1.2, flags=0`` (each can be overridden). Accurate to ~0.01 px for moderate motion
  but fails beyond ~15-20 px per frame at 224x224, and is 2-5x slower than DIS medium.
- ``raft-small`` / ``raft-large``: torchvision's RAFT (Teed & Deng 2020), built with
  ``weights=None`` and loaded strictly from a local file (never downloaded): by default
  ``raft_small_C_T_V2-01064c6d.pth`` / ``raft_large_C_T_SKHT_V2-ff5fadd5.pth`` in the torch hub
  cache (``$TORCH_HOME/hub/checkpoints``), or any other torchvision RAFT file of the same
  architecture by path (``weights=``). Frames are scaled to [-1, 1], padded by edge replication
  (centred) to a multiple of 8 and to at least 128 px per side, and cropped back after;
  ``num_updates`` (12) refinement steps, the last one returned; ``batch_size`` pairs per forward
  pass (8); ``precision`` ``auto`` (fp16 autocast on CUDA, fp32 elsewhere), ``fp32``, ``fp16``
  or ``bf16``; ``device`` ``cpu``, ``cuda[:i]`` or ``auto``.

Storage (``encode_flow(flow, storage, bound)``; every encoding is read back by
``store.decode`` / ``Cache.read`` as [n, 2, H, W] float32 pixels):

- ``uint8`` (**default**): x and y as two grey images, clipped to +-``bound`` (20 px) and mapped
  linearly by :func:`store.quantize_linear` (the generic ``linear`` decoder). The range is
  [-bound * 128/127, bound] with step ``bound / 127`` so that zero motion is exactly code 128 and
  decodes to exactly 0 (the common ``(f + bound) * 255 / (2 bound)`` mapping puts zero between
  two codes, and every still background pixel would read back as +0.08 px). Error <= step / 2 =
  ``bound / 254`` per component inside +-bound (0.079 px; end-point error <= 0.111 px).
- ``float16``: raw half floats (error <= 2**-11 relative, e.g. 0.008 px at 20 px).
- ``rgb``: colour-wheel images [n, H, W, 3] uint8 that look like torchvision's
  ``flow_to_image`` (Middlebury wheel, saturation = norm / max norm; SignVTCL stores flow as
  such images), normalised per frame by ``max_norm = min(max |flow|, bound)`` (pixels beyond
  ``bound`` keep their direction, norm clipped), rounded up to float16 and stored as the
  dataset attribute ``max_norm`` [n] float16 (2 bytes per frame; HDF5 keeps attributes under
  64 KiB, i.e. up to ~32000 frames). Encoding ``flow-rgb``, inverted by :func:`rgb_to_flow`:
  end-point error <= ~2.6 * max_norm / 255 per pixel (0.2 px at max_norm 20; tested), much
  less on average. Per-frame normalisation means the same pixel speed has different colours
  in different frames.

Why ``uint8`` is the default: it is what two-stream action recognition trains on (TSN's and
I3D's flow streams read x/y clipped to +-20 px and quantised or rescaled linearly), its error
(0.08 px) is far below the flow methods' own (RAFT trained on C+T: 1.4-2.7 px EPE on Sintel),
the scale is the same for every frame and video (a network sees absolute speeds; ``rgb``
rescales every frame), and it is the most compact after the store's gzip + shuffle filter. Stored KiB per field measured with
``bench/flow.py`` (DIS-medium flow, 48 fields, written by ``ShardWriter`` with gzip level 4 +
shuffle; "signer": the synthetic signer, still background, hands up to 41 px per frame at 224;
"photo": grace_hopper.jpg under a random camera walk with noise, motion everywhere):

    =========  ========  ==============  ==============  ==============  ==============
    storage    raw 224   signer 112      signer 224      photo 112       photo 224
    =========  ========  ==============  ==============  ==============  ==============
    float32    392       67.4            266             62.2            245
    float16    196       27.3            88.5            24.3            93.7
    uint8       98        1.6             5.7             1.6             5.8
    rgb        147        6.5            14.7            12.8            47.1
    =========  ========  ==============  ==============  ==============  ==============

float16 keeps noise in its low bits that no model needs and compresses 15x worse than uint8;
``rgb`` spends three correlated channels on two values and its per-frame scale gives small
motions finer (less compressible) codes. Where motions are mostly sub-pixel (mouth, face), a
smaller ``bound`` (e.g. 10 px: 0.04 px error) keeps uint8's advantage; motions beyond the bound
are clipped (0.1% of the signer's components at 224x224).

Streaming: :func:`iter_flow` turns the chunks of :func:`cslr_pipe.features.video.iter_frames`
into flow chunks, carrying the last frame of each chunk into the next, so memory is bounded by
the chunk size, never by the video's length; :func:`iter_encode_flow` encodes such chunks for
``ShardWriter.write`` (whose ``attrs`` it fills once the chunks are consumed).

Pictures: :func:`flow_to_color` (the ``rgb`` encoder, normalised per frame or by a fixed norm)
and its legend, :func:`flow_color_wheel`.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from cslr_pipe.features.registry import Registry
from cslr_pipe.features.store import quantize_linear, register_decoder

STORAGES = ("uint8", "float16", "rgb")
DEFAULT_STORAGE = "uint8"
DEFAULT_BOUND = 20.0  # px: two-stream pipelines clip flow to +-20 before quantising
RGB_ENCODING = "flow-rgb"


# ---------------------------------------------------------------------------------------------
# Backends


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


def _check_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.ndim != 4 or first.shape[-1] != 3:
        raise ValueError(f"expected two [n, H, W, 3] arrays of one shape, got {first.shape} and {second.shape}")
    if first.dtype != np.uint8 or second.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB frames, got {first.dtype} and {second.dtype}")
    return first, second


class _OpenCVFlow(FlowBackend):
    """Shared part of the OpenCV backends: grey frames, one pair at a time, on the CPU."""

    def __init__(self, weights: Path | None = None, device: str = "cpu"):
        if weights:
            raise ValueError(f"the {self.name} flow backend takes no weights (got {weights})")
        import cv2  # noqa: F401  (fail here, not on the first pair, if OpenCV is missing)

        self.device = "cpu"  # OpenCV's flow runs on the CPU whatever device the pipeline uses

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import cv2

        first, second = _check_pairs(first, second)
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


class DISFlow(_OpenCVFlow):
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
            raise ValueError(f"DIS preset must be one of {sorted(self.PRESETS)}, got {preset!r}")
        unknown = sorted(set(overrides) - set(self._SETTERS))
        if unknown:
            raise ValueError(f"unknown DIS options {unknown}; known: {sorted(self._SETTERS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(self.PRESETS[preset])
        for option, value in overrides.items():
            getattr(self._dis, self._SETTERS[option])(value)

    def _pair(self, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return self._dis.calc(g1, g2, None)

    def close(self) -> None:
        self._dis = None


class FarnebackFlow(_OpenCVFlow):
    """``cv2.calcOpticalFlowFarneback`` with the OpenCV tutorial's parameters (overridable)."""

    name = "farneback"
    DEFAULTS = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5,
                "poly_sigma": 1.2, "flags": 0}

    def __init__(self, weights: Path | None = None, device: str = "cpu", **params):
        super().__init__(weights, device)
        unknown = sorted(set(params) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(f"unknown Farneback parameters {unknown}; known: {sorted(self.DEFAULTS)}")
        self.params = {**self.DEFAULTS, **params}

    def _pair(self, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
        import cv2

        p = self.params
        return cv2.calcOpticalFlowFarneback(g1, g2, None, p["pyr_scale"], p["levels"], p["winsize"],
                                            p["iterations"], p["poly_n"], p["poly_sigma"], p["flags"])


_TORCHVISION_MODELS = "https://download.pytorch.org/models/"


def raft_padding(height: int, width: int, multiple: int = 8, min_size: int = 128) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) edge padding that makes a frame RAFT-sized: sides a multiple
    of ``multiple`` and at least ``min_size``, the frame centred (left/top get the smaller half)."""
    def side(n: int) -> tuple[int, int]:
        target = max(int(math.ceil(n / multiple)) * multiple, int(math.ceil(min_size / multiple)) * multiple)
        return (target - n) // 2, target - n - (target - n) // 2

    return (*side(height), *side(width))


def _correlation_in_fp32(corr_block, device_type: str) -> None:
    """Build RAFT's correlation pyramid in float32 under autocast, as the original RAFT does in
    mixed precision (its dot products over 256 channels could overflow float16); the encoders and
    the update block still run in half precision, and grid sampling then reads float32."""
    import torch

    build = corr_block.build_pyramid

    def build_pyramid(fmap1, fmap2):
        with torch.autocast(device_type, enabled=False):
            return build(fmap1.float(), fmap2.float())

    corr_block.build_pyramid = build_pyramid


class RAFTFlow(FlowBackend):
    """torchvision's RAFT from a local weights file; batched, inference mode, autocast on CUDA."""

    name = ""
    ARCHITECTURE = ""  # torchvision builder: raft_small or raft_large
    FILE = ""  # default weights file, looked for in the torch hub cache
    FILES: tuple[str, ...] = ()  # every file torchvision publishes for this architecture

    def __init__(self, weights: Path | None = None, device: str = "cpu", num_updates: int = 12,
                 batch_size: int = 8, precision: str = "auto", min_size: int = 128):
        import torch
        from torchvision.models import optical_flow

        from cslr_pipe.features.weights import load_state_dict, resolve_device

        if num_updates < 1 or batch_size < 1:
            raise ValueError("num_updates and batch_size must be >= 1")
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        self.device = torch.device(resolve_device(device))
        self.weights = self.locate_weights(weights)
        model = getattr(optical_flow, self.ARCHITECTURE)(weights=None, progress=False)
        state = load_state_dict(self.weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[0]
            raise ValueError(f"{self.weights}: not a torchvision {self.ARCHITECTURE} state dict "
                             f"(files for {self.name}: {', '.join(self.FILES)}): {first_line}") from None
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.num_updates = int(num_updates)
        self.batch_size = int(batch_size)
        self.min_size = int(min_size)
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        self._autocast_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if self._autocast_dtype is not None:
            _correlation_in_fp32(self.model.corr_block, self.device.type)

    @classmethod
    def locate_weights(cls, weights: Path | None) -> Path:
        from cslr_pipe.features.weights import find_weights

        return find_weights(weights, cls.FILE, _TORCHVISION_MODELS + cls.FILE)

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        first, second = _check_pairs(first, second)
        n, height, width, _ = first.shape
        out = np.empty((n, 2, height, width), np.float32)
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            out[start:stop] = self._forward(first[start:stop], second[start:stop])
        return out

    def _forward(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        m, height, width, _ = first.shape
        top, bottom, left, right = raft_padding(height, width, min_size=self.min_size)
        with torch.inference_mode():
            frames = torch.from_numpy(np.concatenate([first, second])).to(self.device)
            images = frames.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()  # [-1, 1]
            if top or bottom or left or right:
                images = F.pad(images, (left, right, top, bottom), mode="replicate")
            autocast = contextlib.nullcontext() if self._autocast_dtype is None else \
                torch.autocast(self.device.type, dtype=self._autocast_dtype)
            with autocast:
                flow = self.model(images[:m], images[m:], num_flow_updates=self.num_updates)[-1]
            flow = flow[:, :, top:top + height, left:left + width].float()
            result = flow.cpu().numpy()
        self.model.corr_block.corr_pyramid = [torch.tensor(0)]  # do not keep the last volume alive
        return result

    def close(self) -> None:
        from cslr_pipe.features.weights import free_gpu_memory

        self.model = None
        free_gpu_memory(self.device)


class RAFTSmall(RAFTFlow):
    name = "raft-small"
    ARCHITECTURE = "raft_small"
    FILE = "raft_small_C_T_V2-01064c6d.pth"
    FILES = ("raft_small_C_T_V2-01064c6d.pth", "raft_small_C_T_V1-ad48884c.pth")


class RAFTLarge(RAFTFlow):
    name = "raft-large"
    ARCHITECTURE = "raft_large"
    FILE = "raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    FILES = ("raft_large_C_T_SKHT_V2-ff5fadd5.pth", "raft_large_C_T_SKHT_K_V2-b5c70766.pth",
             "raft_large_C_T_V2-1bb1363a.pth", "raft_large_C_T_SKHT_V1-0b8c9e55.pth",
             "raft_large_C_T_SKHT_K_V1-4a6a5039.pth", "raft_large_C_T_V1-22a6c225.pth")


Factory = Callable[..., FlowBackend]  # (weights: Path | None, device: str, **options)

# Built-in backends by name. They live in this module, but each imports its dependencies
# (OpenCV; torch and torchvision for RAFT) only when built, so importing this module (e.g. to
# decode stored flow) imports neither.
BACKENDS = Registry("flow backend", {name: f"{__name__}:{cls}" for name, cls in (
    ("dis", "DISFlow"), ("farneback", "FarnebackFlow"), ("raft-small", "RAFTSmall"), ("raft-large", "RAFTLarge"))})
register_flow_backend = BACKENDS.register  # plug in your own: factory(weights, device, **options)
flow_backend_names = BACKENDS.names
flow_backend_factory = BACKENDS.factory


def build_flow_backend(name: str, weights: str | Path | None = None, device: str = "cpu",
                       **options) -> FlowBackend:
    """Build a backend by name, with its weights file (if it needs one) and options."""
    return flow_backend_factory(name)(weights=Path(weights) if weights else None, device=device, **options)


# ---------------------------------------------------------------------------------------------
# Streaming


def iter_flow(backend: FlowBackend | Callable[[np.ndarray, np.ndarray], np.ndarray],
              frame_chunks: Iterable[np.ndarray], batch: int = 64) -> Iterator[np.ndarray]:
    """Flow between consecutive frames of a video given as chunks [n_i, H, W, 3] (as
    ``iter_frames`` yields them): yields [m, 2, H, W] chunks, ``batch`` pairs each (the last may
    be shorter), T - 1 fields in all (none for a one-frame video). Memory: the chunk being read plus
    at most ``batch`` frames carried over, however long the video. Empty chunks are skipped."""
    if batch < 1:
        raise ValueError("batch must be >= 1")
    pending: np.ndarray | None = None  # frames not yet used as the first of a pair, plus one
    for chunk in frame_chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim != 4:
            raise ValueError(f"expected frame chunks [n, H, W, 3], got shape {chunk.shape}")
        if len(chunk) == 0:
            continue
        if pending is not None and pending.shape[1:] != chunk.shape[1:]:
            raise ValueError(f"frame chunk of shape {chunk.shape[1:]} after frames of {pending.shape[1:]}")
        pending = chunk if pending is None else np.concatenate([pending, chunk])
        while len(pending) > batch:
            yield backend(pending[:batch], pending[1:batch + 1])
            pending = pending[batch:]
    if pending is not None and len(pending) > 1:
        yield backend(pending[:-1], pending[1:])


# ---------------------------------------------------------------------------------------------
# Colour wheel (Baker et al. 2007, as torchvision.utils.flow_to_image draws it)


def _make_colorwheel() -> np.ndarray:
    """The Middlebury colour wheel [55, 3], float32 0..255 (torchvision's ``_make_colorwheel``)."""
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


_WHEEL = _make_colorwheel()
_WHEEL_STEPS = len(_WHEEL) - 1  # hue -> wheel position in [0, 54], as torchvision maps it


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
        colours = _WHEEL[start:stop + 1]
        assert (colours[:, top] == 255).all() and (colours[:, low] == 0).all()
        varying = 3 - top - low
        values = colours[:, varying].astype(np.float64)
        if values[-1] < values[0]:
            values, positions = values[::-1], positions[::-1]
        assert (np.diff(values) > 0).all()
        out[(top, low)] = (varying, values, positions)
    return out


_SEXTANTS = _wheel_sextants()


def _norm(flow: np.ndarray) -> np.ndarray:
    return np.sqrt(np.square(flow[:, 0], dtype=np.float32) + np.square(flow[:, 1], dtype=np.float32))


def _as_fields(flow: np.ndarray) -> tuple[np.ndarray, bool]:
    flow = np.asarray(flow, np.float32)
    single = flow.ndim == 3
    if single:
        flow = flow[None]
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected flow [n, 2, H, W] or [2, H, W], got shape {flow.shape}")
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
    k1[k1 == len(_WHEEL)] = 0
    wheel = _WHEEL / np.float32(255)
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
        raise ValueError(f"expected [n, H, W, 3] uint8 flow images, got {images.shape} {images.dtype}")
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
    for (t, l), (varying, values, positions) in _SEXTANTS.items():
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


# ---------------------------------------------------------------------------------------------
# Storage


def _uint8_range(bound: float) -> tuple[float, float]:
    """[low, high] for quantize_linear such that 0 is exactly code 128 and +bound is 255."""
    step = bound / 127
    return -128 * step, bound


def encode_flow(flow: np.ndarray, storage: str = DEFAULT_STORAGE,
                bound: float = DEFAULT_BOUND) -> tuple[np.ndarray, dict]:
    """Flow [n, 2, H, W] -> (array to store, its dataset attributes), for ``ShardWriter.write``.

    ``uint8``: [n, 2, H, W] codes, clipped to +-bound, error <= bound / 254 (the ``linear``
    encoding); ``float16``: [n, 2, H, W] raw; ``rgb``: [n, H, W, 3] colour-wheel images with
    the ``max_norm`` attribute (encoding ``flow-rgb``, error <= :func:`rgb_error_bound`).
    ``store.decode`` reads each back as [n, 2, H, W] float32 pixels.
    """
    flow, _ = _as_fields(flow)
    if storage not in STORAGES:
        raise ValueError(f"flow storage must be one of {STORAGES}, got {storage!r}")
    if storage == "float16":
        return flow.astype(np.float16), {"encoding": "raw", "flow_storage": "float16"}
    if not bound or bound <= 0:
        raise ValueError(f"bound must be > 0 px, got {bound!r}")
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
    if storage not in STORAGES:
        raise ValueError(f"flow storage must be one of {STORAGES}, got {storage!r}")
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
        return np.asarray(array).astype(np.float32) * np.float32(attrs["scale"]) + np.float32(attrs["offset"])
    if encoding == RGB_ENCODING:
        return rgb_to_flow(array, np.asarray(attrs["max_norm"], np.float32))
    raise ValueError(f"unknown flow encoding {encoding!r}")


register_decoder(RGB_ENCODING, lambda images, attrs: rgb_to_flow(images, np.asarray(attrs["max_norm"], np.float32)))
