"""Weights files: described by records, found locally, checked and loaded safely; never downloaded.

A published file is a :class:`PublishedWeights` record: its name, where it is published and the
input normalisation it was trained with. torchvision's are read from torchvision's weights enums
(:func:`torchvision_weights`, nothing downloaded); others (mmpose's HRNet) are records of our own.

Publishers name a file ``<stem>-<hash>[_<date>].<ext>`` where ``<hash>`` (8+ hex digits) is the
start of the file's sha256 (torch.hub's and OpenMMLab's convention). A file loaded under such a
name whose stem is a published file's must hash to that prefix (:func:`check_published_hash`), so
another state dict saved under the published name is refused instead of loading silently. A file
under any other name (one's own checkpoint) is not checked.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from cslr_pipe.features.errors import InputError, MissingFileError


class MissingWeights(MissingFileError):
    """A backend needs a weights file that is not there; ``str()`` is one line naming it."""


class CheckpointError(InputError):
    """A file that torch.load(weights_only=True) cannot or will not load, or that is not the file
    its published name says; ``str()`` is one line starting with its path."""


# <stem>-<sha256 prefix>[_<yyyymmdd>].<extension>
_HASHED_NAME = re.compile(r"^(?P<stem>.+)-(?P<prefix>[0-9a-f]{8,})(?:_\d{8})?\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class PublishedWeights:
    """A weights file as its authors publish it."""

    file: str  # the published file name, e.g. resnet18-f37072fd.pth
    url: str  # where it is published
    mean: tuple[float, ...] = ()  # input normalisation per channel (empty: none given) ...
    std: tuple[float, ...] = ()
    value_range: float = 1.0  # ... of inputs scaled to [0, value_range]
    source: str = ""  # where this record was read from

    @property
    def stem(self) -> str:
        """The name without its hash (and date): ``resnet18``."""
        match = _HASHED_NAME.match(self.file)
        return match["stem"] if match else self.file

    @property
    def hash_prefix(self) -> str:
        """The start of the file's sha256 that its name carries ("" if none)."""
        match = _HASHED_NAME.match(self.file)
        return match["prefix"] if match else ""


@functools.lru_cache(maxsize=None)
def torchvision_weights(architecture: str, entry: str) -> PublishedWeights:
    """The record of torchvision's weights ``entry`` for the model builder ``architecture``, e.g.
    ("resnet18", "IMAGENET1K_V1"), read from its weights enum (nothing is downloaded)."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(architecture)[entry]
    transforms = weights.transforms()
    return PublishedWeights(file=weights.url.rsplit("/", 1)[-1], url=weights.url,
                            mean=tuple(getattr(transforms, "mean", ())), std=tuple(getattr(transforms, "std", ())),
                            source=f"torchvision.models.{type(weights).__name__}.{weights.name}")


@functools.lru_cache(maxsize=None)
def torchvision_files(architecture: str) -> tuple[PublishedWeights, ...]:
    """Every file torchvision publishes for the model builder ``architecture``."""
    from torchvision.models import get_model_weights

    return tuple(torchvision_weights(architecture, weights.name) for weights in get_model_weights(architecture))


def check_published_hash(path: str | Path, published: Iterable[PublishedWeights]) -> None:
    """Refuse (CheckpointError) a file named like one of ``published`` (same stem, a hash after it)
    whose sha256 does not start with the hash in its name; any other name passes unchecked."""
    path = Path(path)
    match = _HASHED_NAME.match(path.name)
    record = next((r for r in published if match and r.stem == match["stem"]), None)
    if record is None or not path.is_file():
        return
    from cslr_pipe.features.store import sha256_file  # remembered: provenance hashes the same file

    expected = match["prefix"]
    actual = sha256_file(path)[:len(expected)]
    if actual != expected:
        raise CheckpointError(f"{path}: refused: its name says its sha256 starts with {expected}, but it starts "
                              f"with {actual}, so it is not the published file its name claims; download "
                              f"{record.url} again if you meant that file, or rename your own checkpoint so its "
                              f"name does not end in -{expected}")


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


def load_state_dict(path: str | Path, published: Iterable[PublishedWeights] = ()) -> dict:
    """A checkpoint's tensors, loaded with weights_only=True (a checkpoint cannot run code); a file
    named like one of ``published`` must first have the sha256 its name says."""
    check_published_hash(path, published)
    checkpoint = load_torch_file(path)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(checkpoint).__name__}")
    return checkpoint


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other names pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but torch sees no CUDA device")
    return device


def free_gpu_memory(device) -> None:
    """Give cached CUDA memory back after a model was dropped (nothing to do on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
