"""workflows/slurm/train.sbatch as the README submits it: torchrun with two CPU processes (gloo) as
one Slurm job; a cancelled job submitted again with --resume continues from its last checkpoint."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from cslr_pipe.training.trainer import load_checkpoint, load_model

from .readme import REPO, readme_command, substituted

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TEMPLATE = "workflows/slurm/train.sbatch"


def readme_train(feature_corpus: Path, out: Path, *options: str) -> list[str]:
    """The README's train.sbatch command: two processes on two CPUs instead of its GPUs."""
    [words] = readme_command("sbatch", TEMPLATE)
    words = substituted(words, {"--gres=": "--cpus-per-task=2", TEMPLATE: str(REPO / TEMPLATE),
                                "my.jsonl": str(feature_corpus / "manifest.jsonl"),
                                "my-cache": str(feature_corpus / "cache"), "runs/ctc": str(out)})
    assert words[2:4] == [str(REPO / TEMPLATE), "ctc"]
    return [*words, "--streams", "features.rgb", "--batch-size", "4", "--lr", "3e-3", "--model-option", "hidden=32",
            "--device", "cpu", *options]


def job_env() -> dict:
    env = {**os.environ, "CSLR_PIPE_NPROC": "2"}
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix  # the submitting shell's environment
    return env


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_train_template_runs_two_ddp_processes(slurm_cluster, feature_corpus, tmp_path):
    out = tmp_path / "run"
    job = slurm_cluster.submit(readme_train(feature_corpus, out, "--epochs", "2"), cwd=tmp_path, env=job_env())
    states = slurm_cluster.wait(job, timeout=240)
    log = (tmp_path / f"cslr-pipe-train-{job}.out").read_text()
    assert (states[0].state, states[0].exit_code) == ("COMPLETED", 0), log[-3000:]
    assert "torchrun: 2 process(es)" in log and log.count("epoch 1:") == 1  # only rank 0 logs
    # 36 training videos in batches of 4 = 9 batches, shared by two ranks: 5 steps each
    assert [h["steps"] for h in history(out)] == [5, 5]
    model, _ = load_model(out / "best.pt")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_cancelled_training_resubmitted_with_resume_continues(slurm_cluster, feature_corpus, tmp_path):
    out = tmp_path / "run"
    job = slurm_cluster.submit(readme_train(feature_corpus, out, "--epochs", "400"), cwd=tmp_path, env=job_env())
    deadline = time.monotonic() + 180
    while not ((out / "last.pt").is_file() and load_checkpoint(out / "last.pt")["epoch"] >= 1):  # replaced atomically
        assert time.monotonic() < deadline and slurm_cluster.active(job), "no second epoch"
        time.sleep(0.2)
    slurm_cluster.run("scancel", job)
    assert slurm_cluster.wait(job)[0].state == "CANCELLED"
    done = load_checkpoint(out / "last.pt")["epoch"] + 1  # epochs in the last checkpoint
    assert 2 <= done < 400

    job = slurm_cluster.submit(readme_train(feature_corpus, out, "--epochs", "400", "--resume", "--stop-after", "2"),
                               cwd=tmp_path, env=job_env())
    states = slurm_cluster.wait(job, timeout=240)
    log = (tmp_path / f"cslr-pipe-train-{job}.out").read_text()
    assert (states[0].state, states[0].exit_code) == ("COMPLETED", 0), log[-3000:]
    assert f"resumed from {out / 'last.pt'} at epoch {done}" in log
    assert [h["epoch"] for h in history(out)] == list(range(done + 2))  # no epoch twice, none missing
    assert load_checkpoint(out / "last.pt")["epoch"] == done + 1
