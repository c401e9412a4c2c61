"""A real one-node Slurm cluster for the tests marked ``slurm`` (tests/slurm/cluster.sh).

The cluster starts once per session, for the first test that is marked ``slurm``, and stops at the
end. Its daemons and packages come from Debian (installed with apt-get when missing); only where
they cannot be installed are the tests skipped, and the session's summary says so loudly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("cluster.sh")
NOT_INSTALLED = 3  # cluster.sh's exit code when the packages cannot be installed
_skipped: list[str] = []


@dataclass
class Job:
    """The end state of one array task, from ``scontrol show job``."""

    task: int
    state: str  # COMPLETED, FAILED, CANCELLED, ...
    exit_code: int


class SlurmCluster:
    """The running cluster: submit batch jobs, wait for them, cancel them, read their states."""

    def __init__(self, folder: Path, conf: Path):
        self.folder, self.conf = folder, conf

    def run(self, *args: str, cwd: Path | None = None, env: dict | None = None) -> str:
        result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def submit(self, command: list[str], cwd: Path, env: dict | None = None) -> str:
        """Run an ``sbatch ...`` command line (with --parsable added); returns the job id."""
        assert command[0] == "sbatch"
        return self.run("sbatch", "--parsable", *command[1:], cwd=cwd, env=env).strip().split(";")[0]

    def active(self, job_id: str) -> list[tuple[int, str]]:
        """(array task, state) of the job's tasks that are pending or running."""
        out = self.run("squeue", "-h", "-r", "-j", job_id, "-o", "%K %T")
        return [(int(task) if task.isdigit() else -1, state) for task, state in
                (line.split() for line in out.splitlines() if line.strip())]

    def wait(self, job_id: str, timeout: float = 120) -> dict[int, Job]:
        """Wait until no task of the job is pending or running; their end states by array index.

        (Polls squeue: `sbatch --wait` sleeps 2 s, then 8 s, then 32 s between its own checks.)
        """
        deadline = time.monotonic() + timeout
        while self.active(job_id):
            if time.monotonic() > deadline:
                self.run("scancel", job_id)
                raise AssertionError(f"job {job_id} still running after {timeout} s: cancelled")
            time.sleep(0.2)
        return self.states(job_id)

    def states(self, job_id: str) -> dict[int, Job]:
        jobs = {}
        for line in self.run("scontrol", "-o", "show", "job", job_id).splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            task = int(fields.get("ArrayTaskId", "0"))
            jobs[task] = Job(task, fields["JobState"], int(fields["ExitCode"].split(":")[0]))
        return jobs


def _start(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the cluster (SLURM_CONF is set for this process and its children); stop it after."""
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        reason = "Slurm packages NOT INSTALLABLE (no apt-get, no slurmctld)"
    elif os.geteuid() != 0:
        reason = "NOT ROOT: the Slurm test cluster starts munged, slurmctld and slurmd as root"
    else:
        reason = None
    if reason:
        _skipped.append(reason)
        pytest.skip(f"{reason} - the tests on a real Slurm cluster did NOT run")
    folder = Path(tempfile.mkdtemp(prefix="cslr-slurm-"))  # under /tmp: munged must be able to enter it
    folder.chmod(0o755)
    started = _start(folder)
    if started.returncode == NOT_INSTALLED:
        shutil.rmtree(folder, ignore_errors=True)
        reason = f"Slurm packages NOT INSTALLABLE: {started.stderr.strip()}"
        _skipped.append(reason)
        pytest.skip(f"{reason} - the tests on a real Slurm cluster did NOT run")
    if started.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True)
        pytest.fail(f"the Slurm test cluster did not start:\n{started.stdout}{started.stderr}", pytrace=False)
    conf = folder / "slurm.conf"
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield SlurmCluster(folder, conf)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _cluster_for_marked_tests(request):
    """Tests marked ``slurm`` get the cluster as ``request.getfixturevalue('slurm_cluster')``."""
    if request.node.get_closest_marker("slurm"):
        request.getfixturevalue("slurm_cluster")


def pytest_terminal_summary(terminalreporter):
    for reason in dict.fromkeys(_skipped):
        terminalreporter.write_sep("!", f"SLURM TESTS SKIPPED: {reason}", red=True, bold=True)
