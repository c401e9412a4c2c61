"""The demo learns: both demos, run as a user runs them, stay under a WER bound that a regression (a
broken stage, a worse default) would cross, well below what guessing scores. Minutes: the fusion demo
reuses the default demo's corpus and cached stages and adds only the flow features."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from cslr_pipe.pipeline.cli import demo as demo_command, main
from cslr_pipe.pipeline.demo import DEMO_VIDEOS, run_demo, summary_lines

#: the measured WERs are in docs/benchmarks.md ("The demo"); a bound leaves room for a few more errors
BOUND = 0.15


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")


def test_default_demo_recognises_the_test_videos(demo_dir):
    result = CliRunner().invoke(main, ["demo", "--out", str(demo_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) < 40, result.output
    summary = lines[lines.index(next(line for line in lines if line.startswith("== cslr-pipe demo finished"))):]
    assert [line.split()[0] for line in summary[1:]] == ["stages", "model", "test", "guessing", "pictures", "next"]
    wer, errors, words = re.search(r"test WER  ([\d.]+)% = (\d+) errors? in (\d+) words", result.output).groups()
    chance, majority = map(float, re.search(r"random sentences ([\d.]+)%, .* sentence ([\d.]+)%", result.output).groups())
    assert int(words) >= 50  # one error is at most 2 points
    assert float(wer) <= 100 * BOUND and float(wer) < min(chance, majority) / 3, result.output
    assert len(list((demo_dir / "pictures").glob("*.png"))) == 2
    # repeated glosses ("MORE MORE") are recognised as two: most such test sentences decode exactly
    decoded = [json.loads(line) for line in (demo_dir / "cache" / "runs" / "ctc" / "test-best.hyp.jsonl").open()]
    repeats = [d for d in decoded if any(a == b for a, b in zip(d["reference"], d["reference"][1:]))]
    assert len(repeats) >= 5 and sum(d["hypothesis"] == d["reference"] for d in repeats) >= len(repeats) / 2


def test_fusion_demo_recognises_the_test_videos(demo_dir):
    lines = []
    result = run_demo(demo_dir, echo=lines.append, fusion="mlp", progress=False)
    test = result.training.test
    assert test.reference_words >= 50
    assert test.wer <= BOUND and test.wer < min(result.chance_wer, result.majority_wer) / 3, \
        "\n".join(lines + summary_lines(result))
    assert not any(r.failed for r in result.results)


def test_the_command_default_is_the_designed_corpus():
    (videos,) = [p for p in demo_command.params if p.name == "videos"]
    assert videos.default == DEMO_VIDEOS
