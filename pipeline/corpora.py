"""Readers of the official annotation files of PHOENIX-2014, PHOENIX-2014-T and CSL-Daily.

Each reader turns a corpus folder (``root``) into :class:`ManifestRow` objects:

- ``video`` is the frame folder relative to ``root``, in POSIX form; it is absolute only when a
  ``frames`` override lies outside ``root``. ``frames`` (absolute, or relative to the working
  directory) replaces the corpus's frames root: ``features/fullFrame-210x260px`` for PHOENIX (the
  split folders ``train/``, ``dev/``, ``test/`` lie under it), the discovered frames folder for
  CSL-Daily.
- ``glosses`` is the annotation split on whitespace, with no cleanup (scoring cleans up elsewhere).

Rows that cannot be used are appended to ``bad_rows`` as ``BadRow(file, line, reason)`` (line
numbers 1-based, the header is line 1) and skipped; the other rows are kept. An annotation file
that is missing, or whose header is not the expected one, raises :class:`ManifestError`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from cslr_pipe.features.manifest import SPLITS, BadRow, ManifestError, ManifestRow, check_id
from cslr_pipe.features.video import IMAGE_SUFFIXES

PHOENIX_FRAMES = "features/fullFrame-210x260px"
PHOENIX_FPS = 25.0
PHOENIX2014_COLUMNS = ("id", "folder", "signer", "annotation")
PHOENIX2014T_COLUMNS = ("name", "video", "start", "end", "speaker", "orth", "translation")
CSL_MAP_COLUMNS = ("index", "name", "length", "gloss", "char", "word", "postag")
CSL_SPLIT_COLUMNS = ("name", "split")
CSL_LABEL_DIRS = ("", "sentence_label")  # where video_map.txt and split_1.txt may lie, in order
CSL_SEARCH_DEPTH = 3  # how many folder levels under root the frames-root search goes
_CSL_NAME = re.compile(r"^S\d+_(P\d+)_T\d+$")  # S<sentence>_P<person = signer>_T<take>


def _read_table(path: Path, columns: tuple[str, ...],
                bad_rows: list[BadRow]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, {column: value})`` for each data line of a ``|``-separated table.

    The first line must be the header ``columns``. A BOM, CRLF line ends and blanks around fields
    are tolerated, blank lines skipped; a line with another number of fields goes to ``bad_rows``.
    """
    if not path.is_file():
        raise ManifestError(f"{path}: annotation file not found")
    with path.open(encoding="utf-8-sig") as handle:
        header = "|".join(field.strip() for field in handle.readline().split("|"))
        if header != "|".join(columns):
            raise ManifestError(f"{path}:1: expected the header {'|'.join(columns)!r}, "
                                f"got {header!r}")
        for number, line in enumerate(handle, start=2):
            if not line.strip():
                continue
            fields = [field.strip() for field in line.split("|")]
            if len(fields) != len(columns):
                bad_rows.append(BadRow(str(path), number, f"expected {len(columns)} '|'-separated "
                                       f"columns ({'|'.join(columns)}), got {len(fields)}"))
                continue
            yield number, dict(zip(columns, fields))


def _id_problem(video_id: str, seen: dict[str, str]) -> str | None:
    """Why ``video_id`` cannot be used (unsafe, or already seen), or None."""
    reason = check_id(video_id)
    if reason is None and video_id in seen:
        reason = f"duplicate id {video_id!r} (first at {seen[video_id]})"
    return reason


def _has_images(folder: Path) -> bool:
    try:
        return any(entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
                   for entry in os.scandir(folder))
    except OSError:  # missing, or not a folder
        return False


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form; absolute when it lies outside ``root``."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _frame_folder(value: str) -> PurePosixPath | None:
    """The folder of a PHOENIX ``folder``/``video`` field (``<id>/1/*.png`` -> ``<id>/1``), or
    None when it is empty, absolute or climbs out with ``..``."""
    folder = PurePosixPath(value.replace("\\", "/"))
    if "*" in folder.name:
        folder = folder.parent
    if folder.is_absolute() or ".." in folder.parts or not folder.parts:
        return None
    return folder


