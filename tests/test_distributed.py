"""The torchrun/DDP helpers, alone and in two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch.multiprocessing as mp

from cslr_pipe.training import distributed


def test_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_distributed() == (0, 1, 0)
    assert distributed.is_main() and not distributed.initialized()
    distributed.barrier()
    hyps = {"v0": ["HELLO"]}
    assert distributed.gather_dict(hyps) == hyps and distributed.gather_dict(hyps) is not hyps
    distributed.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = distributed.init_distributed(backend="gloo")
    merged = distributed.gather_dict({f"v{rank}": [rank], "shared": [rank]})
    distributed.barrier()
    result = {"ranks": ranks, "main": distributed.is_main(), "merged": merged}
    distributed.cleanup()
    Path(out, f"{rank}.json").write_text(json.dumps(result))


def test_two_processes_gloo(tmp_path):
    # fork, not spawn: the children need not import torch again (seconds on a busy machine)
    mp.start_processes(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert [r["ranks"] for r in results] == [[0, 2, 0], [1, 2, 1]]
    assert [r["main"] for r in results] == [True, False]
    assert all(r["merged"] == {"v0": [0], "v1": [1], "shared": [1]} for r in results)
