"""Which project files one video's path runs through: manifest row -> keypoints -> flow -> features ->
`train ctc` -> `eval`, every command in one process, every function call recorded.

    python bench/follow_one_video.py            # the whole path, then the training half alone

For each part it prints the project files whose functions ran (with their lines), and the project
files that were imported but never ran. docs/follow-one-video.md walks through the same files.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from click.testing import CliRunner

import cslr_pipe
from cslr_pipe.pipeline.cli import main as cli

PACKAGE = Path(cslr_pipe.__path__[0]).resolve().parent  # the repository (editable install) or site-packages


@functools.lru_cache(maxsize=None)
def project_file(filename: str) -> str | None:
    """``pipeline/cli.py`` for a file of the package, None for anything else."""
    path = Path(filename).resolve()
    for folder in ("pipeline", "features", "training", "workflows"):
        for top in [Path(p).resolve() for p in getattr(sys.modules.get(f"cslr_pipe.{folder}"), "__path__", [])]:
            if top in path.parents:
                return f"{folder}/{path.relative_to(top).as_posix()}"
    return None


class Recorder:
    """Project files whose functions are called while it is on (all threads)."""

    def __init__(self):
        self.ran: set[str] = set()
        self.imported_before: set[str] = set()

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_code.co_flags & inspect.CO_OPTIMIZED:  # functions, not module/class bodies
            name = project_file(frame.f_code.co_filename)
            if name:
                self.ran.add(name)

    def __enter__(self):
        self.imported_before = imported_files()
        sys.setprofile(self)
        threading.setprofile(self)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)


def imported_files() -> set[str]:
    return {name for module in list(sys.modules.values())
            if (name := project_file(getattr(module, "__file__", None) or "/")) is not None}


def invoke(*args: str) -> None:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(f"cslr-pipe {' '.join(args)} exited {result.exit_code}:\n{result.output}")


def lines(name: str) -> int:
    folder, _, rest = name.partition("/")
    top = Path(sys.modules[f"cslr_pipe.{folder}"].__path__[0])
    return sum(1 for _ in (top / rest).open(encoding="utf-8"))


def summary(title: str, ran: set[str], imported: set[str]) -> None:
    unused = sorted(imported - ran)
    print(f"== {title}: {len(ran)} files run, {sum(map(lines, ran))} lines; "
          f"{len(unused)} imported but never run ==")
    for name in sorted(ran):
        print(f"  ran       {name} ({lines(name)})")
    for name in unused:
        print(f"  unused    {name}")


def training_half(manifest: str, cache: str, run: str) -> None:
    """`train ctc` then a plain-WER `eval`, as a fresh process that has imported nothing else runs them."""
    with Recorder() as half:
        invoke("train", "ctc", "--manifest", manifest, "--cache", cache, "--streams", "rgb", "--out", run,
               "--epochs", "1")
        invoke("eval", "--checkpoint", f"{run}/best.pt", "--manifest", manifest, "--cache", cache)
    summary("train ctc + eval (a fresh process)", half.ran, imported_files())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training-half", nargs=3, metavar=("MANIFEST", "CACHE", "RUN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.training_half:
        return training_half(*args.training_half)
    from cslr_pipe.pipeline.synthetic import CorpusSpec, make_corpus

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = make_corpus(work / "corpus", CorpusSpec(num_videos=12, dev_fraction=1 / 6, test_fraction=2 / 3,
                                                           seed=0))
        cache, run = str(work / "cache"), str(work / "run")
        common = ["--manifest", str(manifest), "--out", cache, "--quiet"]
        with Recorder() as whole:
            invoke("extract-keypoints", *common)
            invoke("extract-flow", *common, "--size", "64", "64")
            invoke("cache-features", *common, "--stream", "rgb", "--weights", "none",
                   "--backbone-option", "resize=64", "--backbone-option", "crop=56")
            invoke("train", "ctc", "--manifest", str(manifest), "--cache", cache, "--streams", "rgb",
                   "--out", f"{run}-whole", "--epochs", "1")
            invoke("eval", "--checkpoint", f"{run}-whole/best.pt", "--manifest", str(manifest), "--cache", cache)
        summary("manifest row to WER", whole.ran, imported_files())
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--training-half", str(manifest), cache, run], check=True)


if __name__ == "__main__":
    main()
