"""YAML/`.hyper` hyperparameter tuning for LLMMTL or any RecBole model, with RecBole's
HyperTuning (hyperopt: exhaustive, random or bayes search).

    python run_hyper_llm.py --model=LLMMTL --dataset=amazon \
        --params_file=properties/hyper/LLMMTL-quick.hyper --algo=exhaustive --output_dir=saved/hyper

Every trial is a normal training run (same protocol as run_recbole_llm.py). Writes
``<output_dir>/<model>-<dataset>.md`` and ``.csv`` (all trials) and prints the best
parameters with the command that re-runs them as a plain training run.
"""

import argparse
import csv
import os
import sys

from recbole_llm_mtl.errors import LLMMTLError
from recbole_llm_mtl.quick_start import parse_with_overrides, run

ALGOS = ("exhaustive", "random", "bayes")


def _cli_value(value):
    return repr(value).replace(" ", "") if not isinstance(value, str) else value


def tune(model, dataset, params_file, algo="exhaustive", max_evals=20, early_stop=10, config_files=None,
         overrides=None, output_dir="saved/hyper"):
    """Run the search; returns (best_params, trials) where trials are dicts of params + scores."""
    from recbole.trainer import HyperTuning

    trials = []

    def objective(params, fixed_files):
        result = run(model, dataset, fixed_files, config_dict={**(overrides or {}), **params})
        trials.append({"params": dict(params), "valid": result["best_valid_result"], "test": result["test_result"],
                       "best_valid_score": result["best_valid_score"]})
        return result

    if not os.path.isfile(params_file):
        raise LLMMTLError(f"params_file '{params_file}' not found (see properties/hyper/ for examples)")
    if algo not in ALGOS:
        raise LLMMTLError(f"algo '{algo}' is not one of {ALGOS}")
    tuner = HyperTuning(objective, params_file=params_file, fixed_config_file_list=config_files,
                        algo=algo, max_evals=max_evals, early_stop=early_stop)
    tuner.run()
    write_report(model, dataset, trials, tuner.best_params, output_dir, overrides, config_files)
    return tuner.best_params, trials


def rerun_command(model, dataset, params, overrides=None, config_files=None):
    args = [f"--model={model}", f"--dataset={dataset}"]
    if config_files:
        args.append(f"--config_files=\"{' '.join(config_files)}\"")
    args += [f"--{k}={_cli_value(v)}" for k, v in {**(overrides or {}), **params}.items()]
    return "python run_recbole_llm.py " + " ".join(args)


def write_report(model, dataset, trials, best, output_dir, overrides=None, config_files=None):
    os.makedirs(output_dir, exist_ok=True)
    base = os.path.join(output_dir, f"{model}-{dataset}")
    keys = sorted({k for t in trials for k in t["params"]})
    metrics = sorted({m for t in trials for m in t["test"]})
    with open(base + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial"] + keys + ["valid_score"] + [f"test_{m}" for m in metrics])
        for i, t in enumerate(trials, 1):
            w.writerow([i] + [t["params"].get(k) for k in keys] + [t["best_valid_score"]]
                       + [t["test"].get(m) for m in metrics])
    lines = [f"# Tuning {model} on {dataset}", "",
             "| trial | " + " | ".join(keys) + " | valid score | " + " | ".join(f"test {m}" for m in metrics) + " |",
             "|---" * (len(keys) + len(metrics) + 2) + "|"]
    for i, t in enumerate(trials, 1):
        lines.append(f"| {i} | " + " | ".join(str(t["params"].get(k)) for k in keys)
                     + f" | {t['best_valid_score']:.4f} | " + " | ".join(f"{t['test'].get(m, 0):.4f}" for m in metrics) + " |")
    cmd = rerun_command(model, dataset, best or {}, overrides, config_files)
    lines += ["", f"Best parameters: `{best}`", "", "Re-run the best as a plain training run:", "",
              f"    {cmd}", ""]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return base


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="LLMMTL")
    parser.add_argument("--dataset", default="amazon")
    parser.add_argument("--params_file", required=True, help="RecBole .hyper search space")
    parser.add_argument("--algo", default="exhaustive", choices=ALGOS)
    parser.add_argument("--max_evals", type=int, default=20, help="trials for random/bayes")
    parser.add_argument("--early_stop", type=int, default=10, help="stop after this many trials without progress")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files fixed for all trials")
    parser.add_argument("--output_dir", default="saved/hyper")
    args, overrides = parse_with_overrides(parser, argv)  # other --key=value: fixed for every trial
    files = args.config_files.split() if args.config_files else None
    try:
        tune(args.model, args.dataset, args.params_file, args.algo, args.max_evals, args.early_stop, files,
             overrides, args.output_dir)
    except LLMMTLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
