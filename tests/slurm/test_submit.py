"""`cslr-pipe submit`: a workflow's stages as job arrays chained task by task, on a real cluster."""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cslr_pipe.features.store import load_records, open_cache
from cslr_pipe.pipeline.cli import main
from cslr_pipe.pipeline.dag import load_workflow
from cslr_pipe.pipeline.submit import sbatch_commands
from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus

from .readme import readme_command, substituted

STAGES = ["probe", "flow", "features.flow"]
TRAIN = {"model": "ctc", "streams": ["features.flow"], "epochs": 2, "batch_size": 2, "lr": 3e-3,
         "model_options": {"hidden": 16}}


def write_workflow(folder: Path, train: dict | None = None) -> Path:
    """probe; flow at 64x64; random-weight ResNet-18 features of the flow (features.flow needs flow)."""
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump({
        "shard_size": 2, "device": "cpu",
        "stages": {"probe": {}, "features.flow": {"weights": "none", "options": {"resize": 64, "crop": 56}},
                   "flow": {"size": [64, 64]}},
        **({"train": train} if train else {}),
    }, sort_keys=False))
    return path


def test_stages_are_submitted_in_order_with_taskwise_dependencies(tmp_path):
    workflow_file = write_workflow(tmp_path)
    jobs = sbatch_commands(load_workflow(workflow_file), workflow_file, tmp_path / "m.jsonl", tmp_path / "c",
                           None, 3, tmp_path / "logs", ("--partition=debug",))
    assert [(job.name, job.after, job.dependency) for job in jobs] == [
        ("probe", [], "aftercorr"), ("flow", [], "aftercorr"), ("features.flow", ["flow"], "aftercorr")]
    for job in jobs:
        assert "--array=0-2" in job.argv and "--partition=debug" in job.argv
        assert "--kill-on-invalid-dep=yes" in job.argv
        wrap = next(word for word in job.argv if word.startswith("--wrap="))
        assert f"run {workflow_file} --stage {job.name} " in wrap and "--num-shards 3" in wrap
        assert wrap.endswith('--shard-index "$SLURM_ARRAY_TASK_ID"')


def test_the_train_section_is_one_job_after_every_stage(tmp_path):
    workflow_file = write_workflow(tmp_path, TRAIN)
    workflow = load_workflow(workflow_file)
    jobs = sbatch_commands(workflow, workflow_file, tmp_path / "m.jsonl", tmp_path / "c", None, 3,
                           tmp_path / "logs", ("--partition=cpu",), ("--gres=gpu:1",))
    train = jobs[-1]
    assert (train.name, train.after, train.dependency) == ("train", STAGES, "afterok")
    assert train.argv.index("--partition=cpu") < train.argv.index("--gres=gpu:1")  # its own come last
    assert not any(word.startswith("--array") for word in train.argv)
    assert next(word for word in train.argv if word.startswith("--wrap=")).endswith(
        f"run {workflow_file} --stage train --manifest {tmp_path / 'm.jsonl'} --out {tmp_path / 'c'} --quiet")
    assert all("--gres=gpu:1" not in job.argv for job in jobs[:-1])


def test_submit_chains_the_jobs_by_their_ids(tmp_path, monkeypatch):
    """With an sbatch that records its arguments: each job names the ids of the jobs it waits for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.jsonl"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"""#!{sys.executable}
