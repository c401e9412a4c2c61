"""`cslr-pipe inspect`: one picture per video of what the cache holds for it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cslr_pipe.features.codecs import flow_color_wheel, flow_to_color
from cslr_pipe.features.errors import InputError
from cslr_pipe.features.heatmaps import render_heatmaps
from cslr_pipe.features.manifest import ManifestRow
from cslr_pipe.features.pose.wholebody import SKELETON
from cslr_pipe.features.store import Cache
from cslr_pipe.features.video import probe_video
from cslr_pipe.features.visualize import (alignment_panel, disc_legend, draw_skeleton, label, overlay_heatmap,
                                          pick_frames, read_frames_at, save_png, stack_rows)

FRAME_HEIGHT = 128
WHEEL_RADIUS = 48
PROBE_HEIGHT = 70


def inspect_picture(row: ManifestRow, video: Path, cache: Cache | None, num_frames: int = 8,
                    checkpoint: Path | None = None, device: str = "auto") -> np.ndarray:
    """A strip of frames of the video, with a panel for each cached result that can be drawn, and
    with a ``checkpoint``, its hypothesis aligned with the reference (decoded from ``cache``)."""
    total = probe_video(video).num_frames
    data = cache.read(row.id) if cache is not None and row.id in cache else {}
    if "frame_mean" in data:
        total = len(data["frame_mean"])  # decoded count; a container's claim may differ
    indices = pick_frames(total, num_frames)
    frames = read_frames_at(video, indices, FRAME_HEIGHT)
    indices = indices[:len(frames)]
    strip = np.concatenate([label(frame, f"frame {index}") for frame, index in zip(frames, indices)], axis=1)
    title = label(np.zeros((0, strip.shape[1], 3), np.uint8),
                  f"{row.id} ({row.split}): {' '.join(row.glosses) or '(no glosses)'}")
    rows = [title, strip]
    if "keypoints" in data:
        rows.append(label(np.zeros((0, strip.shape[1], 3), np.uint8), keypoints_origin(cache, row.id)))
        rows += keypoint_rows(data["keypoints"], indices, frames, cache.attrs(row.id, "keypoints"))
    if "flow" in data:
        rows.append(flow_row(data["flow"], indices, frames))
    if "frame_mean" in data:
        rows.append(probe_plot(data["frame_mean"], strip.shape[1], PROBE_HEIGHT, indices))
    if checkpoint is not None:
        rows.append(hypothesis_panel(checkpoint, cache, row, strip.shape[1], device))
    return stack_rows(rows)


PROBE_COLOURS = ("#d62728", "#2ca02c", "#1f77b4")  # mean R, G, B


def probe_plot(frame_mean: np.ndarray, width: int, height: int, marks: np.ndarray) -> np.ndarray:
    """The probe's mean R, G and B of every frame [T, 3] as an RGB image ``width`` x ``height`` px,
    drawn with matplotlib (Agg): frame numbers on x, the values on y, the picked frames ``marks``
    as grey lines, a legend of the three colours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    values = np.asarray(frame_mean, np.float64).reshape(len(frame_mean), -1)
    frames = np.arange(len(values))
    left, right, top, bottom = 34, 30, 13, 14  # margins in px: y ticks, legend, title, x ticks
    figure = Figure(figsize=(width / 100, height / 100), dpi=100)
    axes = figure.add_axes((left / width, bottom / height, 1 - (left + right) / width, 1 - (top + bottom) / height))
    for index in marks:
        axes.axvline(index, color="#c8c8c8", linewidth=0.8)
    for column, colour, name in zip(values.T, PROBE_COLOURS, "RGB"):
        axes.plot(frames, column, color=colour, linewidth=1.2, label=name, marker="o" if len(frames) == 1 else None)
    axes.set_xlim(*((0, len(values) - 1) if len(values) > 1 else (-1, 1)))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_locator(MaxNLocator(nbins=3))
    axes.tick_params(labelsize=7, length=2, pad=1)
    axes.set_title("probe: mean R, G, B of each frame (x: frame number, grey: the frames above)",
                   loc="left", fontsize=7, pad=2)
    axes.legend(loc="center left", bbox_to_anchor=(1, 0.5), borderaxespad=0.2, borderpad=0, frameon=False,
                fontsize=7, handlelength=1.2, handletextpad=0.3, labelspacing=0.15)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    drawn = np.asarray(canvas.buffer_rgba())[:height, :width, :3]
    image = np.full((height, width, 3), 255, np.uint8)  # exactly the size asked for, whatever the rounding
    image[:drawn.shape[0], :drawn.shape[1]] = drawn
    return image


