"""Heatmap presets where heatmaps are made: the heatmaps stage (CLI, workflows), the keypoint
feature stream, and the provenance they record (features/heatmaps.py PRESETS, issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cslr_pipe.features.heatmaps import PRESETS, render_heatmaps
from cslr_pipe.features.pose import BACKENDS, PoseBackend, register_pose_backend
from cslr_pipe.features.pose.wholebody import TWOSTREAM_79
from cslr_pipe.features.store import open_cache
from cslr_pipe.pipeline import cli
from cslr_pipe.pipeline.dag import load_workflow, ordered_stages
from cslr_pipe.pipeline.stages import get_stage
from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus

SLRT_PHOENIX = {"points": "twostream", "preset": "slrt-phoenix", "sigma": 8.0, "size": [112, 112],
                "threshold": None, "render_size": [260, 210], "antialias": True}


def test_stage_config_defaults_unchanged_and_presets_filled():
    stage = get_stage("heatmaps")
    default = {"points": "twostream", "sigma": 4.0, "size": [112, 112], "threshold": 0.0}
    assert stage.resolve_config({}) == default  # recorded as before presets existed
    assert stage.resolve_config({"size": [56, 48]}) == {**default, "size": [56, 48]}
    assert stage.resolve_config({"preset": "signvtcl"}) == {**default, "preset": "signvtcl"}
    assert stage.resolve_config({"preset": "slrt-phoenix"}) == SLRT_PHOENIX
    csl = stage.resolve_config({"preset": "slrt-csl-daily", "antialias": False, "sigma": 6.0})
    assert csl == {**SLRT_PHOENIX, "preset": "slrt-csl-daily", "render_size": [170, 170], "sigma": 6.0,
                   "antialias": False}
    assert stage.resolve_config(csl) == csl  # idempotent (workflows resolve, then the runner again)
    assert stage.resolve_config({"render_size": [224, 224]})["antialias"] is True
    with pytest.raises(ValueError, match="unknown heatmap preset 'nope'.*slrt-phoenix"):
        stage.resolve_config({"preset": "nope"})
    keypoint = get_stage("features.keypoint")
    assert "heatmap_preset" not in keypoint.resolve_config({"weights": "none"})
    assert keypoint.resolve_config({"weights": "none", "heatmap_preset": "slrt-csl-daily"})["heatmap_preset"] \
        == "slrt-csl-daily"
    with pytest.raises(ValueError, match="unknown heatmap preset"):
        keypoint.resolve_config({"weights": "none", "heatmap_preset": "slrt"})
    with pytest.raises(ValueError, match="no option"):
        get_stage("features.rgb").resolve_config({"weights": "none", "heatmap_preset": "slrt-phoenix"})
    assert set(cli.HEATMAP_PRESETS) == set(PRESETS)


def test_workflow_selects_a_preset(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("stages:\n  keypoints: {backend: mediapipe}\n  heatmaps: {preset: slrt-phoenix}\n"
                    "  features.keypoint: {weights: none, heatmap_preset: slrt-phoenix}\n")
    resolved = {stage.name: config for stage, config in ordered_stages(load_workflow(path))}
    assert resolved["heatmaps"] == SLRT_PHOENIX
    assert resolved["features.keypoint"]["heatmap_preset"] == "slrt-phoenix"


class WristOnly(PoseBackend):
    """Detects one point (the right-hand root) at a fixed place: the others are undetected (0, 0, 0)."""

    name = "wrist-only"

    def __init__(self, weights=None, device="cpu"):
        pass

    def __call__(self, frames):
        out = np.zeros((len(frames), 133, 3), np.float32)
        out[:, 112] = (40.0, 30.0, 0.9)
        return out


@pytest.fixture
def cache_with_keypoints(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", CorpusSpec(num_videos=3, height=96, width=80))
    register_pose_backend("wrist-only", WristOnly)
    try:
        common = ["--manifest", corpus, "--out", tmp_path / "cache", "--quiet"]
        result = invoke("extract-keypoints", *common, "--backend", "wrist-only")
        assert result.exit_code == 0, result.output
        yield common, tmp_path / "cache"
    finally:
        BACKENDS.unregister("wrist-only")


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_render_heatmaps_command_with_a_preset(cache_with_keypoints):
    common, out = cache_with_keypoints
    result = invoke("render-heatmaps", *common, "--preset", "slrt-phoenix")
    assert result.exit_code == 0, result.output
    cache = open_cache(out)
    assert cache.provenance("heatmaps").config == SLRT_PHOENIX
    video_id = cache.ids("heatmaps")[0]
    data = cache.read(video_id)
    expected = render_heatmaps(data["keypoints"], (96, 80), points="twostream", **PRESETS["slrt-phoenix"])
    assert np.abs(data["heatmaps"] - expected).max() <= 1 / 510 + 1e-6
    assert data["heatmaps"][:, TWOSTREAM_79.index(0), 0, 0].min() > 0.9  # undetected nose: a corner blob
    conflict = invoke("render-heatmaps", *common, "--preset", "slrt-phoenix", "--no-antialias")
    assert conflict.exit_code == 2 and "config.antialias: True -> False" in conflict.output
    wrong = invoke("cache-features", *common, "--stream", "rgb", "--heatmap-preset", "slrt-phoenix")
    assert wrong.exit_code == 2 and "--stream keypoint only" in wrong.output


def test_keypoint_features_with_a_preset(cache_with_keypoints, monkeypatch):
    """features.keypoint renders its heatmaps as the preset says, and records the preset."""
    from cslr_pipe.features import backbones

    seen = []
    original = backbones.Backbone.features

    def spy(self, chunks):
        chunks = [np.asarray(chunk).copy() for chunk in chunks]
        seen.append(np.concatenate(chunks))
        return original(self, iter(chunks))

    monkeypatch.setattr(backbones.Backbone, "features", spy)
    common, out = cache_with_keypoints
    with pytest.warns(UserWarning, match="random"):
        result = invoke("cache-features", *common, "--stream", "keypoint", "--weights", "none",
                        "--heatmap-preset", "slrt-csl-daily", "--backbone-option", "heatmap_size=56")
    assert result.exit_code == 0, result.output
    cache = open_cache(out)
    assert cache.provenance("features.keypoint").config["heatmap_preset"] == "slrt-csl-daily"
    keypoints = cache.read(cache.ids("features.keypoint")[0])["keypoints"]
    expected = render_heatmaps(keypoints, (96, 80), points="twostream", **PRESETS["slrt-csl-daily"])
    np.testing.assert_array_equal(seen[0], expected)
