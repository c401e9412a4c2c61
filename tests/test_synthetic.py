"""Tests for pipeline/synthetic.py: the rendered demo corpus, its manifest and its ground truth.

One small corpus (9 videos, 64x64) is generated per module; renders without files use
``render_video`` directly.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from cslr_pipe.features.video import read_video
from cslr_pipe.features.manifest import build_vocabulary, read_manifest, read_vocabulary
from cslr_pipe.pipeline.synthetic import (
    GLOSSES,
    L_ELBOW,
    L_SHOULDER,
    L_WRIST,
    LEFT_HAND,
    LEFT_HAND_RGB,
    R_ELBOW,
    R_SHOULDER,
    R_WRIST,
    RIGHT_HAND,
    RIGHT_HAND_RGB,
    CorpusSpec,
    make_corpus,
    plan_corpus,
    render_video,
)

SPEC = CorpusSpec(num_videos=9, height=64, width=64, seed=3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The manifest of a small corpus."""
    return make_corpus(tmp_path_factory.mktemp("synthetic"), SPEC)


def render(glosses, seed=0, spec=SPEC):
    return render_video(list(glosses), spec, np.random.default_rng(seed))


def test_manifest_reads_without_bad_rows(corpus):
    bad = []
    rows = read_manifest(corpus, bad)
    assert bad == []
    assert [r.id for r in rows] == [f"demo-{i:04d}" for i in range(1, 10)]
    for row in rows:
        assert row.signer == "synthetic-0" and row.dataset == "synthetic" and row.fps == SPEC.fps
        assert SPEC.min_glosses <= len(row.glosses) <= SPEC.max_glosses
        assert set(row.glosses) <= set(GLOSSES)
    kinds = {Path(r.video).suffix for r in rows}
    assert kinds == {".mp4", ""}, "both video files and frame folders must be exercised"
    assert sum(r.video.endswith(".mp4") for r in rows) == 6
    assert read_vocabulary(corpus.parent / "vocabulary.json") == build_vocabulary(rows)


def test_every_video_decodes_to_its_manifest_length_and_size(corpus):
    for row in read_manifest(corpus):
        frames = read_video(corpus.parent / row.video)
        assert frames.shape == (row.num_frames, SPEC.height, SPEC.width, 3), row.id


def test_ground_truth_keypoints_match_the_videos(corpus):
    rows = read_manifest(corpus)
    with np.load(corpus.parent / "keypoints_gt.npz") as truth:
        assert sorted(truth.files) == [r.id for r in rows]
        for row in rows:
            kp = truth[row.id]
            assert kp.shape == (row.num_frames, 133, 3) and kp.dtype == np.float32
            unseen = kp[..., 2] == 0
            assert (kp[unseen][:, :2] == 0).all()
            assert kp[..., 2].max() == 1.0
            np.testing.assert_array_equal(kp[:, L_WRIST], kp[:, LEFT_HAND])
            np.testing.assert_array_equal(kp[:, R_WRIST], kp[:, RIGHT_HAND])
            # at rest the signer's left hand appears on the image's right
            assert kp[0, L_WRIST, 0] > kp[0, R_WRIST, 0]


def test_splits_are_non_empty_and_held_out_glosses_are_trained(corpus):
    rows = read_manifest(corpus)
    _check_splits([(r.split, r.glosses) for r in rows])


@pytest.mark.parametrize("num_videos,seed", [(3, 0), (5, 1), (9, 2), (20, 3), (48, 0), (100, 7)])
def test_plan_splits(num_videos, seed):
    plan = plan_corpus(CorpusSpec(num_videos=num_videos, seed=seed))
    assert len(plan) == num_videos
    _check_splits(plan)
    if num_videos >= 20:
        counts = {s: sum(p[0] == s for p in plan) for s in ("train", "dev", "test")}
        assert 0.6 <= counts["train"] / num_videos <= 0.8
        assert {g for split, glosses in plan if split == "train" for g in glosses} == set(GLOSSES)


def _check_splits(plan):
    by_split = {s: [g for split, glosses in plan if split == s for g in glosses]
                for s in ("train", "dev", "test")}
    assert all(by_split.values()), "every split must be non-empty"
    assert set(by_split["dev"]) | set(by_split["test"]) <= set(by_split["train"])


def test_repeated_glosses_happen_in_a_default_corpus():
    plan = plan_corpus(CorpusSpec())
    assert any(a == b for _, glosses in plan for a, b in zip(glosses, glosses[1:]))


def test_a_repeated_gloss_is_two_visible_occurrences():
    """Between two HELLOs (right hand up beside the head) the hand drops half-way back to rest and
    holds, so a recogniser can see two signs, not one long one."""
    spec = CorpusSpec(height=128, width=128, speed_jitter=0.0)
    _, keypoints = render(["HELLO", "HELLO"], seed=3, spec=spec)
    wrist_y = keypoints[:, R_WRIST, 1] / spec.height  # signer units: ~0.24 while signing, 0.86 at rest
    raised = wrist_y < 0.35
    runs = [key for key, _ in itertools.groupby(raised)]
    assert runs == [False, True, False, True, False]  # up, down in between, up again
    between = wrist_y[np.flatnonzero(raised)[0]:np.flatnonzero(raised)[-1]]
    assert between.max() > 0.45  # half-way to rest, not a pause in the air


