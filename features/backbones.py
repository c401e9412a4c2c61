"""Frozen backbones: one stream of a video -> a feature sequence [T', D] float32, streamed.

A backbone reads a stream in chunks along time, in the units the other stages produce them:

- ``rgb``: frames [n, H, W, 3] uint8 RGB (``video.iter_frames``);
- ``keypoint``: heatmaps [n, K, h, w] float in [0, 1] (``heatmaps.iter_heatmaps``; K = 79 for
  TwoStream-SLR's points; uint8 heatmaps from ``quantize_heatmaps`` are read as code / 255);
- ``flow``: fields [n, 2, h, w] float32 pixels (``flow.iter_flow``: T - 1 fields for T frames).

and returns features [T', D] (``features``) or yields them batch by batch (``iter_features``).
Memory is bounded by ``batch_size`` frames (per-frame models) or one window (S3D), never by the
video's length. Every model runs in eval mode with ``requires_grad`` off, under
``torch.inference_mode``, in fp32 on the CPU (deterministic: the same video gives bitwise the same
features however it is chunked) and under fp16 autocast on CUDA (``precision="auto"``).

Built-ins (``build_backbone(name, stream, weights=None, device="cpu", batch_size=64, **options)``):

- ``resnet18``, ``resnet34``: torchvision ResNet, fc removed: the 512-d global average pool of
  every frame (``temporal_stride`` 1). ResNet-34 is the usual CSLR visual encoder (VAC, CorrNet,
  DiffSign). Weights: torchvision's ImageNet files ``resnet18-f37072fd.pth`` /
  ``resnet34-b627a593.pth``, or a state dict of the same model (``Backbone.model.state_dict()``).
- ``s3d``: torchvision S3D (Kinetics-400 file ``s3d-d76dad2f.pth``), the 1024-d output of
  ``features`` averaged over space, one step per 8 frames (``temporal_stride`` 8), computed in
  overlapping windows (see :class:`S3DBackbone`). All three streams, like the ResNets
  (TwoStream-SLR's keypoint encoder is an S3D whose first convolution takes the 79 heatmaps).

Other options: ``precision`` (``auto``, ``fp32``, ``fp16``, ``bf16``), ``seed`` (random init),
``window`` and ``context`` (S3D). Throughput: ``bench/backbones.py`` (numbers in
docs/benchmarks.md).

Inputs per stream (shared by all built-ins; sizes are options):

- ``rgb``: resized to ``resize`` = (256, 256) (the CSLR convention of VAC/CorrNet and
  REFERENCE-FACTS, which is also what torchvision's S3D transforms do; an int resizes the shorter
  side keeping the aspect ratio), centre crop ``crop`` = 224, scaled to [0, 1] and normalised
  by the weights' mean/std (ImageNet for ResNet, Kinetics for S3D). Bilinear; antialiased for
  ResNet (torchvision's ``ImageClassification``), not for S3D (its ``VideoClassification``).
- ``keypoint``: heatmaps resized (bilinear, antialiased) to ``heatmap_size`` = 112 if they are
  not already, no normalisation: the [0, 1] maps go in as they are (TwoStream-SLR maps its heatmaps
  to [-1, 1] by ``(h - 0.5) / 0.5`` before its S3D, as it does its RGB frames; its exact maps are
  the ``slrt-*`` presets of ``heatmaps.PRESETS``); the stem takes ``channels`` = 79 inputs.
- ``flow``: the rgb geometry (resize to ``resize``, vectors scaled with the image so they stay in
  pixels of the resized frame; centre crop ``crop``), divided by ``flow_scale`` = 20 px and
  clipped to [-1, 1] (the +-20 px range of two-stream flow and of our uint8 flow storage);
  the stem takes 2 inputs.

For keypoint and flow, an ImageNet/Kinetics file (3-channel stem) is adapted by TSN's
cross-modality initialisation: the stem's weights averaged over RGB and replicated over the new
input channels (:func:`cross_modality_init`); a checkpoint whose stem already has the right number
of channels is loaded as it is.

Weights (``weights=``): a path; ``None`` = the published file in the torch hub cache
(``$TORCH_HOME/hub/checkpoints``; :class:`MissingWeights` naming the file and its URL if absent,
nothing is ever downloaded); ``"none"`` = an explicitly random network (seeded by ``seed``, 0),
with a :class:`RandomWeightsWarning`: its features are useless for research, fine only for the
offline demo. Files are loaded with ``weights_only=True`` and strictly (a ``module.`` prefix is
stripped and the classifier's keys are dropped); a file under a published name must have the
sha256 its name starts with (:mod:`cslr_pipe.features.weights`). File names and mean/std come from
torchvision's weights enums (``TorchvisionBackbone.published()``).
"""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.registry import Registry

