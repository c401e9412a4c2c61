"""`cslr-pipe score`: other systems' CTM / text / JSON Lines hypotheses against STM or manifest references."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cslr_pipe.pipeline.cli import main
from cslr_pipe.training.metrics import write_ctm, write_stm
from cslr_pipe.training.phoenix import score_phoenix

IDS = ["v1", "v2", "v3"]
REFS = ["__ON__ REGION WIE-AUSSEHEN REGEN __OFF__", "S+H IX", "MOEGLICH MOEGLICH SONNE"]
HYPS = ["__ON__ loc-REGION WIE AUSSEHEN REGEN __OFF__", "IX S H", ""]


def run(*args):
    return CliRunner().invoke(main, ["score", *map(str, args)])


def test_ctm_against_stm_equals_the_scorer_and_writes_a_report(tmp_path):
    write_ctm(tmp_path / "hyp.ctm", IDS, HYPS)  # [EMPTY] for v3, as the PHOENIX recipes write it
    write_stm(tmp_path / "ref.stm", IDS, REFS, speakers="signer05")
    result = run("--hyp", tmp_path / "hyp.ctm", "--ref", tmp_path / "ref.stm", "--dataset", "phoenix2014",
                 "--report", tmp_path / "report.txt")
    assert result.exit_code == 0, result.output
    expected = score_phoenix(REFS, HYPS, "phoenix2014")
    assert result.output.splitlines()[0] == f"{expected.summary()} [phoenix2014, scorer sclite]"
    report = (tmp_path / "report.txt").read_text()
    assert "id: (v3)" in report and "HYP:  ***" in report and "[EMPTY]" in report
    assert report.count("Scores: (#C #S #D #I)") == 3
    slt = run("--hyp", tmp_path / "hyp.ctm", "--ref", tmp_path / "ref.stm", "--dataset", "phoenix2014",
              "--scorer", "slt")
    assert f"{score_phoenix(REFS, HYPS, 'phoenix2014', scorer='slt').summary()} [phoenix2014, scorer slt]" in slt.output


def test_text_and_manifest_files_and_missing_or_unknown_ids(tmp_path):
    (tmp_path / "hyp.txt").write_text("v1 A B\nv2 C\n")
    (tmp_path / "ref.jsonl").write_text("".join(json.dumps({"id": i, "glosses": g}) + "\n"
                                                for i, g in zip(IDS, (["A", "B"], ["C", "D"], ["E"]))))
    result = run("--hyp", tmp_path / "hyp.txt", "--ref", tmp_path / "ref.jsonl", "--dataset", "csl-daily")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("WER 40.00% ") and "[csl-daily, plain WER]" in result.output  # D + D of 5
    assert "1 references have no hypothesis" in result.output
    (tmp_path / "bad.txt").write_text("v9 A\n")
    result = run("--hyp", tmp_path / "bad.txt", "--ref", tmp_path / "ref.jsonl", "--dataset", "csl-daily")
    assert result.exit_code == 2 and "no reference" in result.output and "v9" in result.output
    result = run("--hyp", tmp_path / "hyp.txt", "--ref", tmp_path / "ref.jsonl", "--dataset", "phoenix2014t",
                 "--scorer", "vac-python")
    assert result.exit_code == 2 and "does not score phoenix2014t" in result.output
