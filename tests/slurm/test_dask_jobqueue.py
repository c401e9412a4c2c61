"""`cslr-pipe run` with `cluster: {kind: slurm}`: dask workers are real Slurm jobs (dask-jobqueue)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cslr_pipe.features.store import open_cache
from cslr_pipe.pipeline.cli import main
from cslr_pipe.pipeline.dag import load_workflow
from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus
from cslr_pipe.workflows import __file__ as workflows_init

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TEMPLATE = "slurm/dask-jobqueue.yaml"


def dask_worker_jobs(slurm_cluster) -> set[str]:
    out = slurm_cluster.run("squeue", "-h", "-t", "all", "-o", "%i %j")
    return {job for job, name in (line.split() for line in out.splitlines()) if name == "dask-worker"}


def test_workflow_on_dask_jobqueue_workers_equals_local_run(slurm_cluster, tmp_path):
    pytest.importorskip("dask_jobqueue")
    manifest = make_corpus(tmp_path / "corpus", CorpusSpec(num_videos=6, height=64, width=64))
    template = yaml.safe_load((Path(workflows_init).parent / TEMPLATE).read_text())
    # the template's site-specific values (partition, account, GPU, sizes) replaced by this cluster's
    cluster = {**template["cluster"], "jobs": 2, "cores": 1, "processes": 1, "memory": "1GB",
               "walltime": "00:10:00", "job_extra_directives": [], "job_script_prologue": [],
               "log_directory": str(tmp_path / "dask-logs"),
               "scheduler_options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    for key in ("queue", "account"):
        cluster.pop(key)
    workflow = {**template, "shard_size": 2, "device": "cpu", "cluster": cluster,
                "stages": {"probe": {}, "flow": {"size": [64, 64]}}}
    workflow_file = tmp_path / "workflow.yaml"
    workflow_file.write_text(yaml.safe_dump(workflow))
    assert load_workflow(workflow_file).cluster["kind"] == "slurm"

    before = dask_worker_jobs(slurm_cluster)
    result = CliRunner().invoke(main, ["run", str(workflow_file), "--manifest", str(manifest),
                                       "--out", str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 0, result.output
    workers = dask_worker_jobs(slurm_cluster) - before
    assert len(workers) == 2, workers  # the workflow's `jobs: 2` worker jobs ran on Slurm
    logs = list((tmp_path / "dask-logs").glob("*.err"))
    assert any(re.search(r"Registered to:\s+tcp://127\.0\.0\.1:", log.read_text()) for log in logs)

    for stage in ("probe", "flow"):
        local = CliRunner().invoke(main, ["run", str(workflow_file), "--stage", stage, "--manifest", str(manifest),
                                          "--out", str(tmp_path / "local"), "--quiet"])
        assert local.exit_code == 0, local.output
        ours, theirs = open_cache(tmp_path / "cache"), open_cache(tmp_path / "local")
        assert ours.ids(stage) == theirs.ids(stage) and len(ours.ids(stage)) == 6
        for video_id in theirs.ids(stage):
            a, b = ours.read(video_id, [stage]), theirs.read(video_id, [stage])
            for name in b:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"{stage} {video_id} {name}")