if TYPE_CHECKING:
    import torch

    from cslr_pipe.features.weights import PublishedWeights

STREAMS = ("rgb", "keypoint", "flow")
RANDOM_INIT = "none"  # weights="none": a randomly initialised network, explicitly


class RandomWeightsWarning(UserWarning):
    """A backbone was built with random weights (``weights="none"``)."""


class Backbone(ABC):
    """Turns one stream of a video, given in chunks along time, into features [T', D] float32."""

    name: str = ""
    stream: str = "rgb"  # rgb | keypoint | flow
    dim: int = 0  # D
    temporal_stride: int = 1  # input frames per output step
    weights: Path | None = None  # the file its features depend on (None: random or no weights)
    random_init: bool = False

    @abstractmethod
    def iter_features(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Chunks of one video (see the module docstring) -> feature chunks [m, D] float32."""

    def features(self, chunks: Iterable[np.ndarray]) -> np.ndarray:
        """Chunks of one video -> all its features [T', D] float32 ([0, D] for an empty video)."""
        parts = list(self.iter_features(chunks))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def close(self) -> None:
        """Release the model (and GPU memory); the backbone is not used afterwards."""

    @classmethod
    def locate_weights(cls, weights: str | Path | None) -> Path | None:
        """The weights file this backbone would use (raises MissingWeights); None for "none"."""
        return None if weights == RANDOM_INIT or weights is None else Path(weights)

    def __enter__(self) -> "Backbone":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _outside_stacklevel() -> int:
    """warnings.warn's stacklevel for the first caller outside this module (when called there)."""
    import sys

    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


def cross_modality_init(weight, in_channels: int):
    """TSN's cross-modality initialisation: a stem weight [out, 3, *k] -> [out, in_channels, *k],
    every input channel the mean of the RGB ones."""
    return weight.mean(dim=1, keepdim=True).expand(-1, in_channels, *weight.shape[2:]).clone()


class TorchvisionBackbone(Backbone):
    """Shared part of the built-ins: a torchvision model with its classifier removed and its stem
    adapted to the stream, loaded from a local file, frozen; per-stream input preparation."""

    ARCHITECTURE = ""  # torchvision builder
    WEIGHTS = ""  # the entry of its weights enum whose file and mean/std are used (published())
    STEM = ""  # state-dict key of the first convolution's weight
    HEAD = ""  # state-dict prefix of the classifier, dropped
    ANTIALIAS = True  # rgb resizing, as the weights' transforms do it

    def __init__(self, stream: str = "rgb", weights: str | Path | None = None, device: str = "cpu",
                 batch_size: int = 64, resize: int | tuple[int, int] = (256, 256), crop: int = 224,
                 heatmap_size: int = 112, channels: int = 79, flow_scale: float = 20.0,
                 precision: str = "auto", seed: int = 0):
        import torch

        from cslr_pipe.features.weights import load_state_dict, resolve_device, torchvision_files

        if stream not in STREAMS:
            raise InputError(f"stream must be one of {STREAMS}, got {stream!r}")
        if batch_size < 1 or flow_scale <= 0:
            raise InputError("batch_size must be >= 1 and flow_scale > 0")
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise InputError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        self.stream, self.batch_size, self.flow_scale = stream, int(batch_size), float(flow_scale)
        self.resize = [resize] if isinstance(resize, int) else list(resize)
        self.crop, self.heatmap_size = [crop, crop], [heatmap_size, heatmap_size]
        self.in_channels = {"rgb": 3, "keypoint": int(channels), "flow": 2}[stream]
        self.device = torch.device(resolve_device(device))
        self.weights = self.locate_weights(weights)
        self.random_init = self.weights is None
        with torch.random.fork_rng(devices=[]):  # random init reproducible, global RNG untouched
            torch.manual_seed(seed)
            model = self._build(self.in_channels)
        if self.random_init:
            warnings.warn(f"{self.name}: weights='none' builds a randomly initialised network; its "
                          "features are useless for research (fine only for the offline demo)",
                          RandomWeightsWarning, stacklevel=_outside_stacklevel())
        else:
            self._load(model, load_state_dict(self.weights, torchvision_files(self.ARCHITECTURE)))
        self.model = model.eval().requires_grad_(False).to(self.device)
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        self._autocast_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        published = self.published()
        self._mean = torch.tensor(published.mean, device=self.device)
        self._std = torch.tensor(published.std, device=self.device)

    @classmethod
    def published(cls) -> PublishedWeights:
        """torchvision's record of the file this backbone loads by default, with its mean/std."""
        from cslr_pipe.features.weights import torchvision_weights

        return torchvision_weights(cls.ARCHITECTURE, cls.WEIGHTS)

    @classmethod
    def locate_weights(cls, weights: str | Path | None) -> Path | None:
        from cslr_pipe.features.weights import find_weights

        if weights == RANDOM_INIT:
            return None
        published = cls.published()
        return find_weights(weights, published.file, published.url)

    @abstractmethod
    def _build(self, in_channels: int):
        """The torchvision model, classifier replaced by identity, stem taking in_channels."""

    def _load(self, model, state: dict) -> None:
        from cslr_pipe.features.weights import CheckpointError

        state = {key.removeprefix("module."): value for key, value in state.items()}
        state = {key: value for key, value in state.items() if not key.startswith(self.HEAD)}
        stem = state.get(self.STEM)
        if stem is not None and stem.shape[1] == 3 and self.in_channels != 3:
            state[self.STEM] = cross_modality_init(stem, self.in_channels)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[0]
            raise CheckpointError(f"{self.weights}: not a state dict of torchvision's {self.name} with a "
                                  f"{self.in_channels}-channel stem ({self.published().file} or one saved "
                                  f"from this backbone): {first_line}") from None

    # -- input preparation: chunk [n, ...] -> network input [n, C, h, w] on the device ----------

    def _prepare(self, chunk) -> torch.Tensor:
        """rgb -> uint8 [n, 3, crop, crop]; keypoint -> float [n, K, 112, 112]; flow -> float
        [n, 2, crop, crop] already scaled (see the module docstring)."""
        import torch
        import torchvision.transforms.functional as TF

        x = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(chunk))
        expect = {"rgb": "[n, H, W, 3] uint8", "keypoint": f"[n, {self.in_channels}, h, w]",
                  "flow": "[n, 2, h, w]"}[self.stream]
        if self.stream == "rgb":
            if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
                raise InputError(f"{self.name}: expected rgb chunks {expect}, got {tuple(x.shape)} {x.dtype}")
            x = x.to(self.device).permute(0, 3, 1, 2)
            x = TF.resize(x, self.resize, antialias=self.ANTIALIAS)
            return TF.center_crop(x, self.crop).contiguous()
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"{self.name}: expected {self.stream} chunks {expect}, got {tuple(x.shape)}")
        x = x.to(self.device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if self.stream == "keypoint":
            same = list(x.shape[2:]) == self.heatmap_size
            return x if same else TF.resize(x, self.heatmap_size, antialias=True)
        height, width = x.shape[2:]
        x = TF.resize(x, self.resize, antialias=True)
        scale = torch.tensor([x.shape[3] / width, x.shape[2] / height], device=x.device).view(1, 2, 1, 1)
        x = TF.center_crop(x * scale, self.crop)
        return (x / self.flow_scale).clamp_(-1, 1).contiguous()

    def _normalise(self, x) -> torch.Tensor:
        """Network input as prepared [n, C, ...] -> float (rgb: [0, 1], then mean/std)."""
        if self.stream != "rgb":
            return x
        shape = (1, 3) + (1,) * (x.ndim - 2)
        return (x.float() / 255 - self._mean.view(shape)) / self._std.view(shape)

    def _autocast(self):
        import torch

        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def close(self) -> None:
        from cslr_pipe.features.weights import free_gpu_memory

        self.model = None
        free_gpu_memory(self.device)


def _chunks_of(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for chunk in chunks:
        if len(chunk):
            yield chunk


class ResNetBackbone(TorchvisionBackbone):
    """torchvision ResNet per frame: [n, C, h, w] -> 512-d global average pool, fc removed.

    Frames are gathered into batches of exactly ``batch_size`` (the last one shorter) whatever the
    chunking, so the features do not depend on how the video is chunked (bitwise on the CPU)."""

    STEM, HEAD = "conv1.weight", "fc."
    dim = 512

    def _build(self, in_channels: int):
        import torchvision
        from torch import nn

        model = getattr(torchvision.models, self.ARCHITECTURE)(weights=None)
        model.fc = nn.Identity()
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return model

    def iter_features(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        import torch

        with torch.inference_mode():
            pending: list[torch.Tensor] = []  # prepared frames, fewer than batch_size in all
            count = 0
            for chunk in _chunks_of(chunks):
                pending.append(self._prepare(chunk))
                count += len(pending[-1])
                if count >= self.batch_size:
                    frames = torch.cat(pending)
                    full = count - count % self.batch_size
                    for start in range(0, full, self.batch_size):
                        yield self._forward(frames[start:start + self.batch_size])
                    pending, count = ([frames[full:]] if full < count else []), count - full
            if count:
                yield self._forward(torch.cat(pending))

    def _forward(self, x) -> np.ndarray:
        with self._autocast():
            out = self.model(self._normalise(x))  # [n, 512]
        return out.float().cpu().numpy()


class ResNet18(ResNetBackbone):
    name, ARCHITECTURE, WEIGHTS = "resnet18", "resnet18", "IMAGENET1K_V1"  # resnet18-f37072fd.pth


class ResNet34(ResNetBackbone):
    name, ARCHITECTURE, WEIGHTS = "resnet34", "resnet34", "IMAGENET1K_V1"  # resnet34-b627a593.pth


class S3DBackbone(TorchvisionBackbone):
    """torchvision S3D: clips [1, C, t, h, w] -> ``features`` [1, 1024, t/8, h', w'] -> mean over
    space: one 1024-d step per 8 frames (``temporal_stride`` 8; the net halves time three times).

    Steps. The video (T frames) is padded at its end to a multiple of 8 by repeating its last
    frame, giving T' = ceil(T / 8) steps; step k belongs to frames [8k, 8k + 8) (its receptive
    field is centred near frame 8k + 2 and reaches up to 48 frames to each side). Windows: the
    steps of frames [s, s + window) (``window`` 64, a multiple of 8) are computed together from
    the clip [s - context, s + window + context) of the padded video, cut at its ends (``context``
    32 frames of real neighbours each side; beyond the clip the network pads, as a single pass
    does beyond the video). So:

    - the features depend only on the video, not on its chunking (bitwise on the CPU);
    - a video of at most ``window`` frames is one clip: exactly a single pass over it (padded);
    - longer videos differ from a single pass only near window seams, where the network's reach
      is cut at ``context``: with ``context`` 32 by ~0.1% of the features' scale (measured with
      random weights), with ``context`` >= 48 only by float rounding (tested).

    Memory: one clip of at most window + 2 context frames (128 at the defaults; ~1 GB of
    activations at 224x224 in fp32). ``batch_size`` only bounds how many frames are prepared at once.
    """

    name, ARCHITECTURE, WEIGHTS = "s3d", "s3d", "KINETICS400_V1"  # s3d-d76dad2f.pth
    STEM, HEAD = "features.0.0.0.weight", "classifier."
    ANTIALIAS = False
    dim, temporal_stride = 1024, 8

    def __init__(self, stream: str = "rgb", weights: str | Path | None = None, device: str = "cpu",
                 batch_size: int = 64, window: int = 64, context: int = 32, **options):
        if window < 8 or window % 8 or context < 0 or context % 8:
            raise InputError(f"window (>= 8) and context must be multiples of 8, got {window}, {context}")
        super().__init__(stream, weights, device, batch_size, **options)
        self.window, self.context = int(window), int(context)

    def _build(self, in_channels: int):
        import torchvision
        from torch import nn

        model = torchvision.models.video.s3d(weights=None)
        model.avgpool, model.classifier = nn.Identity(), nn.Identity()
        if in_channels != 3:
            model.features[0][0][0] = nn.Conv3d(in_channels, 64, kernel_size=(1, 7, 7), stride=(1, 2, 2),
                                                padding=(0, 3, 3), bias=False)
        return model

    def iter_features(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        import torch

        W, C = self.window, self.context
        with torch.inference_mode():
            buffer: list[torch.Tensor] = []  # prepared frames [base, total)
            base = total = step = 0  # step: first frame of the next window
            for chunk in _chunks_of(chunks):
                for start in range(0, len(chunk), self.batch_size):
                    buffer.append(self._prepare(chunk[start:start + self.batch_size]))
                    total += len(buffer[-1])
                while total >= step + W + C:  # next window and its right context are all real frames
                    frames = torch.cat(buffer)
                    yield self._window(frames, base, step, step + W, step + W + C)
                    step += W
                    keep = max(0, step - C)
                    buffer, base = [frames[keep - base:]], keep
            if total == 0:
                return
            frames = torch.cat(buffer)
            padded = -(-total // 8) * 8
            if padded > total:  # repeat the last frame up to a multiple of 8
                frames = torch.cat([frames, frames[-1:].expand(padded - total, *frames.shape[1:])])
            while step < padded:
                yield self._window(frames, base, step, min(step + W, padded), min(step + W + C, padded))
                step += W

    def _window(self, frames, base: int, first: int, last: int, clip_end: int) -> np.ndarray:
        """Steps for frames [first, last) from the clip [max(0, first - context), clip_end);
        ``frames`` holds the video from frame ``base`` on."""
        clip_start = max(0, first - self.context)
        clip = frames[clip_start - base:clip_end - base]  # [t, C, h, w]
        x = self._normalise(clip.permute(1, 0, 2, 3).unsqueeze(0))  # [1, C, t, h, w]
        with self._autocast():
            out = self.model.features(x).float().mean(dim=(3, 4))[0].T  # [t/8, 1024]
        skip = (first - clip_start) // 8
        return out[skip:skip + (last - first) // 8].cpu().numpy()


Factory = Callable[..., Backbone]  # (stream, weights, device, batch_size, **options)

# Built-ins by name; torch and torchvision are imported only when one is built.
BACKBONES = Registry("backbone", {name: f"{__name__}:{cls}" for name, cls in (
    ("resnet18", "ResNet18"), ("resnet34", "ResNet34"), ("s3d", "S3DBackbone"))})
register_backbone = BACKBONES.register  # plug in your own: factory(stream=, weights=, device=, batch_size=, **options)
backbone_names = BACKBONES.names
backbone_factory = BACKBONES.factory


def build_backbone(name: str, stream: str = "rgb", weights: str | Path | None = None,
                   device: str = "cpu", batch_size: int = 64, **options) -> Backbone:
    """Build a backbone by name for one stream. ``weights``: a path, None (the published file in
    the torch hub cache) or ``"none"`` (random init, with a RandomWeightsWarning)."""
    if weights is not None and weights != RANDOM_INIT:
        weights = Path(weights)
    return backbone_factory(name)(stream=stream, weights=weights, device=device,
                                  batch_size=batch_size, **options)
