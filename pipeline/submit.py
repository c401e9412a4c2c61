"""`cslr-pipe submit`: a workflow's stages as Slurm job arrays, chained by job dependencies.

Each stage becomes one ``sbatch --array=0-(N-1)`` job whose task i runs this task's share of the
stage's shards (``cslr-pipe run WORKFLOW --stage S --shard-index i --num-shards N``). Shard k of
every stage holds the same videos, so task i of a stage that requires another stage of the workflow
waits only for task i of that stage (``--dependency=aftercorr:JOB``); a task whose dependency failed
is cancelled (``--kill-on-invalid-dep=yes``). Re-submitting resumes like every stage command.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cslr_pipe.features.store import load_records
from cslr_pipe.pipeline.dag import Workflow, ordered_stages
from cslr_pipe.pipeline.stages import Stage, get_stage

MAX_TASKS = 1000  # Slurm's default MaxArraySize is 1001


@dataclass
class Submission:
    """One submitted stage: its array job's id and the sbatch command line that made it."""

    stage: str
    job_id: str
    command: list[str]


def workflow_stage(workflow: Workflow, name: str) -> tuple[Stage, dict]:
    """The stage a workflow runs under ``name`` (its key or its stage's name) and its config."""
    for key, config in workflow.stages.items():
        config = dict(config)
        stage = get_stage(config.pop("stage", key))
        if name in (key, stage.name):
            return stage, config
    raise ValueError(f"the workflow has no stage {name!r}; it has {', '.join(workflow.stages)}")


def task_command(workflow_file: Path, stage: str, manifest: Path, out: Path, root: Path | None,
                 num_tasks: int) -> str:
    """The shell line one array task runs (this Python, so the job needs no activated venv)."""
    words = [sys.executable, "-m", "cslr_pipe.pipeline.cli", "run", str(workflow_file), "--stage", stage,
             "--manifest", str(manifest), "--out", str(out), *(["--root", str(root)] if root else []),
             "--num-shards", str(num_tasks), "--quiet"]
    return f"exec {shlex.join(words)} --shard-index \"$SLURM_ARRAY_TASK_ID\""


def sbatch_commands(workflow: Workflow, workflow_file: Path, manifest: Path, out: Path, root: Path | None,
                    num_tasks: int, logs: Path, sbatch_options: tuple[str, ...] = ()
                    ) -> list[tuple[str, list[str], list[str]]]:
    """(stage, the stages of the workflow it waits for, sbatch argv without the dependency) in
    submission order."""
    if not 1 <= num_tasks <= MAX_TASKS:
        raise ValueError(f"--array must be between 1 and {MAX_TASKS}, got {num_tasks}")
    stages = ordered_stages(workflow)
    names = {stage.name for stage, _ in stages}
    commands = []
    for stage, _ in stages:
        for required in stage.requires:
            if required not in names and not load_records(out / required):
                raise ValueError(f"stage {stage.name} requires {required}, which is neither in the workflow "
                                 f"nor in {out}")
        after = [required for required in stage.requires if required in names]
        argv = ["sbatch", "--parsable", f"--array=0-{num_tasks - 1}", f"--job-name=cslr-pipe-{stage.name}",
                f"--output={logs / f'cslr-pipe-{stage.name}-%A_%a.out'}", "--kill-on-invalid-dep=yes",
                *sbatch_options,
                f"--wrap={task_command(workflow_file, stage.name, manifest, out, root, num_tasks)}"]
        commands.append((stage.name, after, argv))
    return commands


def submit_workflow(workflow: Workflow, workflow_file: Path, manifest: Path, out: Path, root: Path | None,
                    num_tasks: int, logs: Path, sbatch_options: tuple[str, ...] = ()) -> list[Submission]:
    """Submit every stage; a stage that requires another waits for it task by task."""
    if shutil.which("sbatch") is None:
        raise ValueError("sbatch not found: run `cslr-pipe submit` where Slurm's commands are (a login node)")
    commands = sbatch_commands(workflow, workflow_file, manifest, out, root, num_tasks, logs, sbatch_options)
    logs.mkdir(parents=True, exist_ok=True)  # Slurm opens --output before the job runs
    jobs: dict[str, str] = {}
    submissions = []
    for stage, after, argv in commands:
        if after:
            argv.insert(2, "--dependency=aftercorr:" + ":".join(jobs[name] for name in after))
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            submitted = ", ".join(f"{s.stage} {s.job_id}" for s in submissions) or "none"
            raise ValueError(f"sbatch refused stage {stage}: {' '.join(result.stderr.split())} "
                               f"(already submitted: {submitted})")
        jobs[stage] = result.stdout.strip().split(";")[0]
        submissions.append(Submission(stage, jobs[stage], argv))
    return submissions
