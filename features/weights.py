"""Local weight files: found, checked and loaded safely; never downloaded."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from cslr_pipe.features.errors import InputError, MissingFileError


class MissingWeights(MissingFileError):
    """A backend needs a weights file that is not there; ``str()`` is one line naming it."""


class CheckpointError(InputError):
    """A file that torch.load(weights_only=True) cannot or will not load; ``str()`` is one line
    starting with its path."""


def _first_line(error: BaseException) -> str:
    """The error's type and the first sentence of its message that is not torch's load advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if "weights_only" not in line and "Weights only" not in line
                   and not line.startswith(("(1)", "(2)", "Check the documentation"))), "")
    detail = detail.removeprefix("WeightsUnpickler error: ").split(". ", 1)[0]
    return f"{type(error).__name__}: {detail[:200]}" if detail else type(error).__name__


def load_torch_file(path: str | Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``; a file it cannot read or refuses to load raises
    CheckpointError with one line saying why (nothing in a refused file is run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused or "Unsupported operand" not in str(error):
            what = (f"it refers to the Python object {refused.group(1)}, which loading would import and call"
                    if refused else f"its pickle is not plain data ({_first_line(error)})")
            raise CheckpointError(f"{path}: refused as unsafe: {what}; a checkpoint may hold only tensors, "
                                  f"numbers, strings, lists and dicts (nothing in the file was run)") from None
        raise CheckpointError(f"{path}: not a torch checkpoint, or a corrupt one ({_first_line(error)})") from None
    except Exception as error:  # truncated zip archives, random bytes: whatever the reader tripped on
        raise CheckpointError(f"{path}: not a torch checkpoint, or a truncated or corrupt one "
                              f"({_first_line(error)})") from None


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
    checkpoint = load_torch_file(path)
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
