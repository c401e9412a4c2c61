"""Shared fixtures: tiny videos and manifests, and a tiny feature cache to train on."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from cslr_pipe.features.store import Provenance, ShardWriter
from cslr_pipe.features.manifest import ManifestRow, build_vocabulary, write_manifest, write_vocabulary


def frame(index: int, height: int = 24, width: int = 32) -> np.ndarray:
    """An RGB frame whose mean colour encodes its index."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = (index * 10) % 256
    image[..., 1] = 128
    image[height // 4: height // 2, (index * 3) % width] = 255
    return image


def write_frame_folder(folder: Path, num_frames: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        cv2.imwrite(str(folder / f"images{i + 1:04d}.png"), cv2.cvtColor(frame(start + i), cv2.COLOR_RGB2BGR))
    return folder


def write_manifest_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def tiny_corpus(tmp_path: Path):
    """Seven frame-folder videos of 3..9 frames and their manifest; returns (manifest, rows)."""
    rows = []
    for i in range(7):
        video_id = f"vid-{i}"
        write_frame_folder(tmp_path / "frames" / video_id, 3 + i, start=i)
        rows.append({"id": video_id, "split": ["train", "dev", "test"][i % 3],
                     "video": f"frames/{video_id}", "glosses": ["A", "B"][: 1 + i % 2]})
    return write_manifest_rows(tmp_path / "manifest.jsonl", rows), rows


def write_feature_cache(root: Path, rows: list, arrays: dict[str, dict[str, np.ndarray]]) -> Path:
    """Manifest, vocabulary and one committed float16 shard per stream: ``arrays[id][stream]``."""
    write_manifest(rows, root / "manifest.jsonl")
    write_vocabulary(build_vocabulary(rows), root / "manifest.vocab.json")
    for stream in arrays[rows[0].id]:
        with ShardWriter(root / "cache" / stream, 0, [r.id for r in rows], Provenance(stream, "test", {})) as writer:
            for row in rows:
                writer.write(row.id, {stream: arrays[row.id][stream].astype(np.float16)})
            writer.commit()
    return root


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is fastest, and far faster than two on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


GLOSSES = ["A", "B", "C", "D"]


@pytest.fixture(scope="session")
def feature_corpus(tmp_path_factory):
    """Sentences whose glosses are 12-step bursts of a gloss-specific direction in 16-d, plus noise."""
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(len(GLOSSES), 16)).astype(np.float32)
    rows, arrays = [], {}
    for i in range(48):
        glosses = list(rng.choice(GLOSSES, size=rng.integers(2, 4)))
        parts = [rng.normal(0, 0.3, size=(6, 16))]
        for gloss in glosses:
            parts.append(directions[GLOSSES.index(gloss)] + rng.normal(0, 0.3, size=(12, 16)))
            parts.append(rng.normal(0, 0.3, size=(4, 16)))
        split = "train" if i < 36 else "dev" if i < 42 else "test"
        rows.append(ManifestRow(f"s{i:02d}", split, f"v{i}.mp4", tuple(glosses)))
        arrays[rows[-1].id] = np.concatenate(parts).astype(np.float16)
    return write_feature_cache(root, rows, {i: {"features.rgb": a} for i, a in arrays.items()})


def _find_sclite() -> str | None:
    path = shutil.which("sclite")
    if path:
        return path
    if shutil.which("dpkg"):
        listing = subprocess.run(["dpkg", "-L", "sctk"], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            if line.endswith("/bin/sclite") and Path(line).is_file():
                return line
    return None


@dataclass
class ScliteResult:
    """What the sclite binary reported: per-utterance alignments keyed by the lower-cased id
    (sclite lower-cases ids and words; None for ``***``), the dtl file's totals, and its printed
    total error percentage."""

    alignments: dict[str, list[tuple[str, str | None, str | None]]]
    totals: dict[str, int]
    percent: float


@pytest.fixture(scope="session")
def run_sclite():
    """``run_sclite(ctm, stm)``: the real NIST sclite (Debian ``sctk``) run as the PHOENIX scripts do."""
    binary = _find_sclite()
    if binary is None:
        pytest.skip(
            "NIST sclite binary NOT FOUND - the comparison with the official PHOENIX scorer did not run; "
            "install it with `apt-get install sctk` (Debian/Ubuntu) or build SCTK"
        )

    def run(ctm: Path, stm: Path) -> ScliteResult:
        out = ctm.parent
        subprocess.run([binary, "-h", str(ctm), "ctm", "-r", str(stm), "stm", "-f", "0", "-o", "sgml", "dtl",
                        "-O", str(out)], check=True, capture_output=True)
        sgml = (out / f"{ctm.name}.sgml").read_text()
        alignments = {}
        for m in re.finditer(r'<PATH [^>]*file="([^"]+)"[^>]*>\n(.*?)</PATH>', sgml, re.S):
            ops = []
            for item in filter(None, m.group(2).strip().split(":")):
                op, ref, hyp = item.split(",")[:3]
                ops.append((op, ref.strip('"') or None, hyp.strip('"') or None))
            alignments[m.group(1)] = ops
        dtl = (out / f"{ctm.name}.dtl").read_text()

        def count(label):
            return int(re.search(re.escape(label) + r"\s.*?\(\s*(\d+)\)", dtl).group(1))

        labels = {"errors": "Percent Total Error", "hits": "Percent Correct", "substitutions": "Percent Substitution",
                  "deletions": "Percent Deletions", "insertions": "Percent Insertions",
                  "reference_words": "Ref. words", "hypothesis_words": "Hyp. words"}
        percent = float(re.search(r"Percent Total Error\s*=\s*([\d.]+)%", dtl).group(1))
        return ScliteResult(alignments, {key: count(label) for key, label in labels.items()}, percent)

    return run
