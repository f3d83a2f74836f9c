"""The benchmark harness end to end on the tiny slice: table, CSV, JSON, plot, resume."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_harness_tiny_and_resumable(tiny_root, workdir):
    out = workdir / "results"
    cmd = [sys.executable, "-m", "recbole_llm_mtl.benchmark", "--dataset", "amazon", "--tiny", "--data_path", tiny_root,
           "--models", "LLMMTL", "BPR", "--max_seeds", "1", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    first = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "LLMMTL seed 2020: training" in first.stdout and "BPR seed 2020: training" in first.stdout
    for ext in ("md", "csv", "json", "png"):
        assert (out / f"amazon-tiny.{ext}").stat().st_size > 0
    table = (out / "amazon-tiny.md").read_text()
    assert "| LLMMTL | 1 |" in table and "| BPR | 1 |" in table and "VQ-Rec (published, not re-run)" in table
    data = json.loads((out / "amazon-tiny.json").read_text())
    assert {r["model"] for r in data["rows"]} == {"LLMMTL", "BPR"} and data["commit"]
    second = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert second.stdout.count("done earlier, kept") == 2 and "training ..." not in second.stdout


def test_harness_finishes_a_run_killed_after_training(tiny_root, workdir):
    """A row whose process died after its last epoch (before writing its result) is finished
    from its resume state: tested, not trained again, with the same metrics."""
    out = workdir / "results"
    cmd = [sys.executable, "-m", "recbole_llm_mtl.benchmark", "--dataset", "amazon", "--tiny", "--data_path", tiny_root,
           "--models", "BPR", "--max_seeds", "1", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    first = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    result = out / "runs" / "amazon-tiny" / "BPR-seed2020.json"
    before = json.loads(result.read_text())
    result.unlink()  # as if the process had died between its last epoch and its result
    second = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "BPR seed 2020: resuming from" in second.stdout
    log = (out / "runs" / "amazon-tiny" / "BPR-seed2020.log").read_text()
    assert log.count("epoch 0 training") == 1 and "nothing left to train" in log
    after = json.loads(result.read_text())
    assert after["test_result"] == before["test_result"]
    # progress is carried from the resume state (its seconds are those at the last epoch's end)
    assert (after["epochs"], after["best_epoch"], after["history"]) == (
        before["epochs"], before["best_epoch"], before["history"])
    assert 0 < after["fit_seconds"] <= before["fit_seconds"]
