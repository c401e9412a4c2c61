"""Running stages over shards: results, bad videos, resume, conflicts, array-task splits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cslr_pipe.features.store import load_records, open_cache
from cslr_pipe.features.manifest import read_manifest
from cslr_pipe.pipeline.runner import (CacheConflict, RunOptions, plan_shards, run_stage,
                                       shards_for_task)
from cslr_pipe.pipeline.stages import Stage, StageOutput, get_stage

from conftest import frame, write_frame_folder


def options(manifest: Path, out: Path, **kwargs) -> RunOptions:
    return RunOptions(out=out, root=manifest.parent, shard_size=kwargs.pop("shard_size", 3),
                      progress=False, **kwargs)


def brightness_stage(requires=()) -> Stage:
    """A small stage with one option, for conflict and dependency tests."""
    def build(config, device):
        def run(item):
            base = item.inputs()["frame_mean"] if requires else np.zeros((1, 3), np.float32)
            return StageOutput({"scaled": base * config["gain"]})
        return run
    return Stage("scaled", build, {"gain": 1.0}, requires=tuple(requires))


def test_probe_writes_every_video(tiny_corpus, tmp_path):
    manifest, rows = tiny_corpus
    results = run_stage(get_stage("probe"), {}, read_manifest(manifest), options(manifest, tmp_path / "c"))
    assert [r.computed for r in results] == [3, 3, 1] and not any(r.failed for r in results)
    cache = open_cache(tmp_path / "c")
    assert cache.ids("probe") == sorted(row["id"] for row in rows)
    for i in range(7):
        data = cache.read(f"vid-{i}")
        assert data["frame_mean"].shape == (3 + i, 3)
        expected = [frame(i + t).reshape(-1, 3).mean(0) for t in range(3 + i)]
        np.testing.assert_allclose(data["frame_mean"], expected, rtol=1e-5)
        attrs = cache.attrs(f"vid-{i}", "probe")
        assert (attrs["num_frames"], attrs["height"], attrs["width"]) == (3 + i, 24, 32)


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5, 9])
def test_array_tasks_cover_every_id_exactly_once(tiny_corpus, tmp_path, num_shards):
    manifest, rows = tiny_corpus
    plan = plan_shards(read_manifest(manifest), 2)
    seen = [row.id for task in range(num_shards) for k in shards_for_task(len(plan), task, num_shards)
            for row in plan[k]]
    assert sorted(seen) == sorted(row["id"] for row in rows)
    for task in range(num_shards):  # really run them as separate tasks
        run_stage(get_stage("probe"), {}, read_manifest(manifest),
                  options(manifest, tmp_path / "c", shard_size=2), task, num_shards)
    records = load_records(tmp_path / "c" / "probe")
    ids = [video_id for record in records.values() for video_id in record.ids]
    assert sorted(ids) == sorted(row["id"] for row in rows) and len(records) == 4
    with pytest.raises(ValueError):
        shards_for_task(4, num_shards, num_shards)


def test_bad_videos_fail_alone_and_are_retried(tiny_corpus, tmp_path):
    manifest, rows = tiny_corpus
    root = manifest.parent
    (root / "corrupt.mp4").write_bytes(os.urandom(2000))
    (root / "empty").mkdir()
    extra = [{"id": "corrupt", "split": "train", "video": "corrupt.mp4", "glosses": ["A"]},
             {"id": "empty", "split": "train", "video": "empty", "glosses": ["A"]},
             {"id": "missing", "split": "dev", "video": "nowhere/x.mp4", "glosses": []}]
    manifest.write_text(manifest.read_text() + "".join(json.dumps(r) + "\n" for r in extra))
    opts = options(manifest, tmp_path / "c")
    results = run_stage(get_stage("probe"), {}, read_manifest(manifest), opts)
    failed = {k: v for r in results for k, v in r.failed.items()}
    assert set(failed) == {"corrupt", "empty", "missing"}
    assert "corrupt.mp4" in failed["corrupt"] and "cannot open" in failed["corrupt"]
    assert "no images" in failed["empty"] and "not found" in failed["missing"]
    assert all("\n" not in reason for reason in failed.values())
    assert open_cache(tmp_path / "c").ids("probe") == sorted(row["id"] for row in rows)

    write_frame_folder(root / "empty", 4)  # the user fixes one video and re-runs
    again = run_stage(get_stage("probe"), {}, read_manifest(manifest), opts)
    assert sum(r.computed for r in again) == 1 and sum(r.reused for r in again) == 1  # vid-6
    assert {k for r in again for k in r.failed} == {"corrupt", "missing"}
    assert sum(r.skipped for r in again) == 2  # shards without failures are not touched
    cache = open_cache(tmp_path / "c")
    assert cache.read("empty")["frame_mean"].shape == (4, 3)
    assert cache.read("vid-6")["frame_mean"].shape == (9, 3)  # copied over unchanged


def test_changed_config_or_plan_is_reported_not_mixed(tiny_corpus, tmp_path):
    manifest, _ = tiny_corpus
    rows = read_manifest(manifest)
    run_stage(brightness_stage(), {"gain": 1.0}, rows, options(manifest, tmp_path / "c"))
    with pytest.raises(CacheConflict, match=r"config.gain: 1.0 -> 2.0.*--force"):
        run_stage(brightness_stage(), {"gain": 2.0}, rows, options(manifest, tmp_path / "c"))
    with pytest.raises(CacheConflict, match="shard-size"):
        run_stage(brightness_stage(), {"gain": 1.0}, rows, options(manifest, tmp_path / "c", shard_size=2))
    forced = run_stage(brightness_stage(), {"gain": 2.0}, rows, options(manifest, tmp_path / "c", force=True))
    assert sum(r.computed for r in forced) == 7
    assert open_cache(tmp_path / "c").provenance("scaled").config == {"gain": 2.0}
    with pytest.raises(ValueError, match="no option"):
        brightness_stage().resolve_config({"gian": 3})


def test_required_stage_results_are_read_from_the_cache(tiny_corpus, tmp_path):
    manifest, _ = tiny_corpus
    rows = read_manifest(manifest)
    opts = options(manifest, tmp_path / "c")
    with pytest.raises(ValueError, match="needs probe results"):
        run_stage(brightness_stage(["probe"]), {"gain": 2.0}, rows, opts)
    run_stage(get_stage("probe"), {}, rows[1:], opts)
    results = run_stage(brightness_stage(["probe"]), {"gain": 2.0}, rows[1:] + rows[:1], opts)
    assert {k: v for r in results for k, v in r.failed.items()} == {
        "vid-0": f"{manifest.parent / 'frames/vid-0'}: vid-0: no 'probe' results in {opts.out}"}
    cache = open_cache(tmp_path / "c")
    np.testing.assert_allclose(cache.read("vid-2")["scaled"], 2 * cache.read("vid-2")["frame_mean"])


KILLABLE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from cslr_pipe.features.manifest import read_manifest
    from cslr_pipe.pipeline.runner import RunOptions, run_stage
    from cslr_pipe.pipeline.stages import Stage, StageOutput

    def build(config, device):
        def run(item):
            time.sleep(config["delay"])
            return StageOutput({"value": np.full((50, 100), len(item.row.id), np.float32)})
        return run

    manifest, out, delay = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    stage = Stage("slow", build, {"delay": 0.0})
    run_stage(stage, {"delay": delay}, read_manifest(manifest),
              RunOptions(out=out, root=manifest.parent, shard_size=3, progress=False))
""")


def test_resume_after_a_killed_process(tiny_corpus, tmp_path):
    manifest, rows = tiny_corpus
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    out = tmp_path / "c"
    for kill_after in (0.35, 0.95):  # inside shard 0, then inside shard 1
        process = subprocess.Popen([sys.executable, str(script), str(manifest), str(out), "0.2"])
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        process.wait()
        for record in load_records(out / "slow").values():  # what is visible is complete
            assert len(record.ids) == len(record.planned)
    assert load_records(out / "slow").keys() != {0, 1, 2}, "the process was not killed mid-run"
    finished = subprocess.run([sys.executable, str(script), str(manifest), str(out), "0.2"], timeout=60)
    assert finished.returncode == 0
    ids = [i for record in load_records(out / "slow").values() for i in record.ids]
    assert sorted(ids) == sorted(row["id"] for row in rows)  # every id exactly once
    cache = open_cache(out)
    for row in rows:
        assert cache.read(row["id"])["value"][0, 0] == len(row["id"])
    assert not [p for p in (out / "slow").iterdir() if ".tmp-" in p.name]
