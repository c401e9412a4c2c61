"""workflows/slurm/extract.sbatch as the README submits it, on a real one-node Slurm cluster.

The sbatch lines are read from the README's "Running on a cluster" section and run with the test's
manifest, cache and a 3-task array; each cache must equal a local run of the same stage.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cslr_pipe.features.store import load_records, open_cache
from cslr_pipe.pipeline.cli import main
from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus

from .readme import REPO, cluster_commands, readme_command, substituted

pytestmark = pytest.mark.slurm

TEMPLATE = "workflows/slurm/extract.sbatch"
SHARD_SIZE = 2  # 8 videos -> 4 shards over 3 tasks: task 0 runs shards 0 and 3
COMMANDS = {"probe": "probe", "flow": "extract-flow"}  # stage as typed -> cslr-pipe command


def readme_lines() -> list[list[str]]:
    """The README's `sbatch ... extract.sbatch STAGE ...` commands."""
    return readme_command("sbatch", TEMPLATE)


def as_tested(words: list[str], manifest: Path, cache: Path, tasks: int = 3) -> list[str]:
    """A README command with the test's manifest, cache, array size and shard size put in."""
    words = substituted(words, {"my.jsonl": str(manifest), "my-cache": str(cache), TEMPLATE: str(REPO / TEMPLATE),
                                "--array=": f"--array=0-{tasks - 1}"})
    return words + ["--shard-size", str(SHARD_SIZE)]


def stage_of(command: list[str]) -> str:
    return command[command.index(str(REPO / TEMPLATE)) + 1]


def job_env() -> dict:
    """The environment of the submitting shell: this test's Python environment is the active one."""
    env = dict(os.environ)
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    return env


def run_local(command: list[str], cache: Path) -> None:
    """The same stage and options, run here in one process (all shards)."""
    script = command.index(str(REPO / TEMPLATE))
    args = [COMMANDS[command[script + 1]], *command[script + 2:]]
    args[args.index("--out") + 1] = str(cache)
    result = CliRunner().invoke(main, [*args, "--quiet"])
    assert result.exit_code == 0, result.output


def assert_same_cache(cache: Path, reference: Path, stage: str) -> None:
    """Every video of the reference has equal arrays and attributes in ``cache``, nothing more."""
    ours, theirs = open_cache(cache), open_cache(reference)
    assert ours.ids(stage) == theirs.ids(stage) and ours.ids(stage)
    for video_id in theirs.ids(stage):
        a, b = ours.read(video_id, [stage]), theirs.read(video_id, [stage])
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{stage} {video_id} {name}")
        assert ours.attrs(video_id, stage) == theirs.attrs(video_id, stage)
    ours.close(), theirs.close()


def ids_once(cache: Path, stage: str) -> list[str]:
    """Every id over all committed shards, counted as often as a shard holds it."""
    return sorted(i for record in load_records(cache / stage).values() for i in record.ids)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8 synthetic videos (mp4 files and PNG folders) of 64x64 pixels; returns the manifest."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), CorpusSpec(num_videos=8, height=64, width=64))


def test_readme_commands_are_the_tested_ones():
    """Every command of the README's cluster section is one these tests run (or a dask one)."""
    kinds = [(words[0], next((w for w in words if w.startswith("workflows/")), None)) for words in cluster_commands()]
    assert kinds == [("sbatch", TEMPLATE), ("sbatch", TEMPLATE), ("cslr-pipe", None),
                     ("sbatch", "workflows/slurm/train.sbatch"), ("cslr-pipe", "workflows/demo.yaml"),
                     ("cslr-pipe", None)]
    assert [words[2:4] for words in readme_lines()] == [[TEMPLATE, "probe"], [TEMPLATE, "flow"]]
    for words in readme_lines():
        assert words[1].startswith("--array=0-") and "--manifest" in words and "--out" in words
    # the template reads the array task's index and count, as the README says
    template = (REPO / TEMPLATE).read_text()
    assert '--shard-index "${SLURM_ARRAY_TASK_ID:-0}"' in template
    assert "--num-shards \"${CSLR_PIPE_NUM_TASKS:-${SLURM_ARRAY_TASK_COUNT:-1}}\"" in template


@pytest.mark.parametrize("line", readme_lines(), ids=lambda words: words[3])
def test_array_job_equals_local_run(slurm_cluster, corpus, tmp_path, line):
    command = as_tested(line, corpus, tmp_path / "cache")
    stage = stage_of(command)  # the cache folder has the stage's name
    job = slurm_cluster.submit(command, cwd=tmp_path, env=job_env())
    states = slurm_cluster.wait(job)
    logs = {task: (tmp_path / f"cslr-pipe-{job}_{task}.out") for task in range(3)}
    assert {t: (j.state, j.exit_code) for t, j in states.items()} == {t: ("COMPLETED", 0) for t in range(3)}, \
        {t: p.read_text() for t, p in logs.items() if p.exists()}
    for task, log in logs.items():  # each task's log, in the submit folder, says what it did
        assert f"(task {task} of 3)" in log.read_text()
    assert f"{stage}: 4 computed, 0 reused, 0 of 2 shards already complete, 0 failed" in logs[0].read_text()
    run_local(command, tmp_path / "local")
    assert_same_cache(tmp_path / "cache", tmp_path / "local", stage)
    assert sorted(load_records(tmp_path / "cache" / stage)) == [0, 1, 2, 3]
    assert ids_once(tmp_path / "cache", stage) == sorted(open_cache(tmp_path / "local").ids(stage))
    index = json.loads((tmp_path / "cache" / stage / "index.json").read_text())
    assert index["completed"] == ids_once(tmp_path / "cache", stage)


