"""Workflow YAML -> dask graph; end to end on a LocalCluster with 2 workers."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from click.testing import CliRunner

from cslr_pipe.features.store import open_cache
from cslr_pipe.pipeline.cli import main
from cslr_pipe.pipeline.dag import Workflow, build_graph, load_workflow, ordered_stages
from cslr_pipe.pipeline.demo import demo_workflow_path
from cslr_pipe.features.manifest import read_manifest
from cslr_pipe.pipeline.runner import RunOptions
from cslr_pipe.pipeline.stages import STAGES, Stage, StageOutput, register_stage


def _build_double(config, device):
    return lambda item: StageOutput({"double": 2 * item.inputs()["frame_mean"]})


@pytest.fixture
def double_stage():
    stage = register_stage(Stage("double", _build_double, {}, requires=("probe",)))
    yield stage
    STAGES.pop("double")


def test_load_workflow_resolves_paths_and_refuses_unknown_keys(tmp_path):
    path = tmp_path / "w" / "flow.yaml"
    path.parent.mkdir()
    path.write_text("manifest: ../m.jsonl\nout: cache\nstages:\n  probe:\n")
    workflow = load_workflow(path)
    assert workflow.manifest == tmp_path / "m.jsonl" and workflow.out == tmp_path / "w" / "cache"
    assert workflow.stages == {"probe": {}} and workflow.cluster == {"kind": "local"}
    path.write_text("stages: {probe: {}}\nmanifests: x\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_workflow(path)
    path.write_text("stages: {probe: {}, train: {stage: 'my.module:stage'}}\n")
    with pytest.raises(ValueError, match="a stage may not be called 'train'"):
        load_workflow(path)
    path.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(Exception, match="python/object"):
        load_workflow(path)  # yaml.safe_load refuses to construct objects


def test_stages_are_ordered_by_their_requirements(double_stage):
    workflow = Workflow(stages={"double": {}, "probe": {}})
    assert [stage.name for stage, _ in ordered_stages(workflow)] == ["probe", "double"]
    custom = Workflow(stages={"mine": {"stage": "tests_missing_module:stage"}})
    with pytest.raises(ModuleNotFoundError):
        ordered_stages(custom)


def test_graph_has_one_task_per_stage_and_shard_with_shardwise_dependencies(double_stage, tiny_corpus, tmp_path):
    manifest, rows = tiny_corpus
    options = RunOptions(out=tmp_path / "c", root=manifest.parent, shard_size=3, progress=False)
    tasks = build_graph(Workflow(stages={"double": {}, "probe": {}}), read_manifest(manifest), options)
    assert list(tasks) == [("probe", 0), ("probe", 1), ("probe", 2),
                           ("double", 0), ("double", 1), ("double", 2)]
    graph = dict(tasks[("double", 1)].__dask_graph__())
    assert tasks[("probe", 1)].key in graph and tasks[("probe", 0)].key not in graph
    results = dask.compute(*tasks.values(), scheduler="sync")
    assert sum(r.computed for r in results) == 2 * len(rows)
    cache = open_cache(tmp_path / "c")
    np.testing.assert_array_equal(cache.read("vid-5")["double"], 2 * cache.read("vid-5")["frame_mean"])
    with pytest.raises(ValueError, match="requires probe"):
        build_graph(Workflow(stages={"double": {}}), read_manifest(manifest),
                    RunOptions(out=tmp_path / "empty", root=manifest.parent))


@pytest.mark.slow
def test_run_demo_workflow_on_a_local_cluster_with_two_workers(tiny_corpus, tmp_path):
    manifest, rows = tiny_corpus
    out = tmp_path / "cache"
    args = ["run", str(demo_workflow_path()), "--manifest", str(manifest), "--out", str(out),
            "--workers", "2", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "probe: 7 computed, 0 reused, 0 of 1 shards already complete, 0 failed" in result.output
    assert open_cache(out).ids("probe") == sorted(row["id"] for row in rows)
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "1 of 1 shards already complete" in again.output


def test_demo_fusion_workflow_computes_every_stream_its_fusion_model_reads():
    from cslr_pipe.pipeline.dag import ordered_stages
    from cslr_pipe.training.trainer import TrainConfig

    workflow = load_workflow(demo_workflow_path(fusion=True))
    computed = [stage.name for stage, _ in ordered_stages(workflow)]
    options = dict(workflow.train)
    config = TrainConfig.for_model(options.pop("model"), **options)
    assert config.model == "fusion" and config.model_options["fusion"] == "mlp"
    assert config.streams == ["features.rgb", "features.keypoint", "features.flow"]
    assert set(config.streams) <= set(computed) and computed.index("flow") < computed.index("features.flow")


def test_slurm_template_makes_a_valid_job_script():
    pytest.importorskip("dask_jobqueue")
    from cslr_pipe.pipeline.dag import slurm_cluster

    workflow = load_workflow(demo_workflow_path().parent / "slurm" / "dask-jobqueue.yaml")
    spec = {k: v for k, v in workflow.cluster.items() if k not in ("kind", "jobs")}
    assert workflow.cluster["kind"] == "slurm" and workflow.stages == {"probe": {}}
    with slurm_cluster({**spec, "scheduler_options": {"host": "127.0.0.1"}}) as cluster:
        script = cluster.job_script()
    for line in ("#SBATCH -p gpu", "#SBATCH -A my-project", "#SBATCH --gres=gpu:1",
                 "#SBATCH -t 02:00:00", "source .venv/bin/activate", "--lifetime 55m", "--nworkers 2"):
        assert line in script
