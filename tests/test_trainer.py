"""The trainer on a tiny feature cache: it learns, resumes exactly, and `cslr-pipe eval` scores it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import yaml
from click.testing import CliRunner

from cslr_pipe.features.errors import InputError
from cslr_pipe.pipeline.cli import main
from cslr_pipe.training.models import MODELS
from cslr_pipe.training.trainer import (MODEL_DEFAULTS, Run, TrainConfig, build_model, load_checkpoint, register_model,
                                        save_checkpoint, train)


def run_for(root, out):
    vocabulary = json.loads((root / "manifest.vocab.json").read_text())
    return Run(root / "manifest.jsonl", vocabulary, root / "cache", out)


def config(epochs):
    return TrainConfig(model="ctc", streams=["features.rgb"], epochs=epochs, batch_size=4, lr=3e-3,
                       model_options={"hidden": 64, "dropout": 0.0})


@pytest.mark.slow
def test_ctc_learns_the_glosses(feature_corpus, tmp_path):
    summary = train(config(25), run_for(feature_corpus, tmp_path / "run"), log=lambda _: None)
    history = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] < 0.3 * history[0]["train_loss"]
    assert summary["best_dev_wer"] < 0.2
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"),
                                       "--manifest", str(feature_corpus / "manifest.jsonl"),
                                       "--cache", str(feature_corpus / "cache"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("test: WER ") and "[plain WER]" in result.output.splitlines()[0]
    common = ["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--manifest",
              str(feature_corpus / "manifest.jsonl"), "--cache", str(feature_corpus / "cache"), "--device", "cpu",
              "--out", str(tmp_path / "scored")]
    for extra, name in ((["--phoenix", "phoenix2014"], "[phoenix2014, scorer sclite]"),
                        (["--phoenix", "phoenix2014", "--scorer", "vac-python"], "[phoenix2014, scorer vac-python]"),
                        (["--phoenix", "phoenix2014t"], "[phoenix2014t, scorer slt]")):
        result = CliRunner().invoke(main, common + extra)
        assert result.exit_code == 0 and name in result.output.splitlines()[0], result.output
    result = CliRunner().invoke(main, common + ["--scorer", "sclite"])
    assert result.exit_code == 2 and "needs --phoenix" in result.output
    ctm = (tmp_path / "run" / "test-best.ctm").read_text().splitlines()
    stm = (tmp_path / "run" / "test-best.stm").read_text().splitlines()
    assert len(stm) == 6 and all(line.startswith("s4") for line in stm) and ctm


def test_resume_gives_the_same_model_as_an_uninterrupted_run(feature_corpus, tmp_path):
    train(config(4), run_for(feature_corpus, tmp_path / "whole"), log=lambda _: None)
    train(config(4), run_for(feature_corpus, tmp_path / "parts"), log=lambda _: None, stop_after=2)
    train(config(4), run_for(feature_corpus, tmp_path / "parts"), resume=True, log=lambda _: None)
    whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    parts = load_checkpoint(tmp_path / "parts" / "last.pt")
    assert parts["epoch"] == whole["epoch"] == 3
    for name, tensor in whole["model"].items():
        torch.testing.assert_close(parts["model"][name], tensor, rtol=0, atol=0, msg=name)


def test_cli_fusion_flag(feature_corpus, tmp_path):
    common = ["--manifest", str(feature_corpus / "manifest.jsonl"), "--cache", str(feature_corpus / "cache"),
              "--epochs", "1", "--device", "cpu", "--model-option", "hidden=16"]
    result = CliRunner().invoke(main, ["train", "ctc", "--fusion", "conv", "--out", str(tmp_path / "a"), *common])
    assert result.exit_code == 2 and "--fusion applies to the fusion model" in result.output
    result = CliRunner().invoke(main, ["train", "fusion", "--fusion", "conv", "--out", str(tmp_path / "b"), *common])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "b" / "best.pt")["config"]["model_options"]["fusion"] == "conv"


def test_resume_refuses_other_settings(feature_corpus, tmp_path):
    run = run_for(feature_corpus, tmp_path / "run")
    train(config(4), run, log=lambda _: None, stop_after=1)
    with pytest.raises(ValueError, match=r"last.pt: the run began with other settings or data \(epochs 4 -> 5\)"):
        train(config(5), run, resume=True, log=lambda _: None)
    lines = []  # where it runs is not a setting of the result
    train(replace(config(4), device="cpu", num_workers=1), run, resume=True, log=lines.append, stop_after=1)
    assert lines[1] == f"resumed from {run.out / 'last.pt'} at epoch 1"


def test_run_stage_train_continues_its_last_checkpoint(feature_corpus, tmp_path):
    """`run WORKFLOW --stage train` (a submitted workflow's training job) resumes when submitted again."""
    cache = tmp_path / "cache"
    shutil.copytree(feature_corpus / "cache", cache)
    workflow = {"device": "cpu", "stages": {"probe": {}},
                "train": {"model": "ctc", "streams": ["features.rgb"], "epochs": 2, "batch_size": 4, "lr": 3e-3,
                          "model_options": {"hidden": 16}}}
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(workflow))
    command = ["run", str(path), "--stage", "train", "--manifest", str(feature_corpus / "manifest.jsonl"),
               "--out", str(cache), "--quiet"]
    first = CliRunner().invoke(main, command)
    assert first.exit_code == 0, first.output
    assert "epoch 1:" in first.output and "\ntest: WER " in first.output
    again = CliRunner().invoke(main, command)  # complete: nothing to train, the best model is scored again
    assert again.exit_code == 0, again.output
    assert "all 2 epochs are done" in again.output and "epoch 1:" not in again.output
    assert again.output.splitlines()[-1] == first.output.splitlines()[-1]
    workflow["train"]["epochs"] = 3
    path.write_text(yaml.safe_dump(workflow))
    changed = CliRunner().invoke(main, command)
    assert changed.exit_code == 2 and "other settings or data (epochs 2 -> 3)" in changed.output
    assert f"cslr-pipe run {path} --stage train --force` trains anew" in changed.output
    forced = CliRunner().invoke(main, [*command, "--force"])
    assert forced.exit_code == 0 and "epoch 2:" in forced.output and "resumed" not in forced.output
    assert [json.loads(line)["epoch"] for line in (cache / "runs" / "ctc" / "log.jsonl").read_text().splitlines()] \
        == [0, 1, 2]