import json, sys
with open({str(calls)!r}, "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
print(f"{{100 + sum(1 for _ in open({str(calls)!r}))}};cluster")
""")
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"v{i}", "split": split, "video": f"v{i}.mp4", "glosses": ["A"]})
                                + "\n" for i, split in enumerate(["train", "train", "dev", "test"])))
    workflow_file = write_workflow(tmp_path, TRAIN)
    result = CliRunner().invoke(main, ["submit", str(workflow_file), "--manifest", str(manifest), "--out",
                                       str(tmp_path / "cache"), "--array", "2", "--logs", str(tmp_path / "logs"),
                                       "--train-sbatch-option=--gres=gpu:1"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["probe: job 101 (2 tasks)", "flow: job 102 (2 tasks)",
                                          "features.flow: job 103 (2 tasks)",
                                          "train: job 104 (after every task of every stage)"]
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    dependencies = [[word for word in argv if word.startswith("--dependency")] for argv in argvs]
    assert dependencies == [[], [], ["--dependency=aftercorr:102"], ["--dependency=afterok:101:102:103"]]
    assert all(argv.index(dependency[0]) < argv.index(argv[-1]) for argv, dependency in zip(argvs, dependencies)
               if dependency)  # before --wrap, the last argument
    assert "--gres=gpu:1" in argvs[3] and not any("--gres=gpu:1" in argv for argv in argvs[:3])


def test_submit_checks_the_train_section_before_submitting(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: nothing could be submitted anyway
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "v0", "split": "train", "video": "v0.mp4", "glosses": ["A"]}) + "\n")
    result = CliRunner().invoke(main, ["submit", str(write_workflow(tmp_path, TRAIN)), "--manifest", str(manifest),
                                       "--out", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "no rows of split 'dev'" in result.output
    result = CliRunner().invoke(main, ["submit", str(write_workflow(tmp_path, {**TRAIN, "epoch": 3})),
                                       "--manifest", str(manifest), "--out", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "unknown training option(s): epoch" in result.output
    result = CliRunner().invoke(main, ["submit", str(write_workflow(tmp_path)), "--manifest", str(manifest),
                                       "--out", str(tmp_path / "cache"), "--train-sbatch-option=--gres=gpu:1"])
    assert result.exit_code == 2 and "has no train section" in result.output


def test_submit_refuses_a_stage_whose_input_is_nowhere(tmp_path):
    workflow_file = tmp_path / "w.yaml"
    workflow_file.write_text(yaml.safe_dump({"stages": {"features.flow": {"weights": "none"}}}))
    with pytest.raises(ValueError, match="requires flow, which is neither in the workflow nor in"):
        sbatch_commands(load_workflow(workflow_file), workflow_file, tmp_path / "m.jsonl", tmp_path / "c",
                        None, 2, tmp_path)


def readme_submit(workflow: Path, manifest: Path, cache: Path, logs: Path) -> list[str]:
    """The README's `cslr-pipe submit` command with the test's files, 2 tasks and the test partition."""
    [words] = readme_command("cslr-pipe", "submit")
    words = substituted(words, {"my-workflow.yaml": str(workflow), "my.jsonl": str(manifest),
                                "my-cache": str(cache), "logs": str(logs), "16": "2",
                                "--sbatch-option=--partition=": "--sbatch-option=--partition=debug",
                                "--train-sbatch-option=": "--train-sbatch-option=--cpus-per-task=1"})  # no GPUs
    assert words[:2] == ["cslr-pipe", "submit"] and words[words.index("--array") + 1] == "2"
    return words[1:]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:features.flow. weights 'none'")
def test_submitted_workflow_equals_local_run_and_trains_after_it(slurm_cluster, tmp_path):
    manifest = make_corpus(tmp_path / "corpus", CorpusSpec(num_videos=6, height=64, width=64))
    workflow_file = write_workflow(tmp_path, TRAIN)
    result = CliRunner().invoke(main, readme_submit(workflow_file, manifest, tmp_path / "cache", tmp_path / "logs"))
    assert result.exit_code == 0, result.output
    jobs = dict(re.findall(r"^(\S+): job (\d+) \((?:2 tasks|after every task of every stage)\)$", result.output, re.M))
    assert list(jobs) == [*STAGES, "train"]
    states = {stage: slurm_cluster.wait(job, timeout=240) for stage, job in jobs.items()}
    for stage in STAGES:
        logs = {t: (tmp_path / "logs" / f"cslr-pipe-{stage}-{jobs[stage]}_{t}.out") for t in range(2)}
        assert {t: (j.state, j.exit_code) for t, j in states[stage].items()} == \
            {0: ("COMPLETED", 0), 1: ("COMPLETED", 0)}, {t: p.read_text() for t, p in logs.items() if p.exists()}
    train_log = (tmp_path / "logs" / f"cslr-pipe-train-{jobs['train']}.out").read_text()
    assert (states["train"][0].state, states["train"][0].exit_code) == ("COMPLETED", 0), train_log
    assert "epoch 1:" in train_log and re.search(r"^test: WER \d+\.\d+%", train_log, re.M), train_log
    assert (tmp_path / "cache" / "runs" / "ctc" / "best.pt").is_file()
    # training started only after every task of every stage had finished
    train_start = re.search(r"StartTime=(\S+)", slurm_cluster.run("scontrol", "-o", "show", "job", jobs["train"]))
    for stage in STAGES:
        for line in slurm_cluster.run("scontrol", "-o", "show", "job", jobs[stage]).splitlines():
            assert when(train_start.group(1)) >= when(re.search(r"EndTime=(\S+)", line).group(1))
    # task i of features.flow started only after task i of flow had finished
    for task in range(2):
        flow = slurm_cluster.run("scontrol", "-o", "show", "job", f"{jobs['flow']}_{task}")
        features = slurm_cluster.run("scontrol", "-o", "show", "job", f"{jobs['features.flow']}_{task}")
        end = re.search(r"EndTime=(\S+)", flow).group(1)
        start = re.search(r"StartTime=(\S+)", features).group(1)
        assert when(start) >= when(end)

    for stage in STAGES:  # the same stages here, one after the other, all shards in this process
        local = CliRunner().invoke(main, ["run", str(workflow_file), "--stage", stage, "--manifest", str(manifest),
                                          "--out", str(tmp_path / "local"), "--quiet"])
        assert local.exit_code == 0, local.output
    ours, theirs = open_cache(tmp_path / "cache"), open_cache(tmp_path / "local")
    for stage in STAGES:
        assert sorted(load_records(tmp_path / "cache" / stage)) == [0, 1, 2]
        assert ours.ids(stage) == theirs.ids(stage) and len(ours.ids(stage)) == 6
        for video_id in theirs.ids(stage):
            a, b = ours.read(video_id, [stage]), theirs.read(video_id, [stage])
            for name in b:  # features: float16 of float32 sums that may differ in their last bits
                np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-2 if stage.startswith("features")
                                           else 0, err_msg=f"{stage} {video_id} {name}")
