"""The keypoints and heatmaps stages, and `cslr-pipe extract-keypoints` / `render-heatmaps`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cslr_pipe.features.heatmaps import render_heatmaps
from cslr_pipe.features.pose import BACKENDS, PoseBackend, register_pose_backend
from cslr_pipe.features.pose.pose_format import read_pose_file
from cslr_pipe.features.store import open_cache
from cslr_pipe.pipeline.cli import main
from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus


class TruthFromFrames(PoseBackend):
    """A user-plugged backend: finds the synthetic signer's right glove by its colour."""

    name = "glove-finder"

    def __init__(self, weights=None, device="cpu"):
        self.videos = 0

    def begin_video(self):
        self.videos += 1

    def __call__(self, frames):
        from cslr_pipe.pipeline.synthetic import RIGHT_HAND_RGB

        out = np.zeros((len(frames), 133, 3), np.float32)
        for t, frame in enumerate(frames):
            mask = np.abs(frame.astype(int) - RIGHT_HAND_RGB).sum(axis=-1) < 40
            if mask.any():
                ys, xs = np.nonzero(mask)
                out[t, 112] = (xs.mean(), ys.mean(), 1.0)  # right-hand root
        return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), CorpusSpec(num_videos=6, height=96, width=80))


@pytest.fixture
def glove_backend():
    register_pose_backend("glove-finder", TruthFromFrames)
    yield
    BACKENDS.unregister("glove-finder")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_keypoints_and_heatmaps_stages_with_a_plugged_backend(corpus, tmp_path, glove_backend):
    out = tmp_path / "cache"
    result = invoke("extract-keypoints", "--manifest", corpus, "--out", out, "--backend", "glove-finder",
                    "--quiet", "--export-pose", tmp_path / "pose")
    assert result.exit_code == 0, result.output
    truth = np.load(corpus.parent / "keypoints_gt.npz")
    cache = open_cache(out)
    for video_id in cache.ids("keypoints"):
        keypoints = cache.read(video_id)["keypoints"]
        attrs = cache.attrs(video_id, "keypoints")
        assert keypoints.shape == truth[video_id].shape and keypoints.dtype == np.float32
        assert (attrs["height"], attrs["width"], attrs["fps"]) == (96, 80, 25.0)
        found = keypoints[:, 112, 2] > 0
        assert found.mean() > 0.8 and (keypoints[:, :112, 2] == 0).all()
        error = np.linalg.norm(keypoints[found, 112, :2] - truth[video_id][found, 112, :2], axis=1)
        assert np.median(error) < 3.0  # the glove centre is near the true wrist
        pose, fps, width, height = read_pose_file(tmp_path / "pose" / f"{video_id}.pose")
        np.testing.assert_array_equal(pose, keypoints)
        assert (fps, width, height) == (25.0, 80, 96)
    assert cache.provenance("keypoints").backend == "glove-finder"

    heat = invoke("render-heatmaps", "--manifest", corpus, "--out", out, "--quiet", "--size", 56, 48)
    assert heat.exit_code == 0, heat.output
    cache = open_cache(out)
    video_id = cache.ids("heatmaps")[0]
    data = cache.read(video_id)
    expected = render_heatmaps(data["keypoints"], (96, 80), out_size=(56, 48), points="twostream")
    assert data["heatmaps"].shape == expected.shape == (len(data["keypoints"]), 79, 56, 48)
    assert np.abs(data["heatmaps"] - expected).max() <= 1 / 510 + 1e-6
    assert cache.provenance("heatmaps").config == {"points": "twostream", "sigma": 4.0, "size": [56, 48],
                                                   "threshold": 0.0}


def test_render_heatmaps_needs_keypoints_first(corpus, tmp_path):
    result = invoke("render-heatmaps", "--manifest", corpus, "--out", tmp_path / "empty")
    assert result.exit_code == 2 and "needs keypoints results" in result.output


