"""Pictures a person can judge at a glance: frame strips with per-stage overlays, as PNG.

Drawn with OpenCV only. Each later stage adds a row or an overlay (keypoints, heatmaps, flow).
Charts with axes are matplotlib's, drawn by the modules that own them (training/curves.py,
pipeline/inspect.py).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cslr_pipe.features.files import atomic_write_bytes
from cslr_pipe.features.video import iter_frames

TEXT = (20, 20, 20)
BACKGROUND = (255, 255, 255)


def pick_frames(num_frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over a video, first and last included."""
    return np.unique(np.linspace(0, num_frames - 1, min(count, num_frames)).round().astype(int))


def read_frames_at(video: str | Path, indices: np.ndarray, height: int) -> list[np.ndarray]:
    """The frames at ``indices`` (sorted), scaled to ``height`` pixels, streaming the video once."""
    wanted, out, start = set(int(i) for i in indices), [], 0
    for chunk in iter_frames(video, chunk_size=32):
        for offset, frame in enumerate(chunk):
            if start + offset in wanted:
                width = round(frame.shape[1] * height / frame.shape[0])
                out.append(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))
        start += len(chunk)
        if len(out) == len(wanted):
            break
    return out


def label(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` with a white band on top that holds ``text``."""
    band = np.full((18, image.shape[1], 3), BACKGROUND, np.uint8)
    cv2.putText(band, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, TEXT, 1, cv2.LINE_AA)
    return np.concatenate([band, image])


def disc_legend(square: np.ndarray, height: int, text: str) -> np.ndarray:
    """A white tile ``height`` px high with the disc inscribed in ``square`` [D, D, 3] (e.g. a
    colour wheel), outlined in grey, and ``text`` under it."""
    size = len(square)
    tile = np.full((height, size + 10, 3), BACKGROUND, np.uint8)
    radius = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    inside = np.hypot(yy - radius, xx - radius) <= radius
    tile[4:4 + size, 5:5 + size][inside] = square[inside]
    centre = (5 + size // 2, 4 + size // 2)
    cv2.circle(tile, centre, size // 2 + 1, (160, 160, 160), 1, cv2.LINE_AA)
    cv2.putText(tile, text, (3, min(height - 4, size + 18)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, TEXT, 1, cv2.LINE_AA)
    return tile


CORRECT, ERROR = (20, 120, 40), (210, 30, 30)


def alignment_panel(pairs: list[tuple[str, str | None, str | None]], width: int, title: str) -> np.ndarray:
    """Reference over hypothesis, word by word, wrapped to ``width`` px: ``pairs`` are (op, ref,
    hyp) with op C (correct: green), S, D or I (red, op letter under it; ``***`` on the missing
    side of a deletion / insertion)."""
    font, scale, line = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 15
    start, gap = 40, 10
    columns, x = [[]], start
    for op, ref, hyp in pairs:
        words = (ref or "***", hyp or "***")
        column = max(cv2.getTextSize(word, font, scale, 1)[0][0] for word in words)
        if x + column > width - 4 and columns[-1]:
            columns.append([])
            x = start
        columns[-1].append((x, op, *words))
        x += column + gap
    image = np.full((18 + 3 * line * len(columns) + 4, width, 3), BACKGROUND, np.uint8)
    cv2.putText(image, title, (3, 13), font, scale, TEXT, 1, cv2.LINE_AA)
    for number, words in enumerate(columns):
        top = 18 + 3 * line * number
        for row, name in enumerate(("REF", "HYP")):
            cv2.putText(image, name, (3, top + line * (row + 1) - 3), font, scale, TEXT, 1, cv2.LINE_AA)
        for x, op, ref, hyp in words:
            colour = CORRECT if op == "C" else ERROR
            for row, word in enumerate((ref, hyp, "" if op == "C" else op)):
                cv2.putText(image, word, (x, top + line * (row + 1) - 3), font, scale, colour, 1, cv2.LINE_AA)
    return image


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of possibly different widths, left-aligned on a white canvas."""
    width = max(row.shape[1] for row in rows)
    padded = [np.concatenate([row, np.full((row.shape[0], width - row.shape[1], 3), BACKGROUND,
                                           np.uint8)], axis=1) for row in rows]
    return np.concatenate(padded)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an RGB image as PNG (atomically)."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode {path} as PNG")
    atomic_write_bytes(Path(path), encoded.tobytes())
    return Path(path)


# colours by part: body, feet, face, left hand, right hand (RGB)
PART_COLOURS = ((80, 80, 240), (80, 80, 240), (240, 240, 240), (60, 200, 90), (250, 140, 40))


def _part_of(index: int) -> int:
    return 0 if index < 17 else 1 if index < 23 else 2 if index < 91 else 3 if index < 112 else 4


def draw_skeleton(frame: np.ndarray, keypoints: np.ndarray, scale: float,
                  edges: tuple[tuple[int, int], ...], threshold: float = 0.0) -> np.ndarray:
    """A copy of ``frame`` with the points whose score > threshold and the edges between them.

    ``keypoints`` [K, 3] are (x, y, score) in source pixels; ``scale`` maps them onto ``frame``.
    """
    image = frame.copy()
    seen = keypoints[:, 2] > threshold
    xy = np.round(keypoints[:, :2] * scale).astype(int)
    for a, b in edges:
        if seen[a] and seen[b]:
            cv2.line(image, tuple(xy[a]), tuple(xy[b]), PART_COLOURS[_part_of(b)], 1, cv2.LINE_AA)
    for index in np.flatnonzero(seen):
        radius = 1 if 23 <= index < 91 else 2
        cv2.circle(image, tuple(xy[index]), radius, PART_COLOURS[_part_of(index)], -1, cv2.LINE_AA)
    return image


def overlay_heatmap(frame: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """``frame`` darkened, with the per-pixel maximum of ``heatmaps`` [K, h, w] in a colour map."""
    heat = heatmaps.max(axis=0) if len(heatmaps) else np.zeros(heatmaps.shape[1:], np.float32)
    heat = cv2.resize(heat.astype(np.float32), (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET),
                            cv2.COLOR_BGR2RGB)
    alpha = np.clip(heat, 0, 1)[..., None] * 0.8
    return np.uint8((frame * 0.45) * (1 - alpha) + coloured * alpha)
