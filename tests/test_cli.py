"""The command line: exit codes, one line per failed video, manifests from a corpus, info, demo."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from cslr_pipe.features.store import open_cache
from cslr_pipe.pipeline.cli import main
from cslr_pipe.features.manifest import read_manifest, read_vocabulary

from conftest import write_frame_folder


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_every_command_has_help():
    for command in main.commands:
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, command


def test_probe_exit_codes_and_failure_lines(tiny_corpus, tmp_path):
    manifest, rows = tiny_corpus
    ok = invoke("probe", "--manifest", manifest, "--out", tmp_path / "c", "--quiet")
    assert ok.exit_code == 0, ok.output
    assert "probe: 7 computed" in ok.output

    (manifest.parent / "bad.avi").write_bytes(os.urandom(500))
    with manifest.open("a") as handle:
        handle.write(json.dumps({"id": "bad", "split": "test", "video": "bad.avi", "glosses": []}) + "\n")
        handle.write("{not json\n")
    result = invoke("probe", "--manifest", manifest, "--out", tmp_path / "c", "--quiet")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(lines) == 1 and lines[0].startswith("failed: probe bad: ") and "bad.avi" in lines[0]
    assert f"skipped manifest row: {manifest}:9: not valid JSON" in result.output
    assert open_cache(tmp_path / "c").ids("probe") == sorted(row["id"] for row in rows)


def test_usage_errors_exit_2(tiny_corpus, tmp_path):
    manifest, _ = tiny_corpus
    result = invoke("probe", "--manifest", manifest, "--out", tmp_path / "c",
                    "--shard-index", 2, "--num-shards", 2)
    assert result.exit_code == 2 and "--shard-index 2 must be smaller" in result.output
    missing = invoke("probe", "--manifest", tmp_path / "nope.jsonl", "--out", tmp_path / "c")
    assert missing.exit_code == 2 and "manifest not found" in missing.output
    invoke("probe", "--manifest", manifest, "--out", tmp_path / "c", "--shard-size", 3)
    conflict = invoke("probe", "--manifest", manifest, "--out", tmp_path / "c", "--shard-size", 4)
    assert conflict.exit_code == 2 and "--force" in conflict.output


def test_array_tasks_from_the_command_line(tiny_corpus, tmp_path):
    manifest, rows = tiny_corpus
    for task in range(3):
        result = invoke("probe", "--manifest", manifest, "--out", tmp_path / "c", "--quiet",
                        "--shard-size", 2, "--shard-index", task, "--num-shards", 3)
        assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "c" / "probe" / "index.json").read_text())
    assert index["completed"] == sorted(row["id"] for row in rows)
    info = invoke("info", tmp_path / "c")
    assert info.exit_code == 0 and "probe: 7 videos, 0 failed; backend builtin" in info.output


def test_manifest_command_writes_manifest_and_vocabulary(tmp_path):
    root = tmp_path / "phoenix"
    annotations = root / "annotations" / "manual"
    annotations.mkdir(parents=True)
    for split, names in {"train": ["t1", "t2"], "dev": ["d1"], "test": ["e1", "e/../x"]}.items():
        lines = ["id|folder|signer|annotation"]
        for name in names:
            lines.append(f"{name}|{name}/1/*.png|Signer01|REGEN WIND __OFF__")
            if split == "train" and name == "t2":
                lines[-1] = f"{name}|{name}/1/*.png|Signer05|SONNE"
        (annotations / f"{split}.corpus.csv").write_text("\n".join(lines) + "\n")
        for name in names:
            if ".." not in name:
                write_frame_folder(root / "features" / "fullFrame-210x260px" / split / name / "1", 2)
    out = tmp_path / "manifests" / "phoenix2014.jsonl"
    result = invoke("manifest", "phoenix2014", "--root", root, "--out", out)
    assert result.exit_code == 1  # one unsafe id
    assert "test.corpus.csv:3" in result.output and "unsafe id" in result.output
    rows = read_manifest(out)
    assert [row.id for row in rows] == ["t1", "t2", "d1", "e1"]
    assert (out.parent / rows[0].video).resolve() == (root / "features/fullFrame-210x260px/train/t1/1").resolve()
    assert read_vocabulary(out.with_suffix(".vocab.json")) == ["<blank>", "REGEN", "SONNE", "WIND", "__OFF__"]


@pytest.mark.slow
def test_inspect_draws_frames_and_cached_results(tiny_corpus, tmp_path):
    import cv2

    manifest, _ = tiny_corpus
    invoke("probe", "--manifest", manifest, "--out", tmp_path / "c", "--quiet")
    out = tmp_path / "pics" / "vid-6.png"
    result = invoke("inspect", "vid-6", "--manifest", manifest, "--cache", tmp_path / "c",
                    "--out", out, "--frames", 4)
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(out))
    plain = tmp_path / "plain.png"
    assert invoke("inspect", "vid-6", "--manifest", manifest, "--out", plain, "--frames", 4).exit_code == 0
    without_cache = cv2.imread(str(plain))
    # 4 frames of 24x32 scaled to height 128 side by side; the probe adds a plot below
    assert image.shape[1] == without_cache.shape[1] == 4 * round(32 * 128 / 24)
    assert image.shape[0] == without_cache.shape[0] + 70
    unknown = invoke("inspect", "nope", "--manifest", manifest, "--out", out)
    assert unknown.exit_code == 2 and "nope is not in" in unknown.output


def test_bundled_example_manifest_is_valid():
    from pathlib import Path

    rows = read_manifest(Path(__file__).parents[1] / "data_manifests" / "example.jsonl")
    assert [row.split for row in rows] == ["train", "test", "train"] and rows[2].glosses == ()