def copy_manifest(manifest: Path, folder: Path, extra: dict[int, dict]) -> Path:
    """The corpus manifest with its video paths made absolute and rows inserted at the given places."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row["video"] = str(manifest.parent / row["video"])
    for place, row in sorted(extra.items()):
        rows.insert(place, row)
    out = folder / "manifest.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def test_cancelled_and_timed_out_tasks_then_resubmitted_array_completes_the_cache(slurm_cluster, corpus, tmp_path):
    # videos on a "hung file system": reading a FIFO blocks until the task is stopped. Of 10
    # videos in shards of 2 (0-4) over 3 tasks, "stuck" (7th) is in shard 3, which task 0 runs
    # after committing shard 0, and "late" (9th) in shard 4, which task 1 runs after shard 1.
    # Task 0 is cancelled; task 1 runs into the array's time limit of one minute.
    hung = {"stuck": tmp_path / "stuck.mp4", "late": tmp_path / "late.mp4"}
    for path in hung.values():
        os.mkfifo(path)
    manifest = copy_manifest(corpus, tmp_path, {6: {"id": "stuck", "split": "train", "video": str(hung["stuck"]),
                                                    "glosses": ["A"]},
                                                8: {"id": "late", "split": "train", "video": str(hung["late"]),
                                                    "glosses": ["A"]}})
    command = as_tested(readme_lines()[0], manifest, tmp_path / "cache")
    job = slurm_cluster.submit([command[0], "--time=1", *command[1:]], cwd=tmp_path, env=job_env())
    stage_dir = tmp_path / "cache" / "probe"
    deadline = time.monotonic() + 45  # well before the time limit could stop task 0 first
    while not ({0, 1} <= set(load_records(stage_dir)) and len(list(stage_dir.glob(".shard-0000[34].h5.tmp-*"))) == 2):
        assert time.monotonic() < deadline, "tasks 0 and 1 never reached their blocking videos"
        time.sleep(0.2)
    assert (0, "RUNNING") in slurm_cluster.active(job)
    slurm_cluster.run("scancel", f"{job}_0")
    states = slurm_cluster.wait(job, timeout=180)  # time limits are enforced every 30 s
    assert [states[t].state for t in range(3)] == ["CANCELLED", "TIMEOUT", "COMPLETED"]
    assert "CANCELLED AT" in (tmp_path / f"cslr-pipe-{job}_0.out").read_text()
    assert "DUE TO TIME LIMIT" in (tmp_path / f"cslr-pipe-{job}_1.out").read_text()
    records = load_records(stage_dir)
    assert sorted(records) == [0, 1, 2]  # shards 3 and 4 were being written: no record, nobody trusts them
    assert len(list(stage_dir.glob(".shard-0000[34].h5.tmp-*"))) == 2
    before = {k: r.created for k, r in records.items()}

    # the file system is back: the same array, submitted again, computes only shards 3 and 4
    for path in hung.values():
        path.unlink()
        shutil.copy(corpus.parent / "videos" / "demo-0001.mp4", path)
    job = slurm_cluster.submit(command, cwd=tmp_path, env=job_env())
    states = slurm_cluster.wait(job)
    assert {t: (j.state, j.exit_code) for t, j in states.items()} == {t: ("COMPLETED", 0) for t in range(3)}
    records = load_records(stage_dir)
    assert {k: records[k].created for k in before} == before  # complete shards were not rewritten
    assert not list(stage_dir.glob(".*.tmp-*"))  # the stopped writers' files are gone
    manifest_ids = [json.loads(line)["id"] for line in manifest.read_text().splitlines()]
    assert ids_once(tmp_path / "cache", "probe") == sorted(manifest_ids)  # every video exactly once
    for task in (0, 1):
        log = (tmp_path / f"cslr-pipe-{job}_{task}.out").read_text()
        assert "2 computed, 0 reused, 1 of 2 shards already complete, 0 failed" in log
    run_local(command, tmp_path / "local")
    assert_same_cache(tmp_path / "cache", tmp_path / "local", "probe")


def test_corrupt_video_fails_only_itself_and_its_task(slurm_cluster, corpus, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    manifest = copy_manifest(corpus, tmp_path, {2: {"id": "broken", "split": "train", "video": str(broken),
                                                    "glosses": ["A"]}})
    command = as_tested(readme_lines()[0], manifest, tmp_path / "cache")
    job = slurm_cluster.submit(command, cwd=tmp_path, env=job_env())
    states = slurm_cluster.wait(job)
    # "broken" is the 3rd video: shard 1, task 1
    assert {t: (j.state, j.exit_code) for t, j in states.items()} == \
        {0: ("COMPLETED", 0), 1: ("FAILED", 1), 2: ("COMPLETED", 0)}
    log = (tmp_path / f"cslr-pipe-{job}_1.out").read_text()
    assert f"failed: probe broken: {broken}: " in log
    cache = open_cache(tmp_path / "cache")
    manifest_ids = [json.loads(line)["id"] for line in manifest.read_text().splitlines()]
    assert cache.ids("probe") == sorted(set(manifest_ids) - {"broken"})
    assert list(cache.failed("probe")) == ["broken"]