def test_render_is_deterministic_per_seed():
    frames_a, kp_a = render(["HELLO", "MORE", "MORE"], seed=4)
    frames_b, kp_b = render(["HELLO", "MORE", "MORE"], seed=4)
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(kp_a, kp_b)
    frames_c, _ = render(["HELLO", "MORE", "MORE"], seed=5)
    assert frames_c.shape != frames_a.shape or not np.array_equal(frames_a, frames_c)


def test_corpus_is_deterministic_per_seed(tmp_path):
    spec = CorpusSpec(num_videos=3, height=48, width=48, seed=11)
    a, b = make_corpus(tmp_path / "a", spec), make_corpus(tmp_path / "b", spec)
    assert a.read_text() == b.read_text()
    for row in read_manifest(a):
        if not row.video.endswith(".mp4"):
            np.testing.assert_array_equal(read_video(a.parent / row.video),
                                          read_video(b.parent / row.video))
    c = make_corpus(tmp_path / "c", CorpusSpec(num_videos=3, height=48, width=48, seed=12))
    with np.load(a.parent / "keypoints_gt.npz") as ta, np.load(c.parent / "keypoints_gt.npz") as tc:
        assert any(ta[k].shape != tc[k].shape or not np.array_equal(ta[k], tc[k]) for k in ta.files)


def _segment_distance(point, a, b):
    """Distance [T] from points [T, 2] to segments a-b [T, 2]."""
    ab, ap = b - a, point - a
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)
    return np.linalg.norm(ap - t[:, None] * ab, axis=-1)


def _hidden_by_other_side(kp, wrist, side):
    """Frames where the other arm or hand may cover ``wrist`` (the left side is drawn first)."""
    if side == "right":  # the right arm and hand are drawn last: nothing covers them
        return np.zeros(len(kp), bool)
    point = kp[:, wrist, :2]
    shoulder, elbow = kp[:, R_SHOULDER, :2], kp[:, R_ELBOW, :2]
    hand = kp[:, RIGHT_HAND:RIGHT_HAND + 21, :2]
    width = np.linalg.norm(kp[:, L_SHOULDER, :2] - shoulder, axis=-1)  # shoulder width
    near_arm = np.minimum(_segment_distance(point, shoulder, elbow),
                          _segment_distance(point, elbow, hand[:, 0])) < 0.1 * width + 2
    near_hand = np.linalg.norm(hand - point[:, None], axis=-1).min(-1) < 0.15 * width + 2
    return near_arm | near_hand


@pytest.mark.parametrize("spec", [SPEC, CorpusSpec(height=96, width=128)])
def test_wrists_lie_on_their_hand_colour(spec):
    frames, kp = render(GLOSSES, seed=1, spec=spec)
    for wrist, colour, side in ((R_WRIST, RIGHT_HAND_RGB, "right"),
                                (L_WRIST, LEFT_HAND_RGB, "left")):
        check = (kp[:, wrist, 2] > 0) & ~_hidden_by_other_side(kp, wrist, side)
        assert check.mean() > 0.8
        x, y = np.round(kp[check, wrist, :2]).astype(int).T
        pixels = frames[check][np.arange(len(x)), y, x].astype(int)
        off_colour = np.abs(pixels - colour).max(axis=1) > 30
        assert not off_colour.any(), (side, np.flatnonzero(check)[off_colour])


def test_glosses_have_distinct_hand_trajectories():
    paths = {}
    for gloss in GLOSSES:
        _, kp = render([gloss], seed=0)  # same seed: same signer placement and speed
        wrists = kp[:, [R_WRIST, L_WRIST], :2]
        t = np.linspace(0, len(wrists) - 1, 40)
        paths[gloss] = np.stack([[np.interp(t, np.arange(len(wrists)), wrists[:, h, c])
                                  for c in range(2)] for h in range(2)], axis=-1)
    for a, b in itertools.combinations(GLOSSES, 2):
        distance = np.linalg.norm(paths[a] - paths[b], axis=-1).mean()
        assert distance > 2.0, f"{a} and {b} move alike ({distance:.1f} px)"


def test_arms_stay_plausible():
    """Wrists never fold onto their shoulder, elbows sit an upper arm away from the shoulder."""
    _, kp = render(GLOSSES, seed=2, spec=CorpusSpec())
    width = np.linalg.norm(kp[:, L_SHOULDER, :2] - kp[:, R_SHOULDER, :2], axis=-1)
    for shoulder, elbow, wrist in ((R_SHOULDER, R_ELBOW, R_WRIST), (L_SHOULDER, L_ELBOW, L_WRIST)):
        reach = np.linalg.norm(kp[:, wrist, :2] - kp[:, shoulder, :2], axis=-1) / width
        upper = np.linalg.norm(kp[:, elbow, :2] - kp[:, shoulder, :2], axis=-1) / width
        assert reach.min() > 0.3 and reach.max() < 1.75
        np.testing.assert_allclose(upper, upper[0], rtol=1e-3)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        render(["HELLO", "NOT-A-GLOSS"])
    with pytest.raises(ValueError):
        render([])
    with pytest.raises(ValueError):
        CorpusSpec(num_videos=2)
    with pytest.raises(ValueError):
        CorpusSpec(min_glosses=3, max_glosses=2)
