"""Shared fixtures: tiny videos and manifests written into a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest


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
