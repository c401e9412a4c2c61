"""`cslr-pipe submit`: a workflow's stages as Slurm job arrays, chained by job dependencies.

Each stage becomes one ``sbatch --array=0-(N-1)`` job whose task i runs this task's share of the
stage's shards (``cslr-pipe run WORKFLOW --stage S --shard-index i --num-shards N``). Shard k of
every stage holds the same videos, so task i of a stage that requires another stage of the workflow
waits only for task i of that stage (``--dependency=aftercorr:JOB``); a task whose dependency failed
is cancelled (``--kill-on-invalid-dep=yes``). A workflow's ``train`` section becomes one more job that
starts when every task of every stage has succeeded (``--dependency=afterok``). Re-submitting resumes
like every stage command, and the training continues from its last checkpoint.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.store import load_records
from cslr_pipe.pipeline.dag import Workflow, ordered_stages
from cslr_pipe.pipeline.stages import Stage, get_stage

MAX_TASKS = 1000  # Slurm's default MaxArraySize is 1001


@dataclass
class Submission:
    """One submitted job: a stage's array (or the training), its job id and its sbatch command line."""

    stage: str
    job_id: str
    command: list[str]


@dataclass
class PlannedJob:
    """One sbatch command before submission: ``after`` names the jobs it waits for, ``dependency``
    how (aftercorr: task by task; afterok: every task of them)."""

    name: str
    after: list[str]
    dependency: str
    argv: list[str]


def workflow_stage(workflow: Workflow, name: str) -> tuple[Stage, dict]:
    """The stage a workflow runs under ``name`` (its key or its stage's name) and its config."""
    for key, config in workflow.stages.items():
        config = dict(config)
        stage = get_stage(config.pop("stage", key))
        if name in (key, stage.name):
            return stage, config
    raise InputError(f"the workflow has no stage {name!r}; it has {', '.join(workflow.stages)}")


def run_line(workflow_file: Path, stage: str, manifest: Path, out: Path, root: Path | None) -> list[str]:
    """``cslr-pipe run WORKFLOW --stage STAGE ...`` with this Python, so a job needs no activated venv."""
    return [sys.executable, "-m", "cslr_pipe.pipeline.cli", "run", str(workflow_file), "--stage", stage,
            "--manifest", str(manifest), "--out", str(out), *(["--root", str(root)] if root else []), "--quiet"]


def sbatch_commands(workflow: Workflow, workflow_file: Path, manifest: Path, out: Path, root: Path | None,
                    num_tasks: int, logs: Path, sbatch_options: tuple[str, ...] = (),
                    train_sbatch_options: tuple[str, ...] = ()) -> list[PlannedJob]:
    """The jobs in submission order: one array per stage, then (if the workflow has a train section)
    one training job after all of them, with ``train_sbatch_options`` after ``sbatch_options``."""
    if not 1 <= num_tasks <= MAX_TASKS:
        raise InputError(f"--array must be between 1 and {MAX_TASKS}, got {num_tasks}")
    stages = ordered_stages(workflow)
    names = {stage.name for stage, _ in stages}
    jobs = []
    for stage, _ in stages:
        for required in stage.requires:
            if required not in names and not load_records(out / required):
                raise InputError(f"stage {stage.name} requires {required}, which is neither in the workflow "
                                 f"nor in {out}")
        task = shlex.join([*run_line(workflow_file, stage.name, manifest, out, root), "--num-shards", str(num_tasks)])
        argv = ["sbatch", "--parsable", f"--array=0-{num_tasks - 1}", f"--job-name=cslr-pipe-{stage.name}",
                f"--output={logs / f'cslr-pipe-{stage.name}-%A_%a.out'}", "--kill-on-invalid-dep=yes",
                *sbatch_options, f'--wrap=exec {task} --shard-index "$SLURM_ARRAY_TASK_ID"']
        jobs.append(PlannedJob(stage.name, [s for s in stage.requires if s in names], "aftercorr", argv))
    if workflow.train:
        task = shlex.join(run_line(workflow_file, "train", manifest, out, root))
        argv = ["sbatch", "--parsable", "--job-name=cslr-pipe-train", f"--output={logs / 'cslr-pipe-train-%j.out'}",
                "--kill-on-invalid-dep=yes",
                *sbatch_options, *train_sbatch_options, f"--wrap=exec {task}"]
        jobs.append(PlannedJob("train", [job.name for job in jobs], "afterok", argv))
    return jobs


def submit_workflow(workflow: Workflow, workflow_file: Path, manifest: Path, out: Path, root: Path | None,
                    num_tasks: int, logs: Path, sbatch_options: tuple[str, ...] = (),
                    train_sbatch_options: tuple[str, ...] = ()) -> list[Submission]:
    """Submit every job of :func:`sbatch_commands`, each with its dependencies on the earlier ones."""
    if shutil.which("sbatch") is None:
        raise InputError("sbatch not found: run `cslr-pipe submit` where Slurm's commands are (a login node)")
    planned = sbatch_commands(workflow, workflow_file, manifest, out, root, num_tasks, logs, sbatch_options,
                              train_sbatch_options)
    logs.mkdir(parents=True, exist_ok=True)  # Slurm opens --output before the job runs
    ids: dict[str, str] = {}
    submissions = []
    for job in planned:
        argv = list(job.argv)
        if job.after:
            argv.insert(2, f"--dependency={job.dependency}:" + ":".join(ids[name] for name in job.after))
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            submitted = ", ".join(f"{s.stage} {s.job_id}" for s in submissions) or "none"
            raise InputError(f"sbatch refused {job.name}: {' '.join(result.stderr.split())} "
                             f"(already submitted: {submitted})")
        ids[job.name] = result.stdout.strip().split(";")[0]
        submissions.append(Submission(job.name, ids[job.name], argv))
    return submissions