def test_a_checkpoint_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "last.pt"
    state = {"config": {}, "vocabulary": ["<blank>", "A"], "input_dims": {"features.rgb": 4}}
    save_checkpoint(path, **state, model={"w": torch.ones(3)})
    with pytest.raises(Exception):  # a lambda cannot be pickled: the write fails half way
        save_checkpoint(path, **state, model={"w": torch.zeros(3), "bad": lambda: 0})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    save_checkpoint(path, **state, model={"w": torch.zeros(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(3))


def test_building_a_model_imports_its_module_alone():
    """The registry names the built-in models by import path: importing the trainer imports no model, and
    building ctc imports ctc's module alone, none of the other models."""
    code = ("import sys\n"
            "from cslr_pipe.training.trainer import TrainConfig, build_model\n"
            "before = sorted(m for m in sys.modules if m.startswith('cslr_pipe.training.models.'))\n"
            "build_model(TrainConfig(model='ctc', streams=['s'], model_options={'hidden': 8}), {'s': 4}, 3)\n"
            "after = sorted(m for m in sys.modules if m.startswith('cslr_pipe.training.models.'))\n"
            "print(before, after)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["[]", "['cslr_pipe.training.models.ctc']"]


def test_a_model_registered_at_run_time_trains_by_name():
    class Constant(torch.nn.Module):
        def __init__(self, config, input_dims, num_classes):
            super().__init__()
            self.config, self.bias = config, torch.nn.Parameter(torch.zeros(num_classes))

    register_model("constant", Constant, defaults={"epochs": 3, "model_options": {"width": 2}})
    try:
        assert "constant" in MODELS.names() and "ctc" in MODELS.names()
        config = TrainConfig.for_model("constant", streams=["s"], model_options={"depth": 1})
        assert config.epochs == 3 and config.model_options == {"width": 2, "depth": 1}
        model = build_model(config, {"s": 4}, 5)
        assert isinstance(model, Constant) and model.bias.shape == (5,)
    finally:
        MODELS.unregister("constant")
        MODEL_DEFAULTS.pop("constant")
    with pytest.raises(InputError, match="unknown model 'constant'; known: acdr, ctc, diffsign, fusion, twostream"):
        TrainConfig.for_model("constant")


def test_unknown_training_and_model_options_are_input_errors():
    with pytest.raises(InputError, match="unknown training option.*: epoch; known: .*epochs"):
        TrainConfig.from_dict({"model": "ctc", "epoch": 3})
    with pytest.raises(InputError, match="optimizer must be one of"):
        TrainConfig(optimizer="sgd")
    config = TrainConfig(model="ctc", streams=["s"], model_options={"hiden": 8})
    with pytest.raises(InputError, match="unknown ctc option.*: hiden; known: dropout, hidden, lstm_layers$"):
        build_model(config, {"s": 4}, 3)  # input_dim and num_classes come from the data, not options
