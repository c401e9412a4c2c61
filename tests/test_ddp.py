"""`cslr-pipe train` under torchrun: two CPU processes (gloo) train one model with DDP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from cslr_pipe.training.trainer import load_checkpoint, load_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes(feature_corpus, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "cslr_pipe.pipeline.cli", "train", "ctc",
               "--manifest", str(feature_corpus / "manifest.jsonl"), "--cache", str(feature_corpus / "cache"),
               "--streams", "features.rgb", "--out", str(out), "--epochs", "3", "--batch-size", "4",
               "--lr", "3e-3", "--model-option", "hidden=32", "--device", "cpu"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 2:") == 1  # only rank 0 logs
    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # 36 training videos in batches of 4 = 9 batches, shared by two ranks: 5 steps each (one repeated)
    assert [h["steps"] for h in history] == [5, 5, 5]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    last = load_checkpoint(out / "last.pt")
    assert len(last["torch_rng"]) == 2 and not torch.equal(last["torch_rng"][0], last["torch_rng"][1])
    model, _ = load_model(out / "best.pt")
    assert sum(p.numel() for p in model.parameters()) > 0
