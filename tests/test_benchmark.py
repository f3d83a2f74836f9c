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
