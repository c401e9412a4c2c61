"""First contact: every input a new user gets wrong is one `Error:` line and exit code 2, never a
traceback; hostile files are refused before anything in them runs; help is complete and fast."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import shutil
import subprocess
import sys

import click
import pytest
import torch
from click.testing import CliRunner

from cslr_pipe.pipeline.cli import main
from cslr_pipe.training.trainer import Run, TrainConfig, train


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result, *expected: str) -> str:
    """The single output line of a failed command; it must contain every ``expected`` text."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


class NotATensor:
    """A custom class: torch.load(weights_only=True) refuses to rebuild it."""


class Touch:
    """Unpickling this would create ``path``: proof that something in the file ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# ---------------------------------------------------------------------------------------------
# Checkpoints


def write_truncated(path):
    torch.save({"config": {}, "model": {"weight": torch.zeros(2000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CHECKPOINTS = {
    "garbage": (lambda path: path.write_bytes(random.Random(0).randbytes(300)), "not a torch checkpoint"),
    "empty": (lambda path: path.write_bytes(b""), "empty file"),
    "truncated": (write_truncated, "truncated or corrupt"),
    "foreign": (lambda path: torch.save({"a": 1}, path), "not a cslr-pipe checkpoint"),
    "custom-class": (lambda path: torch.save({"model": NotATensor()}, path), "refused as unsafe"),
    "function": (lambda path: torch.save({"model": os.getcwd}, path), "refused as unsafe"),
}


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_eval_names_a_bad_checkpoint_and_why(kind, feature_corpus, tmp_path):
    write, reason = CHECKPOINTS[kind]
    checkpoint = tmp_path / f"{kind}.pt"
    write(checkpoint)
    result = invoke("eval", "--checkpoint", checkpoint, "--manifest", feature_corpus / "manifest.jsonl",
                    "--cache", feature_corpus / "cache", "--device", "cpu")
    line = error_line(result, f"{checkpoint}: ", reason)
    assert "weights_only=False" not in line


def test_a_checkpoint_that_would_run_code_is_refused_before_it_runs(feature_corpus, tmp_path):
    marker, checkpoint = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": Touch(marker)}, checkpoint)
    result = invoke("eval", "--checkpoint", checkpoint, "--manifest", feature_corpus / "manifest.jsonl",
                    "--cache", feature_corpus / "cache", "--device", "cpu")
    line = error_line(result, str(checkpoint), "refused as unsafe", "system", "nothing in the file was run")
    assert "weights_only=False" not in line and not marker.exists()


def test_resume_without_last_checkpoint_is_an_error(feature_corpus, tmp_path):
    result = invoke("train", "ctc", "--manifest", feature_corpus / "manifest.jsonl",
                    "--cache", feature_corpus / "cache", "--out", tmp_path / "run", "--resume", "--device", "cpu")
    error_line(result, str(tmp_path / "run" / "last.pt"), "no checkpoint to resume from")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Hostile and malformed files


def test_slrt_pickle_that_calls_a_function_is_refused(feature_corpus, tmp_path):
    marker, source = tmp_path / "pwned", tmp_path / "evil.pkl"
    with gzip.open(source, "wb") as handle:
        pickle.dump([{"name": "train/s00", "sign": Touch(marker)}], handle)
    result = invoke("import-features", "--manifest", feature_corpus / "manifest.jsonl", "--from", source,
                    "--out", tmp_path / "cache", "--stream", "rgb")
    error_line(result, f"{source}: ", "refused to load", "system", "nothing in the file was run")
    assert not marker.exists()


def test_workflow_with_a_python_tag_is_refused(tmp_path):
    marker, workflow = tmp_path / "pwned", tmp_path / "evil.yaml"
    workflow.write_text(f'stages:\n  probe: !!python/object/apply:os.system ["touch {marker}"]\n')
    error_line(invoke("run", workflow), f"{workflow}: line 2", "!!python/object/apply:os.system refused",
               "safe_load")
    assert not marker.exists()


def test_malformed_workflow_is_one_line(tmp_path):
    workflow = tmp_path / "broken.yaml"
    workflow.write_text("stages: [probe\n  out: x\n")
    error_line(invoke("run", workflow), f"{workflow}: line 2", "not valid YAML")


# ---------------------------------------------------------------------------------------------
# Empty manifests


@pytest.fixture
def empty_manifest(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    (tmp_path / "cache").mkdir()
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "workflow.yaml").write_text(f"manifest: {path.name}\nout: out\nstages:\n  probe: {{}}\n")
    return path


EMPTY_MANIFEST_COMMANDS = {
    "train": ["train", "ctc", "--manifest", "{m}", "--cache", "{d}/cache", "--out", "{d}/run"],
    "eval": ["eval", "--checkpoint", "{d}/model.pt", "--manifest", "{m}", "--cache", "{d}/cache"],
    "probe": ["probe", "--manifest", "{m}", "--out", "{d}/out"],
    "extract-keypoints": ["extract-keypoints", "--manifest", "{m}", "--out", "{d}/out"],
    "import-features": ["import-features", "--manifest", "{m}", "--from", "{d}/cache", "--out", "{d}/out",
                        "--stream", "rgb"],
    "run": ["run", "{d}/workflow.yaml"],
}


@pytest.mark.parametrize("command", EMPTY_MANIFEST_COMMANDS)
def test_empty_manifest_is_an_error(command, empty_manifest):
    args = [a.format(m=empty_manifest, d=empty_manifest.parent) for a in EMPTY_MANIFEST_COMMANDS[command]]
    error_line(invoke(*args), f"{empty_manifest}: empty manifest")
    assert not (empty_manifest.parent / "out").exists()


def test_train_and_eval_need_rows_of_their_split(feature_corpus, tmp_path):
    manifest = tmp_path / "dev-only.jsonl"
    manifest.write_text("".join(line + "\n" for line in (feature_corpus / "manifest.jsonl").read_text().splitlines()
                                if '"dev"' in line))
    (tmp_path / "dev-only.vocab.json").write_text((feature_corpus / "manifest.vocab.json").read_text())
    (tmp_path / "model.pt").write_bytes(b"")
    common = ["--manifest", manifest, "--cache", feature_corpus / "cache", "--device", "cpu"]
    error_line(invoke("train", "ctc", "--out", tmp_path / "run", *common), f"{manifest}: no rows of split 'train'")
    error_line(invoke("eval", "--checkpoint", tmp_path / "model.pt", *common), f"{manifest}: no rows of split 'test'")


# ---------------------------------------------------------------------------------------------
# Help


def all_commands(command: click.Command, path: str = "cslr-pipe"):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from all_commands(sub, f"{path} {name}")


def test_every_option_of_every_command_has_help():
    missing, percent = [], []
    for path, command in all_commands(main):
        if "%%" in (command.help or ""):
            percent.append(path)
        for param in command.params:
            if isinstance(param, click.Option):
                if not (param.help or "").strip():
                    missing.append(f"{path} {param.opts[0]}")
                if "%%" in (param.help or ""):
                    percent.append(f"{path} {param.opts[0]}")
    assert not missing, f"options without help: {missing}"
    assert not percent, f"help with a literal %%: {percent}"


def test_cli_and_help_do_not_import_torch():
    script = ("import sys\n"
              "from click.testing import CliRunner\n"
              "from cslr_pipe.pipeline.cli import main\n"
              "assert 'torch' not in sys.modules, 'import'\n"
              "for name in [None, *main.commands]:\n"
              "    result = CliRunner().invoke(main, [name, '--help'] if name else ['--help'])\n"
              "    assert result.exit_code == 0, result.output\n"
              "    assert 'torch' not in sys.modules, name\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_training_without_dev_videos_is_an_error(feature_corpus, tmp_path):
    """Without dev videos every epoch would score 0 % and best.pt would be the first epoch's model."""
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(line + "\n" for line in (feature_corpus / "manifest.jsonl").read_text().splitlines()
                                if '"split": "dev"' not in line))
    shutil.copy(feature_corpus / "manifest.vocab.json", tmp_path / "manifest.vocab.json")
    result = invoke("train", "ctc", "--manifest", manifest, "--cache", feature_corpus / "cache",
                    "--out", tmp_path / "run", "--device", "cpu", "--epochs", "1")
    error_line(result, str(manifest), "no rows of split 'dev'")
    # the trainer itself refuses too (a workflow's train section does not pass through the command)
    vocabulary = json.loads((tmp_path / "manifest.vocab.json").read_text())
    with pytest.raises(ValueError, match="no dev videos with cached features.rgb"):
        train(TrainConfig(streams=["features.rgb"], epochs=1, device="cpu"),
              Run(manifest, vocabulary, feature_corpus / "cache", tmp_path / "run"), log=lambda _: None)