def hypothesis_panel(checkpoint: Path, cache: Cache | None, row: ManifestRow, width: int,
                     device: str = "auto") -> np.ndarray:
    """The checkpoint's hypothesis for the video (as ``cslr-pipe eval`` decodes it) under its
    reference, errors in red, with the sentence's WER."""
    from cslr_pipe.training.evaluation import decode_video  # imports torch

    if cache is None:
        raise InputError("decoding with a checkpoint needs the cache of the streams it was trained on")
    details = decode_video(checkpoint, cache.root, row, device)
    title = (f"{checkpoint.parent.name}/{checkpoint.name}: WER {100 * details.wer:.1f}% "
             f"({details.substitutions} sub, {details.deletions} del, {details.insertions} ins "
             f"of {details.reference_words} words)")
    pairs = [(pair.op, pair.ref, pair.hyp) for pair in details.sentences[0].pairs]
    return alignment_panel(pairs, width, title)


def keypoints_origin(cache: Cache, video_id: str) -> str:
    """Where a video's keypoints came from: the backend that extracted them, or the imported source."""
    source = cache.attrs(video_id, "keypoints").get("source")
    if source:
        return f"keypoints imported from {source}"
    return f"keypoints extracted by the {cache.provenance('keypoints').backend} backend"


def keypoint_rows(keypoints: np.ndarray, indices: np.ndarray, frames: list[np.ndarray],
                  attrs: dict) -> list[np.ndarray]:
    """The skeleton over each frame, and the 79 heatmaps (max over channels) over each frame."""
    scale = FRAME_HEIGHT / float(attrs["height"])
    picked = keypoints[indices]
    skeletons = [draw_skeleton(frame, points, scale, SKELETON) for frame, points in zip(frames, picked)]
    heatmaps = render_heatmaps(picked, (int(attrs["height"]), int(attrs["width"])), points="twostream")
    overlays = [overlay_heatmap(frame, maps) for frame, maps in zip(frames, heatmaps)]
    found = (picked[:, :, 2] > 0).mean(axis=1)
    return [np.concatenate([label(image, f"keypoints {share:.0%} found")
                            for image, share in zip(skeletons, found)], axis=1),
            np.concatenate([label(image, "79 heatmaps") for image in overlays], axis=1)]


def flow_row(flow: np.ndarray, indices: np.ndarray, frames: list[np.ndarray]) -> np.ndarray:
    """The flow from each picked frame to the next, as colour-wheel images under the frames, and
    the colour wheel as legend on the right (its rim: the tile's max speed; y points down).

    Each tile is scaled to its own largest speed, but to at least 2 px, so a still moment looks
    still instead of showing its sub-pixel noise at full saturation.
    """
    fields = flow[np.minimum(indices, len(flow) - 1)]  # the last frame shows the last field
    peaks = np.linalg.norm(fields, axis=1).reshape(len(fields), -1).max(axis=1)
    colours = [flow_to_color(field, max_norm=max(2.0, float(peak))) for field, peak in zip(fields, peaks)]
    tiles = [label(cv2.resize(colour, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST),
                   f"flow, max {peak:.1f} px") for colour, frame, peak in zip(colours, frames, peaks)]
    legend = label(disc_legend(flow_color_wheel(WHEEL_RADIUS), tiles[0].shape[0] - 18, "x right, y down"),
                   "rim = max")
    return np.concatenate([*tiles, legend], axis=1)


def inspect_video(row: ManifestRow, video: Path, cache: Cache | None, out: Path,
                  num_frames: int = 8, checkpoint: Path | None = None, device: str = "auto") -> Path:
    """Draw :func:`inspect_picture` and save it as PNG at ``out``."""
    return save_png(inspect_picture(row, video, cache, num_frames, checkpoint, device), out)
