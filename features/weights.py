"""Local weight files: found, checked and loaded safely; never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class MissingWeights(FileNotFoundError):
    """A backend needs a weights file that is not there; ``str()`` is one line naming it."""


def torch_hub_checkpoints() -> Path:
    """Where torch.hub keeps downloaded checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    return Path(home) / "hub" / "checkpoints"


def find_weights(path: str | Path | None, file_name: str, published: str) -> Path:
    """The weights file to use: ``path`` if given, else ``file_name`` in the torch hub cache.

    Raises MissingWeights naming the file and where it is published; nothing is downloaded.
    """
    candidates = [Path(path)] if path else [torch_hub_checkpoints() / file_name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = f"{candidates[0]} not found" if path else f"no weights given and {candidates[0]} not found"
    raise MissingWeights(f"{where}: this backend needs {file_name} (published at {published}); "
                         "download it yourself and pass its path with --weights")


def load_state_dict(path: str | Path) -> dict:
    """A checkpoint's tensors, loaded with weights_only=True (a checkpoint cannot run code)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(checkpoint).__name__}")
    return checkpoint


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other names pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return device


def free_gpu_memory(device) -> None:
    """Give cached CUDA memory back after a model was dropped (nothing to do on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
