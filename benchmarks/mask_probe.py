"""Valid NDCG@10 of finished harness runs re-scored with and without the user's training
items masked (RecBole masks them for general recommenders only), and the share of valid
targets that repeat a training item. Reads each run's JSON and its best checkpoint (the
harness's ``--checkpoints`` folder); valid split only, test is never scored.

    python benchmarks/mask_probe.py --runs /work/runs/bench/runs/amazon --seed 2020 SASRec LLMMTL
"""
import argparse
import json
import os

import numpy as np
import torch

from recbole_llm_mtl.build import build
from recbole_llm_mtl.config import build_config
from recbole_llm_mtl.trainer import load_checkpoint


def training_items(train):
    """Each user's training items (internal ids): targets and history items of the train rows
    (a general recommender's train rows have no history lists)."""
    feat, items = train._dataset.inter_feat, {}
    lists = feat["item_id_list"].tolist() if "item_id_list" in feat.columns else [[]] * len(feat)
    for u, i, row in zip(feat["user_id"].tolist(), feat["item_id"].tolist(), lists):
        items.setdefault(u, set()).update([i, *(x for x in row if x)])
    return items


def ndcg_at_10(row, target):
    rank = int((row > row[target]).sum())
    return 1 / np.log2(rank + 2) if rank < 10 else 0.0


def rescore(config, checkpoint):
    """(valid NDCG@10 as evaluated, with the user's training items masked, share of valid
    targets that repeat a training item, users) of ``checkpoint`` under ``config``.

    The mask follows RecBole's full-sort rule for general recommenders: the items the user
    interacted with before this split, less the target itself (``used_item - positive_item``
    in ``FullSortEvalDataLoader``), so a target that repeats a training item is still ranked."""
    split, mode = config["eval_args"]["split"], config["eval_args"]["mode"]
    if "LS" not in split or (mode.get("valid") if isinstance(mode, dict) else mode) != "full":
        raise SystemExit(f"mask_probe scores one target per user under full ranking (split LS, mode full); "
                         f"this run has split {split}, mode {mode}")
    built = build(config)
    built.model.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    built.model.eval()
    seen, n = training_items(built.train), built.dataset.item_num
    plain = masked = repeats = count = 0
    with torch.no_grad():
        for interaction, _, pos_u, pos_i in built.valid:
            scores = built.model.full_sort_predict(interaction).view(-1, n).float()
            scores[:, 0] = -np.inf
            for r, t in zip(pos_u.tolist(), pos_i.tolist()):
                row, mine = scores[r].clone(), seen.get(int(interaction["user_id"][r]), set())
                plain += ndcg_at_10(row, t)
                row[list(mine - {t})] = -np.inf
                masked += ndcg_at_10(row, t)
                repeats += t in mine
                count += 1
    return plain / count, masked / count, repeats / count, count


def probe(result_path, dataset):
    with open(result_path) as f:
        rec = json.load(f)
    config_input = {k: v for k, v in rec["config_input"].items() if k not in ("model", "config_files")}
    config = build_config(rec["model"], dataset, config_dict={**config_input, "show_progress": False})
    return (rec["best_valid_score"], *rescore(config, rec["checkpoint"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="a harness runs folder, e.g. .../runs/amazon")
    parser.add_argument("--dataset", default="amazon")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("rows", nargs="+", help="run file slugs, e.g. LLMMTL SASRec")
    args = parser.parse_args(argv)
    for slug in args.rows:
        recorded, plain, masked, repeats, users = probe(os.path.join(args.runs, f"{slug}-seed{args.seed}.json"),
                                                        args.dataset)
        print(f"{slug} seed {args.seed}: recorded best valid {recorded}; valid NDCG@10 {plain:.4f}, with training "
              f"items masked {masked:.4f}; {repeats:.2%} of valid targets repeat a training item ({users} users)",
              flush=True)


if __name__ == "__main__":
    main()
