"""Small file-system helpers shared by every writer: atomic writes and safe paths."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from cslr_pipe.features.errors import InputError


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(name: str) -> str:
    """A hidden name beside ``name``, unique across processes and hosts sharing a file system."""
    return f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, so that readers see the old file or the new one,
    never a part of it: the data go to a hidden file beside ``path``, which is synced and renamed
    over ``path`` when the block ends, and removed instead if the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name))
    try:
        with tmp.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never a part of it."""
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def inside(root: str | Path, relative: str | Path) -> Path:
    """``root / relative``, refusing any path that would land outside ``root``."""
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise InputError(f"{relative} would be written outside {root}")
    return target
