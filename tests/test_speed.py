"""benchmarks/speed.py end to end on the tiny slice: every target row is measured and reported."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_speed_report_on_tiny_slice(tiny_root, workdir):
    out = workdir / "speed"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "speed.py"), "--dataset", "amazon",
                           "--data_path", tiny_root, "--out", str(out)],
                          cwd=workdir, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "speed.md").read_text()
    for target in ("1. time to SASRec's best valid", "2a. text encoding FLOP/s", "2b. encoding speed-up",
                   "3. warm start", "4a. full-sort evaluation", "4b. top-10 for one user", "5. peak RSS"):
        assert target in report
    # the figures depend on the CPU: the report names it and whether it has native bfloat16
    assert "native bfloat16: " in report.splitlines()[2] and "CPU cores" in report.splitlines()[2]
    res = json.loads((out / "speed.json").read_text())
    # --report_only re-writes the same report from speed.json, measuring nothing
    (out / "speed.md").unlink()
    again = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "speed.py"), "--out", str(out),
                            "--report_only"], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "speed.md").read_text() == report
    # the timed runs trained from scratch (no resume) and their histories reached a score
    ttq = res["time_to_quality"]
    assert ttq["sasrec_best_valid_ndcg10"] > 0 and ttq["llmmtl_best_valid_ndcg10"] > 0
    assert ttq["sasrec_seconds"] > 0
