"""`cslr-pipe extract-flow`: the flow stage end to end, storages, bad videos, missing weights."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner

from cslr_pipe.features.flow import build_flow_backend
from cslr_pipe.features.store import open_cache
from cslr_pipe.features.video import read_video
from cslr_pipe.pipeline.cli import main

from conftest import write_frame_folder


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_flow_stage_stores_what_the_backend_computes(tiny_corpus, tmp_path):
    manifest, rows = tiny_corpus
    write_frame_folder(manifest.parent / "frames" / "single", 1)
    (manifest.parent / "corrupt.mp4").write_bytes(b"not a video" * 50)
    with manifest.open("a") as handle:
        handle.write(json.dumps({"id": "single", "split": "dev", "video": "frames/single", "glosses": []}) + "\n")
        handle.write(json.dumps({"id": "corrupt", "split": "dev", "video": "corrupt.mp4", "glosses": []}) + "\n")
    for storage in ("uint8", "float16"):
        result = invoke("extract-flow", "--manifest", manifest, "--out", tmp_path / storage, "--quiet",
                        "--size", 40, 48, "--storage", storage)
        assert result.exit_code == 1, result.output
        assert "failed: flow single: " in result.output and "at least 2 frames" in result.output
        assert "failed: flow corrupt: " in result.output and "cannot open" in result.output
    uint8, half = open_cache(tmp_path / "uint8"), open_cache(tmp_path / "float16")
    assert uint8.ids("flow") == sorted(row["id"] for row in rows)
    backend = build_flow_backend("dis")
    for row in rows:
        frames = read_video(manifest.parent / row["video"], size=(40, 48))
        expected = backend(frames[:-1], frames[1:])
        stored = half.read(row["id"])["flow"]
        assert stored.shape == (len(frames) - 1, 2, 40, 48) and stored.dtype == np.float32
        np.testing.assert_allclose(stored, expected, atol=0.02, rtol=1e-3)  # float16 rounding
        quantized = uint8.read(row["id"])["flow"]
        assert np.abs(quantized - np.clip(expected, -20, 20)).max() <= 20 / 254 + 1e-5
    assert uint8.attrs("vid-3", "flow")["width"] == 48


def test_raft_without_weights_stops_with_one_line(tiny_corpus, tmp_path, monkeypatch):
    manifest, _ = tiny_corpus
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    result = invoke("extract-flow", "--manifest", manifest, "--out", tmp_path / "c", "--backend", "raft-small")
    assert result.exit_code == 2 and "raft_small_C_T_V2-01064c6d.pth" in result.output
    unknown = invoke("extract-flow", "--manifest", manifest, "--out", tmp_path / "c", "--backend", "nope")
    assert unknown.exit_code == 2 and "nope" in unknown.output


def test_another_file_under_a_published_name_stops_with_one_line(tiny_corpus, tmp_path):
    from torchvision.models import optical_flow

    manifest, _ = tiny_corpus
    weights = tmp_path / "raft_small_C_T_V2-01064c6d.pth"  # random weights: not torchvision's file
    torch.save(optical_flow.raft_small(weights=None, progress=False).state_dict(), weights)
    result = invoke("extract-flow", "--manifest", manifest, "--out", tmp_path / "c", "--backend", "raft-small",
                    "--weights", weights)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "sha256 starts with 01064c6d" in errors[0] and "Traceback" not in result.output
