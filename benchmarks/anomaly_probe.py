"""What autograd anomaly detection (turned on by importing RecBole 1.2.1's sine.py, until
our entry points kept it as it was) does to RecBole baselines: the same metrics, a slower
training step.

    python benchmarks/anomaly_probe.py --dataset amazon

Part 1 trains SASRec and FDSA for 3 epochs on the first 300 users, once with anomaly
detection off and once on, and compares every valid and test metric. Part 2 times FDSA's
training step on the whole dataset (one batch, after a warm-up step), off and on.
"""

import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def same_metrics(dataset):
    from recbole_llm_mtl.data.atomic import write_user_slice
    from recbole_llm_mtl.quick_start import run

    root = tempfile.mkdtemp(prefix="anomaly-")
    write_user_slice(os.path.join(ROOT, "dataset", dataset), os.path.join(root, dataset), 300)
    for model in ("SASRec", "FDSA"):
        results = {}
        for state in (False, True):
            def during(built, trainer, state=state):  # after RecBole's models are imported
                torch.autograd.set_detect_anomaly(state)

            r = run(model, dataset, saved=False, on_built=during,
                    config_dict={"data_path": root, "show_progress": False, "epochs": 3, "train_batch_size": 256,
                                 "state": "ERROR", "checkpoint_dir": os.path.join(root, "ckpt")})
            results[state] = (r["best_valid_result"], r["test_result"])
        print(f"{model}: valid and test metrics identical with and without: {results[False] == results[True]} "
              f"(test NDCG@10 {results[False][1]['ndcg@10']:.4f})")


def step_seconds(dataset, steps=3):
    from recbole_llm_mtl.build import build_from_args

    built = build_from_args("FDSA", dataset, cmd_overrides={"show_progress": False})
    model, batch = built.model.train(), next(iter(built.train))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for state in (False, True, False):  # off twice: the first one is also the warm-up
        torch.autograd.set_detect_anomaly(state)
        started = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            model.calculate_loss(batch).backward()
            optimizer.step()
        print(f"FDSA on {dataset}, anomaly detection {'on ' if state else 'off'}: "
              f"{(time.perf_counter() - started) / steps:.2f} s per training step "
              f"(batch {len(batch)}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon")
    args = parser.parse_args()
    same_metrics(args.dataset)
    step_seconds(args.dataset)