# ---------------------------------------------------------------------------------------------
# A bug is not the user's mistake


def test_a_programming_error_inside_a_command_keeps_its_traceback(feature_corpus, tmp_path, monkeypatch):
    """torch and numpy raise ValueError for defects (a shape mismatch): that must not read as bad input."""
    import cslr_pipe.training.evaluation as evaluation

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(evaluation, "evaluate_checkpoint", broken)
    checkpoint = tmp_path / "any.pt"
    checkpoint.write_bytes(b"x")
    result = invoke("eval", "--checkpoint", checkpoint, "--manifest", feature_corpus / "manifest.jsonl",
                    "--cache", feature_corpus / "cache", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "Traceback (most recent call last)" in result.output and "in broken" in result.output
    assert "could not be broadcast" in result.output
    assert "bug in cslr-pipe" in result.output.strip().splitlines()[-1]


def test_verbose_shows_the_traceback_of_an_input_error_and_keeps_its_line(tmp_path):
    hyp, ref = tmp_path / "hyp.ctm", tmp_path / "ref.txt"
    hyp.write_text("s01 1 0.0\n")  # a CTM line cut short
    ref.write_text("s01 A B\n")
    args = ["score", "--hyp", hyp, "--ref", ref, "--dataset", "csl-daily"]
    quiet = invoke(*args)
    error_line(quiet, f"{hyp}:1", "CTM line")
    old = os.environ.get("CSLR_PIPE_VERBOSE")
    try:
        verbose = invoke("--verbose", *args)
    finally:
        os.environ.pop("CSLR_PIPE_VERBOSE") if old is None else os.environ.__setitem__("CSLR_PIPE_VERBOSE", old)
    assert verbose.exit_code == 2
    assert "Traceback (most recent call last)" in verbose.output and "read_sentences" in verbose.output
    assert verbose.output.strip().splitlines()[-1] == quiet.output.strip()
