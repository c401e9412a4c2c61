"""The "raft-small" and "raft-large" flow backends: torchvision's RAFT (Teed & Deng 2020).

Built with ``weights=None`` and loaded strictly from a local file, never downloaded: by default
torchvision's ``raft_small_C_T_V2-01064c6d.pth`` / ``raft_large_C_T_SKHT_V2-ff5fadd5.pth`` (the
records of its weights enums) in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), or any
other RAFT state dict of the same architecture by path (``weights=``); a file under a published
name must have the sha256 its name starts with. Frames are scaled to [-1, 1], padded by edge
replication (centred) to a multiple of 8 and to at least ``min_size`` (128) px per side, and
cropped back after.
Options: ``num_updates`` (12) refinement steps, the last one returned; ``batch_size`` pairs per
forward pass (8); ``precision`` ``auto`` (fp16 autocast on CUDA, fp32 elsewhere), ``fp32``,
``fp16`` or ``bf16``; ``device`` ``cpu``, ``cuda[:i]`` or ``auto``.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.flow import FlowBackend, check_pairs

if TYPE_CHECKING:
    from cslr_pipe.features.weights import PublishedWeights


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
    WEIGHTS = ""  # the entry of its weights enum looked for in the torch hub cache by default

    def __init__(self, weights: Path | None = None, device: str = "cpu", num_updates: int = 12,
                 batch_size: int = 8, precision: str = "auto", min_size: int = 128):
        import torch
        from torchvision.models import optical_flow

        from cslr_pipe.features.weights import CheckpointError, load_state_dict, resolve_device, torchvision_files

        if num_updates < 1 or batch_size < 1:
            raise InputError("num_updates and batch_size must be >= 1")
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise InputError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        self.device = torch.device(resolve_device(device))
        self.weights = self.locate_weights(weights)
        model = getattr(optical_flow, self.ARCHITECTURE)(weights=None, progress=False)
        state = load_state_dict(self.weights, torchvision_files(self.ARCHITECTURE))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[0]
            files = ", ".join(record.file for record in self.published_files())
            raise CheckpointError(f"{self.weights}: not a torchvision {self.ARCHITECTURE} state dict "
                                  f"(files for {self.name}: {files}): {first_line}") from None
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
    def published(cls) -> PublishedWeights:
        """torchvision's record of the default file."""
        from cslr_pipe.features.weights import torchvision_weights

        return torchvision_weights(cls.ARCHITECTURE, cls.WEIGHTS)

    @classmethod
    def published_files(cls) -> tuple[PublishedWeights, ...]:
        """Every file torchvision publishes for this architecture, the default first."""
        from cslr_pipe.features.weights import torchvision_files

        default = cls.published()
        return (default, *(record for record in torchvision_files(cls.ARCHITECTURE) if record != default))

    @classmethod
    def locate_weights(cls, weights: Path | None) -> Path:
        from cslr_pipe.features.weights import find_weights

        published = cls.published()
        return find_weights(weights, published.file, published.url)

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        first, second = check_pairs(first, second)
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
    name, ARCHITECTURE, WEIGHTS = "raft-small", "raft_small", "C_T_V2"  # raft_small_C_T_V2-01064c6d.pth


class RAFTLarge(RAFTFlow):
    name, ARCHITECTURE, WEIGHTS = "raft-large", "raft_large", "C_T_SKHT_V2"  # raft_large_C_T_SKHT_V2-ff5fadd5.pth
