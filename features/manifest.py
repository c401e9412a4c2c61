"""Manifests: JSON Lines, one video per line (schema in docs/formats.md), and gloss vocabularies."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from cslr_pipe.features.errors import InputError, MissingFileError
from cslr_pipe.features.files import atomic_write_text

SPLITS = ("train", "dev", "test")
BLANK = "<blank>"
REQUIRED = ("id", "split", "video", "glosses")
OPTIONAL = ("signer", "fps", "num_frames", "dataset", "translation")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,+=@-]*$")


@dataclass(frozen=True)
class ManifestRow:
    """One video of a corpus."""

    id: str
    split: str
    video: str  # a video file or a folder of frames, relative to the manifest's root
    glosses: tuple[str, ...]
    signer: str | None = None
    fps: float | None = None
    num_frames: int | None = None
    dataset: str | None = None
    translation: str | None = None
    extra: dict = field(default_factory=dict, compare=False)  # unknown keys, kept as they were

    def to_json(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        row["glosses"] = list(self.glosses)
        return {**row, **self.extra}


@dataclass(frozen=True)
class BadRow:
    """A row that was left out, with where it was and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


class ManifestError(InputError):
    """A manifest that cannot be used at all, or a bad row when rows are read strictly."""


def check_id(video_id: object) -> str | None:
    """Why ``video_id`` is not a safe group and file name, or None when it is."""
    if not isinstance(video_id, str) or not video_id:
        return "id must be a non-empty string"
    if ".." in video_id or not _SAFE_ID.match(video_id):
        return (f"unsafe id {video_id!r}: use letters, digits and _ . , + = @ -, "
                "no '..', no path separators")
    return None


def row_from_dict(data: dict) -> ManifestRow:
    """Validate one decoded JSON object; raises ManifestError with the reason."""
    if not isinstance(data, dict):
        raise ManifestError("a row must be a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ManifestError(f"missing required field(s): {', '.join(missing)}")
    reason = check_id(data["id"])
    if reason:
        raise ManifestError(reason)
    if data["split"] not in SPLITS:
        raise ManifestError(f"split must be one of {', '.join(SPLITS)}, got {data['split']!r}")
    if not isinstance(data["video"], str) or not data["video"]:
        raise ManifestError("video must be a non-empty path string")
    glosses = data["glosses"]
    if not isinstance(glosses, list) or not all(isinstance(g, str) and g for g in glosses):
        raise ManifestError("glosses must be a list of non-empty strings")
    known = {k: data[k] for k in OPTIONAL if data.get(k) is not None}
    extra = {k: v for k, v in data.items() if k not in REQUIRED and k not in OPTIONAL}
    return ManifestRow(id=data["id"], split=data["split"], video=data["video"],
                       glosses=tuple(glosses), extra=extra, **known)


def read_manifest(path: str | Path, bad_rows: list[BadRow] | None = None) -> list[ManifestRow]:
    """Read a manifest. Bad rows raise ManifestError, or are appended to ``bad_rows`` and skipped."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                try:
                    row = row_from_dict(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ManifestError(f"not valid JSON ({error.msg})") from None
                if row.id in seen:
                    raise ManifestError(f"duplicate id {row.id!r} (first on line {seen[row.id]})")
            except ManifestError as error:
                if bad_rows is None:
                    raise ManifestError(f"{path}:{number}: {error}") from None
                bad_rows.append(BadRow(str(path), number, str(error)))
                continue
            seen[row.id] = number
            rows.append(row)
    return rows


def write_manifest(rows: Iterable[ManifestRow], path: str | Path) -> None:
    """Write rows as JSON Lines, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row.to_json(), ensure_ascii=False) + "\n" for row in rows)
    atomic_write_text(path, text)


def build_vocabulary(rows: Iterable[ManifestRow], splits: tuple[str, ...] = ("train",)) -> list[str]:
    """The sorted set of glosses of ``splits``, with the CTC blank at index 0."""
    glosses = {g for row in rows if row.split in splits for g in row.glosses}
    return [BLANK, *sorted(glosses)]


def write_vocabulary(vocabulary: list[str], path: str | Path) -> None:
    atomic_write_text(Path(path), json.dumps(vocabulary, ensure_ascii=False, indent=0) + "\n")


def read_vocabulary(path: str | Path) -> list[str]:
    vocabulary = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(vocabulary, list) or not vocabulary or vocabulary[0] != BLANK:
        raise ManifestError(f"{path}: a vocabulary is a JSON list that starts with {BLANK!r}")
    return vocabulary


def find_vocabulary(manifest: str | Path, vocab: str | Path | None, rows: Iterable[ManifestRow]) -> list[str]:
    """The vocabulary file given, else NAME.vocab.json beside the manifest, else vocabulary.json there,
    else one built from the train split of ``rows``."""
    manifest = Path(manifest)
    candidates = [Path(vocab)] if vocab else [manifest.with_suffix(".vocab.json"), manifest.parent / "vocabulary.json"]
    for path in candidates:
        if path.is_file():
            return read_vocabulary(path)
    if vocab:
        raise MissingFileError(f"{vocab}: vocabulary not found")
    return build_vocabulary(rows)
