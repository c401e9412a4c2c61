"""``RUN/curves.png``: a training run's loss and dev WER per epoch, drawn with matplotlib from the
epoch records of its log (``RUN/log.jsonl``).

Matplotlib's Agg canvas renders without a display and without pyplot's global figures, so the
trainer can redraw the picture after every epoch.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from cslr_pipe.features.files import atomic_write_bytes

LOSS_COLOUR = "#1f77b4"  # blue: the optimised loss
WER_COLOUR = "#d62728"  # red: dev WER
TERM_COLOURS = ("#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")  # other loss terms


def read_log(path: str | Path) -> list[dict]:
    """The epoch records of a run's ``log.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _finite(values: list) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return np.where(np.isfinite(values), values, np.nan)  # a gap, not an axis stretched to inf


def curves_figure(history: list[dict], title: str = "") -> Figure:
    """Two panels over the epochs: the training loss (and any further loss terms the model logs,
    thinner) and the dev WER in %, its best epoch marked; a dotted line where a phase begins."""
    epochs = [record["epoch"] for record in history]
    marker = "o" if len(epochs) <= 30 else None
    figure = Figure(figsize=(6.4, 5.2), dpi=100)  # fixed margins: a constrained layout doubles the time
    loss_axes, wer_axes = figure.subplots(2, 1, sharex=True, gridspec_kw=dict(
        left=0.11, right=0.97, bottom=0.09, top=0.89 if title else 0.94, hspace=0.22))
    loss_axes.plot(epochs, _finite([r["train_loss"] for r in history]), color=LOSS_COLOUR, linewidth=2,
                   marker=marker, markersize=3, label="loss")
    terms = sorted({key for record in history for key in record if key.startswith("train_")} - {"train_loss"})
    for number, term in enumerate(terms):
        loss_axes.plot(epochs, _finite([r.get(term, np.nan) for r in history]), linewidth=1,
                       color=TERM_COLOURS[number % len(TERM_COLOURS)],
                       label=term[len("train_"):])
    loss_axes.set_title("training loss")
    loss_axes.set_ylabel("loss")

    wer = 100 * _finite([r["dev_wer"] for r in history])
    wer_axes.plot(epochs, wer, color=WER_COLOUR, linewidth=2, marker=marker, markersize=3, label="dev WER")
    if np.isfinite(wer).any():
        best = int(np.nanargmin(wer))
        wer_axes.plot([epochs[best]], [wer[best]], linestyle="none", marker="*", markersize=11,
                      color="black", label=f"lowest {wer[best]:.1f}% (epoch {epochs[best]})")
        wer_axes.set_ylim(0, max(100.0, float(np.nanmax(wer))) * 1.05)
    wer_axes.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
    wer_axes.set_title("dev WER")
    wer_axes.set_ylabel("WER")
    wer_axes.set_xlabel("epoch")
    wer_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if max(epochs) - min(epochs) < 2:  # else the few whole-number ticks give way to fractions
        wer_axes.set_xlim(min(epochs) - 1, max(epochs) + 1)

    phases = [(record["epoch"], record.get("phase")) for record in history]
    starts = [(epoch, phase) for (epoch, phase), (_, before) in zip(phases[1:], phases) if phase != before]
    for axes in (loss_axes, wer_axes):
        axes.grid(True, color="#e0e0e0")
        for epoch, phase in starts:
            axes.axvline(epoch - 0.5, color="#888888", linestyle=":", linewidth=1)
        axes.legend(loc="upper right", fontsize="small", framealpha=0.9)
    for epoch, phase in starts:
        loss_axes.annotate(f"{phase} \u2192", (epoch - 0.5, 1), xycoords=("data", "axes fraction"),
                           xytext=(3, -3), textcoords="offset points", ha="left", va="top", fontsize="small",
                           color="#555555")
    if title:
        figure.suptitle(title, y=0.985)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """``figure`` rendered by the Agg canvas, as PNG."""
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def draw_curves(history: list[dict], path: str | Path) -> Path | None:
    """Draw :func:`curves_figure` for the epoch records ``history`` into the PNG ``path``
    (atomically; the run folder's name is the title); nothing without records."""
    if not history:
        return None
    path = Path(path)
    atomic_write_bytes(path, png_bytes(curves_figure(history, title=path.parent.name)))
    return path
