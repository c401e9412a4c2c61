"""`cslr-pipe import-keypoints`: released keypoints (SLRT's pickles, .pose files, .npy folders) become the
ordinary keypoints stage, and everything downstream reads them like extracted ones (issue 23)."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_frame_folder, write_manifest_rows
from cslr_pipe.features.heatmaps import PRESETS, render_heatmaps
from cslr_pipe.features.imported import write_slrt_keypoints
from cslr_pipe.features.manifest import read_manifest
from cslr_pipe.features.store import open_cache, sha256_file
from cslr_pipe.pipeline.cli import main
from cslr_pipe.pipeline.imports import import_keypoints
from test_heatmaps import slrt_eval_heatmaps


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def random_keypoints(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keypoints = np.zeros((frames, 133, 3), np.float32)
    keypoints[..., 0] = rng.uniform(0, width - 1, (frames, 133))
    keypoints[..., 1] = rng.uniform(0, height - 1, (frames, 133))
    keypoints[..., 2] = rng.uniform(0.05, 1, (frames, 133))
    keypoints[:, 100:103] = 0  # undetected points stay (0, 0, 0)
    return keypoints


@pytest.fixture
def corpus(tmp_path):
    """Four frame-folder videos (24x32) of 4..7 frames; returns the manifest and its rows."""
    rows = []
    for i in range(4):
        write_frame_folder(tmp_path / "frames" / f"v{i}", 4 + i, start=i)
        rows.append({"id": f"v{i}", "split": ["train", "dev", "test", "train"][i], "video": f"frames/v{i}",
                     "glosses": ["A"]})
    return write_manifest_rows(tmp_path / "manifest.jsonl", rows), rows


def test_slrt_keypoints_round_trip_through_the_cache(corpus, tmp_path):
    manifest, rows = corpus
    keypoints = {row["id"]: random_keypoints(4 + i, 24, 32, seed=i) for i, row in enumerate(rows)}
    names = {"train/v0": keypoints["v0"], "dev/v1": keypoints["v1"], "v2": keypoints["v2"],  # with and without
             "train/v3": np.concatenate([keypoints["v3"], keypoints["v3"][:2]]),  # 2 frames more than its video
             "train/unlisted": keypoints["v0"]}  # no manifest row
    source = write_slrt_keypoints(tmp_path / "phoenix_hrnet.pkl", names)
    result = invoke("import-keypoints", "--manifest", manifest, "--from", source, "--format", "slrt",
                    "--out", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "keypoints: 4 imported" in result.output and "1 with another frame count" in result.output
    assert "frame count: v3: 9 keypoint frames, the video has 7 (kept as is)" in result.output
    assert "e.g. unlisted" in result.output
    cache = open_cache(tmp_path / "cache")
    for video_id in ("v0", "v1", "v2"):
        stored = cache.read(video_id, ["keypoints"])["keypoints"]
        assert stored.dtype == np.float32 and np.array_equal(stored, keypoints[video_id])
        assert (cache.attrs(video_id, "keypoints")["height"], cache.attrs(video_id, "keypoints")["width"]) == (24, 32)
    assert len(cache.read("v3", ["keypoints"])["keypoints"]) == 9  # reported, not cut
    provenance = cache.provenance("keypoints")
    assert provenance.backend == "imported-slrt"
    assert provenance.config == {"source": "phoenix_hrnet.pkl", "format": "slrt"}
    assert provenance.weights_sha256 == sha256_file(source)

    # export back through the same writer: the same file content
    again = write_slrt_keypoints(tmp_path / "again.pkl",
                                 {f"x/{v}": cache.read(v, ["keypoints"])["keypoints"] for v in ("v0", "v1", "v2")})
    with open(again, "rb") as handle:
        back = pickle.load(handle)
    assert all(np.array_equal(back[f"x/{v}"], keypoints[v]) for v in ("v0", "v1", "v2"))


def test_a_hostile_keypoint_pickle_is_refused_before_it_runs(corpus, tmp_path):
    manifest, _ = corpus
    marker, source = tmp_path / "pwned", tmp_path / "evil.pkl"

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    source.write_bytes(pickle.dumps({"train/v0": Touch()}))
    result = invoke("import-keypoints", "--manifest", manifest, "--from", source, "--format", "slrt",
                    "--out", tmp_path / "cache")
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "refused to load" in lines[0] and "nothing in the file was run" in lines[0]
    assert not marker.exists() and not (tmp_path / "cache" / "keypoints").exists()


def test_bad_entries_fail_one_by_one_and_the_rest_imports(corpus, tmp_path):
    manifest, rows = corpus
    good = random_keypoints(4, 24, 32, seed=0)
    nan = random_keypoints(6, 24, 32, seed=1)
    nan[2, 5, 0] = np.nan
    source = write_slrt_keypoints(tmp_path / "k.pkl", {"v0": good, "train/v1": good[:, :100], "v2": nan})
    result = invoke("import-keypoints", "--manifest", manifest, "--from", source, "--format", "slrt",
                    "--out", tmp_path / "cache")
    assert result.exit_code == 1
    assert "failed: keypoints v1: keypoints must be [T, 133, 3] (x, y, score), got shape [4, 100, 3]" in result.output
    assert "failed: keypoints v2: keypoints contain NaN or infinite values (1 frames)" in result.output
    assert "failed: keypoints v3: no keypoints for v3 in k.pkl" in result.output
    cache = open_cache(tmp_path / "cache")
    assert cache.ids("keypoints") == ["v0"] and sorted(cache.failed("keypoints")) == ["v1", "v2", "v3"]


def npy_folder(folder, rows, seed: int):
    """``<id>.npy`` keypoints for each row (video i has 4 + i frames, as in the corpus)."""
    folder.mkdir()
    for i, row in enumerate(rows):
        np.save(folder / f"{row['id']}.npy", random_keypoints(4 + i, 24, 32, seed=seed + i))
    return folder


def test_npy_folder_and_a_cache_of_extracted_keypoints(corpus, tmp_path):
    manifest, rows = corpus
    folder = npy_folder(tmp_path / "npy", rows, seed=10)
    result = import_keypoints(read_manifest(manifest), folder, tmp_path / "cache", "npy", manifest.parent)
    assert result.imported == 4 and not result.failures and not result.frame_counts
    assert np.array_equal(open_cache(tmp_path / "cache").read("v2", ["keypoints"])["keypoints"],
                          np.load(folder / "v2.npy"))
    (folder / "v2.npy").write_bytes(b"changed")  # another source: the cache is not mixed
    conflict = invoke("import-keypoints", "--manifest", manifest, "--from", folder, "--format", "npy",
                      "--out", tmp_path / "cache")
    assert conflict.exit_code == 2 and "weights_sha256" in conflict.output and "--force" in conflict.output


def test_heatmaps_of_imported_slrt_keypoints_equal_slrts_own(tmp_path):
    """PHOENIX frames are 260x210; without the videos the frame size is given."""
    rows = [{"id": f"p{i}", "split": "train", "video": f"missing/p{i}", "glosses": ["A"]} for i in range(2)]
    manifest = write_manifest_rows(tmp_path / "manifest.jsonl", rows)
    keypoints = {f"train/p{i}": random_keypoints(3, 260, 210, seed=20 + i) for i in range(2)}
    source = write_slrt_keypoints(tmp_path / "phoenix2014t.hrnet.pkl", keypoints)
    common = ["--manifest", manifest, "--out", tmp_path / "cache"]
    missing = invoke("import-keypoints", *common, "--from", source, "--format", "slrt")
    assert missing.exit_code == 1 and "give --frame-size H W" in missing.output
    result = invoke("import-keypoints", *common, "--from", source, "--format", "slrt", "--frame-size", 260, 210,
                    "--force")
    assert result.exit_code == 0, result.output
    rendered = invoke("render-heatmaps", *common, "--preset", "slrt-phoenix")
    assert rendered.exit_code == 0, rendered.output
    cache = open_cache(tmp_path / "cache")
    for i in range(2):
        ours = cache.read(f"p{i}", ["heatmaps"])["heatmaps"]
        slrt = slrt_eval_heatmaps(keypoints[f"train/p{i}"], (260, 210))
        assert ours.shape == slrt.shape == (3, 79, 112, 112) and slrt.max() > 0.5
        assert np.abs(ours - slrt).max() <= 1 / 510 + 2e-3  # uint8 storage, float32 rendering
        direct = render_heatmaps(keypoints[f"train/p{i}"], (260, 210), points="twostream", **PRESETS["slrt-phoenix"])
        assert np.abs(ours - direct).max() <= 1 / 510 + 1e-6


def test_inspect_says_where_imported_keypoints_came_from(corpus, tmp_path):
    from cslr_pipe.pipeline.inspect import keypoints_origin

    manifest, rows = corpus
    source = write_slrt_keypoints(tmp_path / "k.pkl", {r["id"]: random_keypoints(4 + i, 24, 32, seed=i)
                                                      for i, r in enumerate(rows)})
    assert import_keypoints(read_manifest(manifest), source, tmp_path / "cache", "slrt", manifest.parent).imported == 4
    cache = open_cache(tmp_path / "cache")
    assert keypoints_origin(cache, "v1") == "keypoints imported from k.pkl (slrt)"
    result = invoke("inspect", "v1", "--manifest", manifest, "--cache", tmp_path / "cache", "--out", tmp_path / "v1.png")
    assert result.exit_code == 0, result.output
    import cv2

    picture = cv2.imread(str(tmp_path / "v1.png"))
    assert picture is not None and picture.shape[0] > 3 * 40  # frames, skeletons and heatmaps


REAL = Path(__file__).parent / "data" / "real-signing"


def test_pose_files_round_trip_and_a_real_holistic_sequence_imports(corpus, tmp_path):
    from cslr_pipe.features.pose.pose_format import read_pose_keypoints, write_pose_file

    manifest, rows = corpus
    folder = tmp_path / "pose"
    written = {}
    for i, row in enumerate(rows[:3]):
        written[row["id"]] = random_keypoints(4 + i, 24, 32, seed=30 + i)
        write_pose_file(folder / f"{row['id']}.pose", written[row["id"]], fps=25.0, width=32, height=24)
    shutil.copy(REAL / "test_video.mediapipe.pose", folder / "v3.pose")  # 170 frames, 1250x1250, Holistic
    result = invoke("import-keypoints", "--manifest", manifest, "--from", folder, "--format", "pose",
                    "--out", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "frame count: v3: 170 keypoint frames, the video has 7" in result.output
    cache = open_cache(tmp_path / "cache")
    for video_id, keypoints in written.items():
        assert np.array_equal(cache.read(video_id, ["keypoints"])["keypoints"], keypoints)
    real, fps, width, height = read_pose_keypoints(REAL / "test_video.mediapipe.pose")
    stored = cache.read("v3", ["keypoints"])["keypoints"]
    assert stored.shape == (170, 133, 3) and np.array_equal(stored, real)
    assert (stored[:, 5:7, 2] > 0).mean() > 0.9  # the shoulders of a real signer, found in nearly every frame
    attrs = cache.attrs("v3", "keypoints")
    assert (attrs["height"], attrs["width"], attrs["fps"]) == (1250, 1250, 24.0)  # the .pose header's, not the video's


@pytest.mark.slow
def test_a_real_signing_video_through_extract_keypoints_and_inspect(tmp_path):
    pytest.importorskip("mediapipe")
    shutil.copy(REAL / "test_video.mp4", tmp_path / "signing.mp4")
    manifest = write_manifest_rows(tmp_path / "manifest.jsonl",
                                   [{"id": "signing", "split": "test", "video": "signing.mp4", "glosses": ["A"]}])
    result = invoke("extract-keypoints", "--manifest", manifest, "--out", tmp_path / "cache", "--quiet",
                    "--export-pose", tmp_path / "pose")
    assert result.exit_code == 0, result.output
    keypoints = open_cache(tmp_path / "cache").read("signing", ["keypoints"])["keypoints"]
    assert keypoints.shape == (58, 133, 3)
    found = keypoints[..., 2] > 0
    assert found[:, 0:7].mean() > 0.9 and found[:, 23:91].mean() > 0.9  # head, shoulders and face of a real signer
    # the hands are raised (in view, motion-blurred) in about frames 14-45 and below the frame otherwise;
    # Holistic finds one in 20 of the 58 frames today (issue 23's hand refinement is to raise this)
    assert found[:, 91:133].any(axis=1).mean() > 0.25
    assert (keypoints[found][:, 0] < 540).all() and (keypoints[found][:, 1] < 720).all()  # in the 540x720 frame
    again = invoke("import-keypoints", "--manifest", manifest, "--from", tmp_path / "pose", "--format", "pose",
                   "--out", tmp_path / "imported")
    assert again.exit_code == 0 and "1 imported" in again.output and "another frame count" in again.output
    imported = open_cache(tmp_path / "imported").read("signing", ["keypoints"])["keypoints"]
    assert np.array_equal(imported, keypoints)  # export then import: the same keypoints
    picture = invoke("inspect", "signing", "--manifest", manifest, "--cache", tmp_path / "imported",
                     "--out", tmp_path / "signing.png")
    assert picture.exit_code == 0 and (tmp_path / "signing.png").stat().st_size > 10_000


def test_export_keypoints_then_import_gives_the_same_keypoints(corpus, tmp_path):
    manifest, rows = corpus
    folder = npy_folder(tmp_path / "npy", rows, seed=40)
    assert invoke("import-keypoints", "--manifest", manifest, "--from", folder, "--format", "npy",
                  "--out", tmp_path / "a").exit_code == 0
    for fmt, target in (("slrt", tmp_path / "k.pkl"), ("pose", tmp_path / "pose")):
        exported = invoke("export-keypoints", "--cache", tmp_path / "a", "--format", fmt, "--to", target,
                          "--manifest", manifest)
        assert exported.exit_code == 0 and "keypoints: 4" in exported.output, exported.output
        back = invoke("import-keypoints", "--manifest", manifest, "--from", target, "--format", fmt,
                      "--out", tmp_path / fmt)
        assert back.exit_code == 0 and "4 imported" in back.output, back.output
        for row in rows:
            original = np.load(folder / f"{row['id']}.npy")
            again = open_cache(tmp_path / fmt).read(row["id"], ["keypoints"])["keypoints"]
            assert original.any() and np.array_equal(again, original)
    with open(tmp_path / "k.pkl", "rb") as handle:
        assert sorted(pickle.load(handle)) == ["dev/v1", "test/v2", "train/v0", "train/v3"]  # SLRT's names
    empty = invoke("export-keypoints", "--cache", folder, "--format", "slrt", "--to", tmp_path / "x.pkl")
    assert empty.exit_code == 2 and "no keypoints stage" in empty.output
