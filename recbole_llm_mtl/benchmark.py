"""Benchmark LLMMTL against RecBole baselines on one dataset, identical split and protocol.

    python -m recbole_llm_mtl.benchmark --dataset amazon

Each run is a separate process (so its peak memory is its own) that goes through the same
``run()`` as the CLI. Finished runs are kept as JSON under ``<out>/runs/<dataset>/`` and
are not redone (delete a file to redo it); a killed run resumes from the resume state in its
checkpoint folder (``--checkpoints``; delete the folder to start it afresh). Writes
``<out>/<dataset>.md``, ``.csv``, ``.json`` and ``<dataset>.png`` (test NDCG@10 against
training time).
"""

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

METRICS = ["recall@10", "ndcg@10", "mrr@10", "hit@10", "recall@50", "ndcg@50", "mrr@50", "hit@50"]
SEEDS = [2020, 2021, 2022]

# name -> (model, overrides, seeds). Baselines use their RecBole defaults with hidden size
# 64, MAX_ITEM_LIST_LENGTH 20 and early stopping patience 10 (properties/overall.yaml).
RUNS = {
    "LLMMTL": ("LLMMTL", {}, SEEDS),
    "SASRec": ("SASRec", {}, SEEDS),
    "GRU4Rec": ("GRU4Rec", {}, SEEDS[:1]),
    "BERT4Rec": ("BERT4Rec", {}, SEEDS[:1]),
    "FDSA": ("FDSA", {}, SEEDS[:1]),
    "BPR": ("BPR", {}, SEEDS[:1]),
    "LightGCN": ("LightGCN", {}, SEEDS[:1]),
    "LLMMTL w/o L_u": ("LLMMTL", {"task_weights": {"behavior": 1.0, "user_profile": 0.0, "item_semantics": 0.1}}, SEEDS[:1]),
    "LLMMTL w/o L_v": ("LLMMTL", {"task_weights": {"behavior": 1.0, "user_profile": 0.1, "item_semantics": 0.0}}, SEEDS[:1]),
    "LLMMTL behaviour loss only": ("LLMMTL", {"task_weights": {"behavior": 1.0}}, SEEDS[:1]),
    "LLMMTL scorer: dot": ("LLMMTL", {"scorer": "dot"}, SEEDS[:1]),
    "LLMMTL text only (no ID)": ("LLMMTL", {"item_id_embedding": False}, SEEDS[:1]),
    "LLMMTL ID only (no text)": ("LLMMTL", {"use_text": False}, SEEDS[:1]),
    # cold-start protocol: 10% of items lose every train interaction (see README)
    "cold-start: LLMMTL inductive": ("LLMMTL", {"cold_item_ratio": 0.1, "item_id_embedding": False}, SEEDS[:1]),
    "cold-start: SASRec": ("SASRec", {"cold_item_ratio": 0.1}, SEEDS[:1]),
}
BASELINES = ("SASRec", "GRU4Rec", "BERT4Rec", "FDSA", "BPR", "LightGCN")
PUBLISHED = {  # not re-run: RUCAIBox/VQ-Rec README, same data and protocol
    "VQ-Rec (published, not re-run)": {"recall@10": 0.1211, "ndcg@10": 0.0643, "recall@50": 0.2369, "ndcg@50": 0.0897},
}


def _slug(name, seed):
    keep = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    return f"{keep}-seed{seed}"


