"""The paired test over users: it finds a real difference and none where there is none."""

import numpy as np

from recbole_llm_mtl.significance import paired_test, seed_mean


def _scores(n=2000, seed=0):
    """NDCG@10-like per-user scores: mostly zero, else 1/log2(rank + 1)."""
    rng = np.random.default_rng(seed)
    ranks = rng.integers(1, 60, n)
    return {f"u{i}": float(1 / np.log2(r + 1)) if r <= 10 else 0.0 for i, r in enumerate(ranks)}


def test_identical_models_do_not_differ():
    a = _scores()
    t = paired_test(a, dict(a))
    assert t["mean_diff"] == 0 and t["ci95"] == [0.0, 0.0] and t["p_wilcoxon"] == 1.0 and t["users"] == 2000


def test_a_better_model_is_found_and_pairs_by_user():
    a, b = _scores(seed=1), _scores(seed=2)
    better = {u: v + 0.02 for u, v in a.items()}
    t = paired_test(better, a)
    assert t["p_wilcoxon"] < 1e-6 and t["ci95"][0] > 0.019
    # two unrelated models of equal quality: the interval covers zero
    t = paired_test(a, b)
    assert t["ci95"][0] < 0 < t["ci95"][1] and t["p_wilcoxon"] > 0.05
    # only common users are paired
    assert paired_test({"x": 1.0, **a}, b)["users"] == 2000


def test_seed_mean_averages_users_of_every_seed():
    assert seed_mean([{"u": 0.0, "v": 1.0}, {"u": 1.0}]) == {"u": 0.5}
