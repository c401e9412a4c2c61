"""`cslr-pipe inspect`: the flow colour-wheel legend, and a trained model's hypothesis panel."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
from click.testing import CliRunner

from cslr_pipe.features.codecs import flow_color_wheel, flow_to_color
from cslr_pipe.features.visualize import disc_legend
from cslr_pipe.pipeline.cli import main
from cslr_pipe.features.store import open_cache
from cslr_pipe.pipeline.inspect import PROBE_COLOURS, WHEEL_RADIUS, flow_row, hypothesis_panel, probe_plot
from cslr_pipe.features.manifest import read_manifest, write_manifest
from cslr_pipe.training.evaluation import decode_video, evaluate_checkpoint
from cslr_pipe.training.trainer import Run, TrainConfig, train

from conftest import write_frame_folder


def colour_of(flow_x: float, flow_y: float, max_norm: float) -> np.ndarray:
    return flow_to_color(np.array([flow_x, flow_y], np.float32).reshape(2, 1, 1), max_norm=max_norm)[0, 0]


def test_colour_wheel_decodes_directions_with_y_down():
    radius = 20
    wheel = flow_color_wheel(radius)
    assert wheel.shape == (2 * radius + 1, 2 * radius + 1, 3)
    centre = radius
    m = 7.5  # any image maximum: the wheel's rim stands for it
    np.testing.assert_array_equal(wheel[centre, centre], colour_of(0, 0, m))
    np.testing.assert_array_equal(wheel[centre, centre], [255, 255, 255])  # no motion: white
    np.testing.assert_array_equal(wheel[centre, 2 * radius], colour_of(+m, 0, m))  # right: (+m, 0)
    np.testing.assert_array_equal(wheel[0, centre], colour_of(0, -m, m))  # above: (0, -m), y points down
    np.testing.assert_array_equal(wheel[2 * radius, centre], colour_of(0, +m, m))
    np.testing.assert_array_equal(wheel[centre, centre + radius // 2], colour_of(m / 2, 0, m))
    assert not np.array_equal(wheel[0, centre], wheel[2 * radius, centre])


def test_probe_plot_draws_the_three_means_with_axes():
    rgb_means = np.stack([np.linspace(10, 200, 40), np.full(40, 120.0), 60 + 40 * np.sin(np.arange(40) / 4)], axis=1)
    image = probe_plot(rgb_means, 684, 70, marks=np.array([0, 13, 26, 39]))
    assert image.shape == (70, 684, 3) and image.dtype == np.uint8
    for colour in PROBE_COLOURS:  # each series is a line across the plot, not just its legend entry
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        near = np.abs(image.astype(int) - rgb).max(axis=-1) <= 40  # antialiased lines are lighter
        assert near.sum() > 400, colour
        assert np.ptp(np.flatnonzero(near.any(axis=0))) > 500  # spans the width
    dark = image.max(axis=-1) < 100
    assert dark[:12].sum() > 200  # the title
    assert dark[-12:, :40].sum() > 5 and dark[15:-15, :30].sum() > 30  # x and y tick labels
    flat = probe_plot(np.full((1, 3), 128.0), 300, 70, marks=np.array([0]))  # one frame, one value
    assert flat.shape == (70, 300, 3)


def test_flow_row_ends_with_the_legend():
    frames = [np.zeros((128, 170, 3), np.uint8)] * 3
    flow = np.random.default_rng(0).normal(0, 3, size=(4, 2, 12, 16)).astype(np.float32)
    row = flow_row(flow, np.array([0, 2, 4]), frames)
    legend = disc_legend(flow_color_wheel(WHEEL_RADIUS), 128, "x right, y down")
    assert row.shape[1] == 3 * 170 + legend.shape[1]
    np.testing.assert_array_equal(row[18:, -legend.shape[1]:], legend)


def test_inspect_draws_the_hypothesis_that_eval_decodes(feature_corpus, tmp_path, one_thread):
    vocabulary = json.loads((feature_corpus / "manifest.vocab.json").read_text())
    config = TrainConfig(model="ctc", streams=["features.rgb"], epochs=2, batch_size=4, lr=3e-3,
                         model_options={"hidden": 32, "lstm_layers": 1, "dropout": 0.0})
    run = Run(feature_corpus / "manifest.jsonl", vocabulary, feature_corpus / "cache", tmp_path / "run")
    train(config, run, log=lambda _: None)
    checkpoint = tmp_path / "run" / "best.pt"
    # the feature cache has no videos: give one test video a frame folder
    rows = read_manifest(feature_corpus / "manifest.jsonl")
    row = replace(next(r for r in rows if r.split == "test"), video="frames/one")
    write_frame_folder(tmp_path / "frames" / "one", 6)
    manifest = tmp_path / "manifest.jsonl"
    write_manifest([row], manifest)

    common = ["inspect", row.id, "--manifest", manifest, "--cache", feature_corpus / "cache", "--frames", 3]
    plain, decoded = tmp_path / "plain.png", tmp_path / "decoded.png"
    for extra, out in (([], plain), (["--checkpoint", checkpoint, "--device", "cpu"], decoded)):
        result = CliRunner().invoke(main, [str(a) for a in [*common, "--out", out, *extra]])
        assert result.exit_code == 0, result.output
    picture, without = cv2.imread(str(decoded)), cv2.imread(str(plain))
    panel = hypothesis_panel(checkpoint, open_cache(feature_corpus / "cache"), row, without.shape[1], "cpu")
    assert picture.shape[0] == without.shape[0] + panel.shape[0] and panel.shape[0] >= 18 + 3 * 15
    np.testing.assert_array_equal(picture[-panel.shape[0]:], cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))

    details = decode_video(checkpoint, feature_corpus / "cache", row, "cpu")
    evaluate_checkpoint(checkpoint, feature_corpus / "manifest.jsonl", feature_corpus / "cache", "test",
                        out=tmp_path / "eval", device="cpu")
    evaluated = {line["id"]: line for line in map(json.loads, (tmp_path / "eval" / "test-best.hyp.jsonl")
                                                  .read_text().splitlines())}[row.id]
    sentence = details.sentences[0]
    assert sentence.hypothesis == evaluated["hypothesis"]
    assert sentence.reference == evaluated["reference"] == list(row.glosses)
    assert details.wer == sentence.errors / len(row.glosses)


def test_inspect_with_a_checkpoint_needs_the_cache(tiny_corpus, tmp_path):
    manifest, _ = tiny_corpus
    fake = tmp_path / "best.pt"
    fake.write_bytes(b"")
    result = CliRunner().invoke(main, ["inspect", "vid-1", "--manifest", str(manifest), "--out",
                                       str(tmp_path / "x.png"), "--checkpoint", str(fake)])
    assert result.exit_code == 2 and "needs the cache" in result.output