def _read_phoenix(root: Path, bad_rows: list[BadRow], *, dataset: str, file_name: str,
                  columns: tuple[str, ...], keys: dict[str, str], check_files: bool,
                  frames: Path | None, candidates: Callable[[PurePosixPath], list[PurePosixPath]]
                  ) -> list[ManifestRow]:
    """Shared reader of the two PHOENIX corpora; ``keys`` maps row fields to column names and
    ``candidates`` lists the frame folders to try for one annotated folder (first one wins)."""
    root = Path(root)
    frames_root = Path(frames) if frames is not None else root / PHOENIX_FRAMES
    rows: list[ManifestRow] = []
    seen: dict[str, str] = {}
    for split in SPLITS:
        path = root / "annotations" / "manual" / file_name.format(split=split)
        for number, fields in _read_table(path, columns, bad_rows):
            video_id = fields[keys["id"]]
            folder = _frame_folder(fields[keys["folder"]])
            reason = _id_problem(video_id, seen)
            if reason is None and folder is None:
                reason = f"unsafe or empty frame folder {fields[keys['folder']]!r}"
            tried = [frames_root / split / c for c in candidates(folder)] if folder else []
            found = tried[0] if tried else None
            if reason is None and (check_files or len(tried) > 1):
                found = next((t for t in tried if _has_images(t)), None)
                if found is None:
                    reason = ("no frame folder with images; tried "
                              + " and ".join(str(t) for t in tried))
            if reason is not None:
                bad_rows.append(BadRow(str(path), number, reason))
                continue
            seen[video_id] = f"{path}:{number}"
            rows.append(ManifestRow(
                id=video_id, split=split, video=_relative(found, root),
                glosses=tuple(fields[keys["glosses"]].split()),
                signer=fields[keys["signer"]] or None, fps=PHOENIX_FPS, dataset=dataset,
                translation=fields.get(keys.get("translation", "")) or None))
    return rows


def read_phoenix2014(root: Path, bad_rows: list[BadRow], check_files: bool = False,
                     frames: Path | None = None) -> list[ManifestRow]:
    """Read RWTH-PHOENIX-Weather 2014 (multisigner) from ``root``.

    Reads ``annotations/manual/{train,dev,test}.corpus.csv`` (``id|folder|signer|annotation``);
    ``video`` is ``features/fullFrame-210x260px/<split>/<folder without /*.png>``, e.g.
    ``.../train/<id>/1``. With ``check_files``, a row whose frame folder holds no images is a bad
    row.
    """
    return _read_phoenix(
        root, bad_rows, dataset="phoenix2014", file_name="{split}.corpus.csv",
        columns=PHOENIX2014_COLUMNS,
        keys={"id": "id", "folder": "folder", "signer": "signer", "glosses": "annotation"},
        check_files=check_files, frames=frames, candidates=lambda folder: [folder])


def _with_and_without_1(folder: PurePosixPath) -> list[PurePosixPath]:
    """The annotated folder first, then the other layout (``<name>/1`` <-> ``<name>``)."""
    if folder.name == "1" and len(folder.parts) > 1:
        return [folder, folder.parent]
    return [folder, folder / "1"]


def read_phoenix2014t(root: Path, bad_rows: list[BadRow], check_files: bool = False,
                      frames: Path | None = None) -> list[ManifestRow]:
    """Read RWTH-PHOENIX-Weather 2014 T from ``root``.

    Reads ``annotations/manual/PHOENIX-2014-T.{train,dev,test}.corpus.csv``
    (``name|video|start|end|speaker|orth|translation``). The CSV says ``<name>/1/*.png`` but
    releases differ on disk, so both ``<split>/<name>/1`` and ``<split>/<name>`` are always looked
    up (whatever ``check_files`` says) and the one holding images is used; a row where neither does
    is a bad row naming both paths.
    """
    return _read_phoenix(
        root, bad_rows, dataset="phoenix2014t", file_name="PHOENIX-2014-T.{split}.corpus.csv",
        columns=PHOENIX2014T_COLUMNS,
        keys={"id": "name", "folder": "video", "signer": "speaker", "glosses": "orth",
              "translation": "translation"},
        check_files=check_files, frames=frames, candidates=_with_and_without_1)


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder)
                      if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _find_csl_frames(root: Path, names: set[str]) -> Path:
    """The shallowest folder under ``root`` (``root`` included) that holds a folder named after a
    video, e.g. ``sentence_frames-512x512/frames_512x512`` or ``frames_512x512``."""
    level, tried = [root], []
    for _ in range(CSL_SEARCH_DEPTH + 1):
        hits = [f for f in level if any(s.name in names for s in _subfolders(f))]
        if len(hits) > 1:
            raise ManifestError(f"{root}: several CSL-Daily frame roots found ("
                                f"{', '.join(_relative(h, root) for h in hits)}); pass frames=")
        if hits:
            return hits[0]
        tried += level
        level = [s for f in level for s in _subfolders(f)]
    shown = ", ".join(_relative(t, root) for t in tried[:12]) + (", ..." if len(tried) > 12 else "")
    raise ManifestError(
        f"{root}: no CSL-Daily frames root found (a folder holding per-video folders such as "
        f"{min(names)}/); tried {shown}; pass frames= to give it")