def worker(spec_path):
    """Child process: one training run, result JSON next to the spec."""
    with open(spec_path) as f:
        spec = json.load(f)
    from recbole_llm_mtl.quick_start import run

    result = run(spec["model"], spec["dataset"], resume=spec.get("resume"),
                 config_dict={**spec["overrides"], "checkpoint_dir": spec["checkpoint_dir"]})
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["seconds_per_epoch"] = result["fit_seconds"] / max(result["epochs"], 1)
    result["commit"] = _git_commit()
    tmp = spec["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, spec["result"])


def run_all(args):
    from recbole_llm_mtl.trainer import latest_resume_file

    runs_dir = os.path.join(args.out, "runs", args.dataset + ("-tiny" if args.tiny else ""))
    os.makedirs(runs_dir, exist_ok=True)
    todo = [(n, s) for n in (args.models or list(RUNS)) for s in RUNS[n][2][: args.max_seeds]]
    for k, (name, seed) in enumerate(todo, 1):
        model, overrides, _ = RUNS[name]
        result = os.path.join(runs_dir, _slug(name, seed) + ".json")
        if os.path.exists(result):
            print(f"[{k}/{len(todo)}] {name} seed {seed}: done earlier, kept", flush=True)
            continue
        # each row checkpoints into its own folder, so a killed row resumes where it stopped
        ckpt_dir = os.path.join(args.checkpoints, os.path.basename(runs_dir), _slug(name, seed))
        resume = latest_resume_file(ckpt_dir)
        spec = {"model": model, "dataset": args.dataset, "result": result, "checkpoint_dir": ckpt_dir,
                "resume": resume, "overrides": {**overrides, "seed": seed, "show_progress": False, **args.extra}}
        spec_path = result[:-5] + ".spec.json"
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        print(f"[{k}/{len(todo)}] {name} seed {seed}: "
              + (f"resuming from {resume} ..." if resume else "training ..."), flush=True)
        t0 = time.time()
        log_path = result[:-5] + ".log"
        with open(log_path, "a" if resume else "w") as log:
            proc = subprocess.run([sys.executable, "-m", "recbole_llm_mtl.benchmark", "--worker", spec_path],
                                  stdout=log, stderr=subprocess.STDOUT)
        os.unlink(spec_path)
        if proc.returncode != 0:
            print(f"    failed (exit {proc.returncode}); see {log_path}", flush=True)
            continue
        with open(result) as f:
            ndcg = json.load(f)["test_result"]["ndcg@10"]
        print(f"    test NDCG@10 {ndcg:.4f} in {time.time() - t0:.0f}s", flush=True)
    return runs_dir


def _git_commit():
    try:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def summarize(args, runs_dir):
    rows = []
    args.run_commits = set()
    for name in args.models or list(RUNS):
        results = []
        for seed in RUNS[name][2][: args.max_seeds]:
            path = os.path.join(runs_dir, _slug(name, seed) + ".json")
            if os.path.exists(path):
                with open(path) as f:
                    results.append(json.load(f))
        if not results:
            continue
        args.run_commits.update(r.get("commit", "unknown") for r in results)
        row = {"model": name, "seeds": len(results)}
        for m in METRICS:
            vals = [r["test_result"][m] for r in results]
            row[m] = statistics.mean(vals)
            row[m + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        for key in ("best_epoch", "seconds_per_epoch", "fit_seconds", "eval_seconds", "peak_rss_mb"):
            vals = [r[key] for r in results if r.get(key) is not None]
            row[key] = statistics.mean(vals) if vals else None
        for part in ("test_cold", "test_warm"):
            if part in results[0]:
                for m in ("recall@10", "ndcg@10"):
                    row[f"{part}_{m}"] = statistics.mean(r[part][m] for r in results)
        rows.append(row)
    command = "python -m recbole_llm_mtl.benchmark " + " ".join(
        a if " " not in a else repr(a) for a in sys.argv[1:] if a != "--report_only")
    base = os.path.join(args.out, args.dataset + ("-tiny" if args.tiny else ""))
    with open(base + ".json", "w") as f:
        json.dump({"rows": rows, "published": PUBLISHED, "commit": _git_commit(), "command": command}, f, indent=1)
    with open(base + ".csv", "w", newline="") as f:
        fields = list(dict.fromkeys(k for r in rows for k in r)) or ["model"]  # cold rows add columns
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    _markdown(base + ".md", rows, args, command)
    _plot(base + ".png", rows)
    print(f"wrote {base}.md/.csv/.json/.png")


def _is_cold(row):
    """A cold-start protocol row (reported in its own table)."""
    return "test_cold_recall@10" in row


def _is_ablation(name):
    """LLMMTL with overrides: a variant of the full model, not a model of its own."""
    model, overrides, _ = RUNS[name]
    return model == "LLMMTL" and bool(overrides)


def _fmt(row, m):
    v = row.get(m)
    if v is None:
        return "-"
    std = row.get(m + "_std")
    return f"{v:.4f} ± {std:.4f}" if std is not None else f"{v:.4f}"


def _markdown(path, rows, args, command):
    cols = METRICS
    lines = [f"# {args.dataset}: LLMMTL vs RecBole baselines", "",
             "Leave-one-out by time, full ranking over all items, test split; mean ± std over seeds "
             "where seeds > 1. Times on this machine: " + f"{platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPU cores.", "",
             "| model | seeds | " + " | ".join(c.replace("@", "@") for c in cols)
             + " | best epoch | s/epoch | train s | eval s | peak RSS MB |",
             "|---|---|" + "---|" * (len(cols) + 5)]
    for r in (r for r in rows if not _is_cold(r)):
        lines.append(f"| {r['model']} | {r['seeds']} | " + " | ".join(_fmt(r, c) for c in cols)
                     + f" | {'-' if r['best_epoch'] is None else format(r['best_epoch'], '.3g')}"
                     + f" | {r['seconds_per_epoch']:.1f} | {r['fit_seconds']:.0f} | {r['eval_seconds']:.1f}"
                     + f" | {r['peak_rss_mb']:.0f} |")
    for name, vals in PUBLISHED.items():
        lines.append(f"| {name} | - | " + " | ".join(f"{vals[c]:.4f}" if c in vals else "-" for c in cols)
                     + " | - | - | - | - | - |")
    by_name = {r["model"]: r for r in rows}
    baselines = [by_name[b] for b in BASELINES if b in by_name]
    if "LLMMTL" in by_name and baselines:
        best = max(baselines, key=lambda r: r["ndcg@10"])
        lines += ["", f"LLMMTL's mean test NDCG@10 is {by_name['LLMMTL']['ndcg@10'] / best['ndcg@10']:.3f}x the best "
                  f"baseline's ({best['model']}, {best['ndcg@10']:.4f}); baselines run so far: "
                  f"{', '.join(r['model'] for r in baselines)}."]
    cold = [r for r in rows if _is_cold(r)]
    if cold:
        lines += ["", "## Cold start", "",
                  "10% of items (seeded) lose every train interaction; test rows are split by whether the "
                  "target is such a cold item. Full ranking over all items.", "",
                  "| model | cold R@10 | cold N@10 | warm R@10 | warm N@10 | cold/warm R@10 |", "|---|---|---|---|---|---|"]
        for r in cold:
            ratio = r["test_cold_recall@10"] / r["test_warm_recall@10"] if r["test_warm_recall@10"] else float("nan")
            lines.append(f"| {r['model']} | {r['test_cold_recall@10']:.4f} | {r['test_cold_ndcg@10']:.4f} | "
                         f"{r['test_warm_recall@10']:.4f} | {r['test_warm_ndcg@10']:.4f} | {ratio:.2f} |")
    if args.note:
        lines += ["", f"Note: {args.note}"]
    lines += ["", f"Command: `{command}`  ", f"Table written at commit `{_git_commit()}`; runs made at "
              f"{', '.join(sorted(args.run_commits)) or 'unknown'}.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _plot(path, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    points = [r for r in rows if not _is_cold(r)]
    colors = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
    for k, r in enumerate(points):
        # ablations sit close to the full model: a legend instead of labels keeps them readable
        ablation = _is_ablation(r["model"])
        ax.scatter(r["fit_seconds"], r["ndcg@10"], s=28 if ablation else 48, marker="x" if ablation else "o",
                   color=colors[k % len(colors)], label=r["model"])
    for name, vals in PUBLISHED.items():
        ax.axhline(vals["ndcg@10"], ls="--", lw=0.8, color="gray")
        ax.text(ax.get_xlim()[1], vals["ndcg@10"], name + " ", fontsize=7, va="bottom", ha="right", color="gray")
    ax.set_xlabel("training time to early stop (s, this machine)")
    ax.set_ylabel("test NDCG@10")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="amazon")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--models", nargs="*", help=f"subset of: {', '.join(RUNS)}")
    parser.add_argument("--checkpoints", default=os.path.join("saved", "benchmark"),
                        help="checkpoint folder (one sub-folder per run; a killed run resumes from it)")
    parser.add_argument("--max_seeds", type=int, default=3, help="at most this many seeds per model")
    parser.add_argument("--tiny", action="store_true", help="1 epoch each (a smoke test of the harness)")
    parser.add_argument("--data_path", default=None, help="data_path override (e.g. a small slice)")
    parser.add_argument("--note", default="", help="a sentence for the table's notes (e.g. machine load)")
    parser.add_argument("--report_only", action="store_true",
                        help="write the table and plot from finished runs, train nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    unknown = [m for m in (args.models or []) if m not in RUNS]
    if unknown:
        parser.error(f"unknown benchmark rows {unknown}; choose from {list(RUNS)}")
    args.extra = {}
    if args.tiny:
        args.extra.update({"epochs": 1, "train_batch_size": 256})
    if args.data_path:
        args.extra["data_path"] = args.data_path
    if args.report_only:
        runs_dir = os.path.join(args.out, "runs", args.dataset + ("-tiny" if args.tiny else ""))
    else:
        runs_dir = run_all(args)
    summarize(args, runs_dir)


if __name__ == "__main__":
    main()
