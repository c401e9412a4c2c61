"""workflows/slurm/train.sbatch: torchrun with two CPU processes (gloo) as one Slurm job."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from cslr_pipe.training.trainer import load_model

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_train_template_runs_two_ddp_processes(slurm_cluster, feature_corpus, tmp_path):
    env = {**os.environ, "CSLR_PIPE_NPROC": "2"}
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix  # the submitting shell's environment
    out = tmp_path / "run"
    job = slurm_cluster.submit(
        ["sbatch", "--cpus-per-task=2", str(REPO / "workflows/slurm/train.sbatch"), "ctc",
         "--manifest", str(feature_corpus / "manifest.jsonl"), "--cache", str(feature_corpus / "cache"),
         "--streams", "features.rgb", "--out", str(out), "--epochs", "2", "--batch-size", "4", "--lr", "3e-3",
         "--model-option", "hidden=32", "--device", "cpu"], cwd=tmp_path, env=env)
    states = slurm_cluster.wait(job, timeout=240)
    log = (tmp_path / f"cslr-pipe-train-{job}.out").read_text()
    assert (states[0].state, states[0].exit_code) == ("COMPLETED", 0), log[-3000:]
    assert "torchrun: 2 process(es)" in log and log.count("epoch 1:") == 1  # only rank 0 logs
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # 36 training videos in batches of 4 = 9 batches, shared by two ranks: 5 steps each
    assert [h["steps"] for h in history] == [5, 5]
    model, _ = load_model(out / "best.pt")
    assert sum(p.numel() for p in model.parameters()) > 0
