"""The trainer on a tiny feature cache: it learns, resumes exactly, and `cslr-pipe eval` scores it."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cslr_pipe.pipeline.cli import main
from cslr_pipe.training.trainer import Run, TrainConfig, load_checkpoint, train


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
