"""Paired comparison of two models over the same users.

Two models' mean NDCG@10 can differ by seed noise alone; pairing each user's score under
both models removes the between-user variance, which dominates on leave-one-out data.
"""

import numpy as np


def seed_mean(per_seed):
    """{user: mean over seeds} for the users every seed evaluated (seeds of one row)."""
    users = set.intersection(*(set(d) for d in per_seed)) if per_seed else set()
    return {u: float(np.mean([d[u] for d in per_seed])) for u in users}


def bootstrap_ci(diff, n_boot=10000, seed=0, chunk=500):
    """95% percentile interval of the mean of ``diff`` over users resampled with
    replacement (in chunks: n_boot x users indices at once would not fit in memory)."""
    rng = np.random.default_rng(seed)
    means = [diff[rng.integers(0, len(diff), (min(chunk, n_boot - k), len(diff)))].mean(1)
             for k in range(0, n_boot, chunk)]
    low, high = np.percentile(np.concatenate(means), [2.5, 97.5])
    return float(low), float(high)


def paired_test(a, b, n_boot=10000, seed=0):
    """``a`` vs ``b`` ({user: score}) over their common users: mean difference a - b, its
    paired-bootstrap 95% CI and the two-sided Wilcoxon signed-rank p-value (users with
    equal scores, mostly both zero, carry no sign and are dropped, scipy's default)."""
    from scipy.stats import wilcoxon

    users = sorted(set(a) & set(b))
    if not users:
        return None
    x, y = np.array([a[u] for u in users]), np.array([b[u] for u in users])
    diff = x - y
    p = float(wilcoxon(x, y).pvalue) if np.any(diff != 0) else 1.0
    low, high = bootstrap_ci(diff, n_boot, seed)
    return {"users": len(users), "mean_a": float(x.mean()), "mean_b": float(y.mean()),
            "mean_diff": float(diff.mean()), "ci95": [low, high], "p_wilcoxon": p, "n_boot": n_boot}