def read_csl_daily(root: Path, bad_rows: list[BadRow], check_files: bool = False,
                   frames: Path | None = None) -> list[ManifestRow]:
    """Read CSL-Daily from ``root``.

    Reads ``video_map.txt`` (``index|name|length|gloss|char|word|postag``) and ``split_1.txt``
    (``name|split``, split ``train``/``dev``/``test``), both with a header line, from ``root`` or
    from ``root/sentence_label`` (the official release's layout). Frames are
    ``<frames root>/<name>/*.jpg``; the frames root's name differs between releases
    (``sentence_frames-512x512/frames_512x512``, ``frames_512x512``, ``sentence/frames_512x512``,
    ...), so the shallowest folder under ``root`` holding per-name folders is used, unless
    ``frames`` gives it; none found raises ManifestError listing the folders tried.

    ``num_frames`` is ``length``; ``translation`` is the ``word`` column as written (the sentence
    segmented into space-separated words: remove the spaces for the plain sentence; ``char`` is the
    same sentence split into characters); ``signer`` is the ``P<nnnn>`` part of names shaped
    ``S<nnnnnn>_P<nnnn>_T<nn>`` (the official pickle gives the same number as ``signer``).
    A name without a split, or with an unknown one, is a bad row.
    """
    root = Path(root)
    label_dir = next((root / d for d in CSL_LABEL_DIRS if (root / d / "video_map.txt").is_file()),
                     root)
    split_path, map_path = label_dir / "split_1.txt", label_dir / "video_map.txt"
    if not map_path.is_file():
        raise ManifestError(f"{map_path}: annotation file not found (looked in "
                            + " and ".join(str(root / d) for d in CSL_LABEL_DIRS) + ")")

    splits: dict[str, str] = {}
    seen: dict[str, str] = {}
    for number, fields in _read_table(split_path, CSL_SPLIT_COLUMNS, bad_rows):
        reason = _id_problem(fields["name"], seen)
        if reason is None and fields["split"] not in SPLITS:
            reason = f"unknown split {fields['split']!r} (expected {', '.join(SPLITS)})"
        if reason is not None:
            bad_rows.append(BadRow(str(split_path), number, reason))
            continue
        seen[fields["name"]] = f"{split_path}:{number}"
        splits[fields["name"]] = fields["split"]

    entries: list[tuple[int, dict[str, str]]] = []
    seen = {}
    for number, fields in _read_table(map_path, CSL_MAP_COLUMNS, bad_rows):
        name = fields["name"]
        reason = _id_problem(name, seen)
        if reason is None and name not in splits:
            reason = f"{name!r} has no usable split in {split_path.name}"
        if reason is None and not fields["length"].isdecimal():
            reason = f"length must be a whole number of frames, got {fields['length']!r}"
        if reason is not None:
            bad_rows.append(BadRow(str(map_path), number, reason))
            continue
        seen[name] = f"{map_path}:{number}"
        entries.append((number, fields))
    if not entries:
        return []

    frames_root = Path(frames) if frames is not None else _find_csl_frames(
        root, {fields["name"] for _, fields in entries})
    rows: list[ManifestRow] = []
    for number, fields in entries:
        name = fields["name"]
        if check_files and not _has_images(frames_root / name):
            bad_rows.append(BadRow(str(map_path), number,
                                   f"no frame folder with images at {frames_root / name}"))
            continue
        signer = _CSL_NAME.match(name)
        rows.append(ManifestRow(
            id=name, split=splits[name], video=_relative(frames_root / name, root),
            glosses=tuple(fields["gloss"].split()), signer=signer.group(1) if signer else None,
            num_frames=int(fields["length"]), dataset="csl-daily",
            translation=fields["word"] or None))
    return rows


READERS: dict[str, Callable[..., list[ManifestRow]]] = {
    "phoenix2014": read_phoenix2014,
    "phoenix2014t": read_phoenix2014t,
    "csl-daily": read_csl_daily,
}
