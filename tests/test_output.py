"""Quiet, readable output: native log lines hidden, a progress bar per stage, TensorBoard events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cslr_pipe.features.quiet import VERBOSE_ENV, native_stderr_silenced
from cslr_pipe.pipeline.cli import main
from cslr_pipe.pipeline.dag import StageProgress, stage_totals
from cslr_pipe.training.curves import LOSS_COLOUR, WER_COLOUR, curves_figure, draw_curves, png_bytes
from cslr_pipe.training.trainer import Run, TrainConfig, open_event_writer, train


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files of ``folder``, read by TensorBoard itself: tag -> (step, value)."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    accumulator = event_accumulator.EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


# ------------------------------------------------------------------------------ event files


def test_event_files_read_back_in_tensorboard(tmp_path):
    written = {0: {"train/loss": 2.5, "dev/wer": 0.75, "lr": 3e-3},
               1: {"train/loss": 1.125, "dev/wer": 0.5, "lr": 1e-7},
               2**40: {"train/loss": -0.1}}  # a step of several varint bytes, a negative value
    first, second = open_event_writer(tmp_path), open_event_writer(tmp_path)  # the same second
    for step, scalars in written.items():
        for tag, value in scalars.items():
            first.add_scalar(tag, value, step)
    second.add_scalar("lr", 0.5, 2**40 + 1)  # a second writer: its own file
    first.close()
    second.close()
    files = sorted(path.name for path in tmp_path.iterdir())
    assert len(files) == 2 and all(name.startswith("events.out.tfevents.") for name in files)
    expected = {}
    for step, scalars in [*written.items(), (2**40 + 1, {"lr": 0.5})]:
        for tag, value in scalars.items():
            expected.setdefault(tag, []).append((step, float(np.float32(value))))
    assert read_scalars(tmp_path) == expected


def test_trainer_writes_events_and_a_resumed_run_adds_its_own(feature_corpus, tmp_path):
    vocabulary = json.loads((feature_corpus / "manifest.vocab.json").read_text())
    run = Run(feature_corpus / "manifest.jsonl", vocabulary, feature_corpus / "cache", tmp_path / "run")
    config = TrainConfig(model="ctc", streams=["features.rgb"], epochs=3, batch_size=4, lr=3e-3,
                         model_options={"hidden": 16, "dropout": 0.0})
    lines = []
    train(config, run, log=lines.append, stop_after=2, progress=False)
    train(config, run, resume=True, log=lines.append, progress=False)
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 3 and all(" s, ETA " in line for line in epoch_lines)
    assert epoch_lines[-1].endswith("ETA 00:00")
    assert len(list(run.out.glob("events.out.tfevents.*"))) == 2
    history = [json.loads(line) for line in (run.out / "log.jsonl").read_text().splitlines()]
    scalars = read_scalars(run.out)
    assert set(scalars) == {"train/loss", "dev/wer", "lr"}
    for tag, key in (("train/loss", "train_loss"), ("dev/wer", "dev_wer"), ("lr", "lr")):
        assert scalars[tag] == [(h["epoch"], float(np.float32(h[key]))) for h in history]
    curves = read_rgb(run.out / "curves.png")  # the three epochs' loss and dev WER, drawn
    assert colour_pixels(curves, LOSS_COLOUR) > 300 and colour_pixels(curves, WER_COLOUR) > 300


# ------------------------------------------------------------------------------ progress


def test_stage_totals_count_the_videos_of_every_shard():
    keys = [("probe", 0), ("probe", 1), ("probe", 2), ("keypoints", 0), ("keypoints", 1), ("keypoints", 2)]
    assert stage_totals(keys, [8, 8, 3]) == {"probe": 19, "keypoints": 19}
    assert list(stage_totals(keys[3:] + keys[:3], [8, 8, 3])) == ["keypoints", "probe"]
    assert stage_totals([], []) == {}


def test_a_bar_per_stage_advances_by_the_videos_of_a_finished_shard(capsys, monkeypatch):
    keys = [("probe", 0), ("probe", 1), ("features.rgb", 0), ("features.rgb", 1)]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars on a terminal
    with StageProgress(keys, [8, 3]) as bars:
        bars.finished(("features.rgb", 1))
        bars.finished(("probe", 0))
        assert {stage: bar.n for stage, bar in bars.bars.items()} == {"probe": 8, "features.rgb": 3}
    shown = capsys.readouterr().err
    assert "probe         " in shown and "8/11 videos" in shown and "3/11 videos" in shown
    assert "videos/s" in shown


def test_in_a_log_file_a_line_per_completed_stage(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    keys = [("probe", 0), ("probe", 1), ("features.rgb", 0), ("features.rgb", 1)]
    with StageProgress(keys, [8, 3]) as bars:
        for key in [("probe", 0), ("features.rgb", 0), ("probe", 1)]:
            bars.finished(key)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("probe: 11 videos, complete 00:00 after the start")


# ------------------------------------------------------------------------------ quiet by default


def test_native_stderr_silenced_nests_and_restores(capfd, monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    os.write(2, b"before\n")
    with native_stderr_silenced():
        os.write(2, b"hidden\n")
        with native_stderr_silenced():
            os.write(2, b"hidden too\n")
        os.write(2, b"still hidden\n")
    os.write(2, b"after\n")
    monkeypatch.setenv(VERBOSE_ENV, "1")
    with native_stderr_silenced():
        os.write(2, b"verbose\n")
    assert capfd.readouterr().err == "before\nafter\nverbose\n"


def test_verbose_flag_reaches_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "0")
    result = CliRunner().invoke(main, ["--verbose", "info", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert os.environ[VERBOSE_ENV] == "1"


MEDIAPIPE_NOISE = ("inference_feedback_manager", "XNNPACK")


@pytest.mark.parametrize("verbose", [False, True])
def test_mediapipe_backend_logs_nothing_unless_verbose(verbose):
    """Holistic's C++ log lines go straight to fd 2, so they are looked for in a child's stderr."""
    pytest.importorskip("mediapipe")
    script = textwrap.dedent("""
        import numpy as np
        from cslr_pipe.features.pose import build_pose_backend

        backend = build_pose_backend("mediapipe")
        for video in range(2):  # the second video restarts the graph, which logs again
            backend.begin_video()
            backend(np.zeros((2, 64, 64, 3), np.uint8))
        backend.close()
        print("done")
    """)
    env = {**os.environ, VERBOSE_ENV: "1" if verbose else "0"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr
    noisy = [line for line in result.stderr.splitlines() if any(word in line for word in MEDIAPIPE_NOISE)]
    if verbose:
        assert noisy  # the lines exist: without the silencing the check above would see them
    else:
        assert noisy == [], result.stderr


# ------------------------------------------------------------------------------ curves


def colour_pixels(image: np.ndarray, hex_colour: str) -> int:
    """How many pixels of an RGB image are (within antialiasing's reach) of ``hex_colour``."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).max(axis=-1) <= 40).sum())


def read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_curves_draw_the_logged_loss_terms_and_dev_wer(tmp_path):
    history = [{"epoch": epoch, "phase": "stage1" if epoch < 3 else "stage2", "train_loss": 4 / (epoch + 1),
                "train_ctc": 2 / (epoch + 1), "dev_wer": wer, "lr": 1e-3}
               for epoch, wer in enumerate([1.0, 0.8, 0.6, 0.5, 0.25, 0.3])]
    figure = curves_figure(history, title="run")
    png_bytes(figure)  # drawn: tick labels exist only now
    loss_axes, wer_axes = figure.axes
    assert (loss_axes.get_title(), wer_axes.get_title(), wer_axes.get_xlabel()) == ("training loss", "dev WER", "epoch")
    lines = {line.get_label(): line for line in [*loss_axes.get_lines(), *wer_axes.get_lines()]}
    np.testing.assert_allclose(lines["loss"].get_ydata(), [h["train_loss"] for h in history])
    np.testing.assert_allclose(lines["ctc"].get_ydata(), [h["train_ctc"] for h in history])
    np.testing.assert_allclose(lines["dev WER"].get_ydata(), [100 * h["dev_wer"] for h in history])
    np.testing.assert_allclose(lines["dev WER"].get_xdata(), range(6))
    assert [t.get_text() for t in loss_axes.get_legend().get_texts()] == ["loss", "ctc"]
    assert [t.get_text() for t in wer_axes.get_legend().get_texts()] == ["dev WER", "lowest 25.0% (epoch 4)"]
    wer_ticks = [t.get_text() for t in wer_axes.get_yticklabels()]
    assert "0%" in wer_ticks and "100%" in wer_ticks
    epoch_ticks = [t.get_text() for t in wer_axes.get_xticklabels() if t.get_text()]
    assert epoch_ticks and all(text.lstrip("\u2212-").isdigit() for text in epoch_ticks)  # whole epochs
    assert any("stage2" in text.get_text() for text in loss_axes.texts)  # where the second phase begins

    path = draw_curves(history, tmp_path / "run" / "curves.png")
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]
    image = read_rgb(path)
    assert colour_pixels(image, LOSS_COLOUR) > 300 and colour_pixels(image, WER_COLOUR) > 300
    assert draw_curves([], tmp_path / "none" / "curves.png") is None