def test_missing_hrnet_weights_stop_with_one_line_naming_the_file(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    result = invoke("extract-keypoints", "--manifest", corpus, "--out", tmp_path / "c", "--backend", "hrnet")
    assert result.exit_code == 2
    assert "hrnet_w48_coco_wholebody_384x288_dark-f5726563_20200918.pth" in result.output
    given = invoke("extract-keypoints", "--manifest", corpus, "--out", tmp_path / "c", "--backend", "hrnet",
                   "--weights", tmp_path / "nope.pth")
    assert given.exit_code == 2 and "nope.pth not found" in given.output
    unknown = invoke("extract-keypoints", "--manifest", corpus, "--out", tmp_path / "c", "--backend", "x")
    assert unknown.exit_code == 2 and "unknown pose backend 'x'" in unknown.output


def test_a_corrupt_video_fails_alone(corpus, tmp_path, glove_backend):
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    (corpus.parent / "broken.mp4").write_bytes(b"\x00" * 100)
    rows.insert(1, {"id": "broken", "split": "train", "video": "broken.mp4", "glosses": ["HELLO"]})
    manifest = corpus.parent / "with-broken.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = invoke("extract-keypoints", "--manifest", manifest, "--out", tmp_path / "c",
                    "--backend", "glove-finder", "--quiet")
    assert result.exit_code == 1
    assert "failed: keypoints broken: " in result.output and "broken.mp4" in result.output
    assert len(open_cache(tmp_path / "c").ids("keypoints")) == len(rows) - 1


def test_mediapipe_keypoints_follow_the_synthetic_signer(tmp_path):
    pytest.importorskip("mediapipe")
    corpus = make_corpus(tmp_path / "corpus", CorpusSpec(num_videos=3, height=160, width=160))
    result = invoke("extract-keypoints", "--manifest", corpus, "--out", tmp_path / "c", "--quiet")
    assert result.exit_code == 0, result.output
    truth = np.load(corpus.parent / "keypoints_gt.npz")
    cache = open_cache(tmp_path / "c")
    for video_id in cache.ids("keypoints"):
        keypoints, expected = cache.read(video_id)["keypoints"], truth[video_id]
        for point in (0, 5, 6):  # nose and shoulders
            seen = keypoints[:, point, 2] > 0.5
            assert seen.mean() > 0.9
            error = np.linalg.norm(keypoints[seen, point, :2] - expected[seen, point, :2], axis=1)
            assert np.median(error) < 8, (video_id, point, np.median(error))


def test_features_of_every_stream_from_the_cache(corpus, tmp_path, glove_backend):
    out = tmp_path / "cache"
    common = ["--manifest", corpus, "--out", out, "--quiet"]
    assert invoke("extract-keypoints", *common, "--backend", "glove-finder").exit_code == 0
    assert invoke("extract-flow", *common, "--size", 32, 32).exit_code == 0
    for stream in ("rgb", "keypoint", "flow"):
        with pytest.warns(UserWarning, match="random"):
            result = invoke("cache-features", *common, "--stream", stream, "--weights", "none",
                            "--backbone-option", "resize=64", "--backbone-option", "crop=56",
                            "--backbone-option", "heatmap_size=56")
        assert result.exit_code == 0, result.output
    cache = open_cache(out)
    for video_id in cache.ids("features.rgb"):
        data = cache.read(video_id)
        frames = len(data["keypoints"])
        assert data["features.rgb"].shape == (frames, 512) and data["features.keypoint"].shape == (frames, 512)
        assert data["features.flow"].shape == (frames - 1, 512)
        assert np.isfinite(data["features.keypoint"]).all()
    assert cache.provenance("features.keypoint").weights_sha256 == "random-init"
    again = invoke("cache-features", *common, "--stream", "rgb", "--weights", "none",
                   "--backbone-option", "resize=64", "--backbone-option", "crop=56",
                   "--backbone-option", "heatmap_size=56")
    assert again.exit_code == 0 and "1 of 1 shards already complete" in again.output
