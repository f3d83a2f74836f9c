"""What a RecBole user does by habit works for LLMMTL, or stops with one line saying why."""

import math

import pytest

from conftest import tiny_overrides
from recbole_llm_mtl.quick_start import run

LEAVE_ONE_OUT = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user"}


@pytest.mark.parametrize("mode", ["uni100", "pop100"])
def test_sampled_evaluation_runs(mode, tiny_root, cache_dir, workdir):
    """RecBole writes ``predict``'s scores into a float32 buffer (it crashed on float64)."""
    overrides = tiny_overrides(tiny_root, cache_dir, eval_args={**LEAVE_ONE_OUT, "mode": mode})
    result = run("LLMMTL", "amazon", config_dict=overrides)
    for metrics in (result["best_valid_result"], result["test_result"]):
        assert {"recall@10", "ndcg@10", "recall@50"} <= set(metrics)
        assert all(0 <= v <= 1 and math.isfinite(v) for v in metrics.values())
    # 100 sampled negatives: the target is in the top 50 of 101 far more often than in the
    # top 50 of all items; a model ranking at random would give recall@50 about 0.5
    assert result["test_result"]["recall@50"] > 0.5
