"""bench/gpu_suite.py: the dry run (CPU, tiny sizes) runs every row's code path and reports it."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_suite.py"


def load_suite():
    spec = importlib.util.spec_from_file_location("bench_gpu_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    return module


def check_report(out: Path, suite) -> dict:
    report = json.loads((out / "gpu_suite.json").read_text())
    text = (out / "gpu_suite.md").read_text()
    assert text == suite.markdown(report)  # the table is the JSON, rendered
    assert [row["key"] for row in report["rows"]] == [row.key for row in suite.ROWS]
    lines = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ")}
    for row in report["rows"]:
        line = lines[row["key"]]
        if row["status"] == "ok":
            assert math.isfinite(row["value"]) and row["value"] > 0, row
            assert math.isfinite(row["baseline"]) and row["baseline"] > 0, row
            assert row["ratio"] == pytest.approx(row["value"] / row["baseline"])
            assert f"{row['ratio']:.2f}x" in line and suite.fmt(row["value"]) in line
        else:
            assert row["status"] in ("skipped", "failed") and row["reason"].strip(), row
            assert f"{row['status']}: {row['reason']}" in line
    return report


@pytest.mark.slow
def test_dry_run_every_row(tmp_path):
    out = tmp_path / "suite"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = check_report(out, load_suite())
    assert report["dry_run"] and report["device"] == "cpu"
    failed = {row["key"]: row["reason"] for row in report["rows"] if row["status"] != "ok"}
    assert not failed, failed  # on the CPU every row's code path runs
    e2e = report["rows"][-1]["details"]
    assert set(e2e["phoenix_2014_t_hours"]) == {"keypoints", "flow", "heatmaps", "features", "together"}
    for row in report["rows"]:  # printed as it finished
        assert f"] {row['key']}: " in done.stdout


def test_failed_and_skipped_rows_are_reported(tmp_path, monkeypatch):
    suite = load_suite()

    def broken(ctx):
        raise RuntimeError("CUDA out of memory.\nsecond line")

    rows = [suite.Row("heatmaps-fp32", "a", "a", 1, 1, broken),
            suite.Row("raft-small", "b", "b", 1, 1e6, broken),  # estimated past the budget
            suite.Row("hrnet-w48", "c", "c", 1, 1, lambda ctx: suite.result(2.0, "frames/s", 1.0, "x", "y"))]
    monkeypatch.setattr(suite, "ROWS", rows)
    assert suite.main(["--dry-run", "--out", str(tmp_path), "--budget-s", "100"]) == 1  # a row failed
    report = check_report(tmp_path, suite)
    status = {row["key"]: (row["status"], row.get("reason")) for row in report["rows"]}
    assert status["heatmaps-fp32"] == ("failed", "RuntimeError: CUDA out of memory.")
    assert status["raft-small"][0] == "skipped" and "would not fit" in status["raft-small"][1]
    assert status["hrnet-w48"] == ("ok", None) and report["rows"][2]["ratio"] == 2.0


def test_help_text(capsys):
    suite = load_suite()
    with pytest.raises(SystemExit):
        suite.parse_args(["--help"])
    text = capsys.readouterr().out
    for row in suite.ROWS:
        assert row.key in text
    assert "--dry-run" in text and "--budget-s" in text
