"""YAML/`.hyper` hyperparameter tuning for LLMMTL or any RecBole model, with RecBole's
HyperTuning (hyperopt: exhaustive, random or bayes search).

    python run_hyper_llm.py --model=LLMMTL --dataset=amazon \
        --params_file=properties/hyper/LLMMTL-quick.hyper --algo=exhaustive --output_dir=saved/hyper

Every trial is a normal training run (same protocol as run_recbole_llm.py), selected on
valid alone (test is not read). Writes ``<output_dir>/<model>-<dataset>.md`` and ``.csv``
(all trials) and prints the best parameters with the command that re-runs them as a plain
training run. A killed search resumes when re-run with the same arguments: finished trials
are kept in ``<model>-<dataset>.trials.jsonl``, and an unfinished one continues from its
last epoch.

``--edge SIZE_KEY`` then follows the edge rule (``edge_steps``): while the best trial has an
untried neighbour along the learning rate or that size, the neighbour is tried.
"""

import argparse
import ast
import csv
import difflib
import hashlib
import json
import os
import shlex
import sys

from recbole.trainer import HyperTuning

from recbole_llm_mtl.config import get_model_class, known_config_keys, model_code_keys, warn_unknown_keys
from recbole_llm_mtl.errors import LLMMTLError
from recbole_llm_mtl.provenance import file_sha1, parts_commits, read_jsonl, read_parts, record_part
from recbole_llm_mtl.quick_start import parse_with_overrides, run
from recbole_llm_mtl.trainer import kept_epoch, latest_resume_file, load_checkpoint

ALGOS = ("exhaustive", "random", "bayes")
SPACE_ARITY = {"uniform": 2, "quniform": 3, "loguniform": 2}  # numbers after the type; choice: a list


def read_space(path, model=None):
    """A RecBole ``.hyper`` file (``name type values`` per line) as HyperTuning's ``params_dict``.

    Returns ``(params_dict, decode)``. hyperopt cannot enumerate a choice whose options are
    dicts or lists (RecBole's exhaustive search fails deep inside hyperopt on, e.g.,
    ``task_weights``), so such options stand in the space as ``option <i>`` strings and
    ``decode(params)`` maps a sampled point back to the real values. Options are Python
    literals (RecBole evaluates them as any expression). Lines that are blank or start with
    ``#`` are skipped (RecBole's own reader does not allow comments); any other malformed line,
    or a name defined twice, is named with its file and line; with ``model``, so is a name that
    no config file documents and the model's code does not read (a typo would run the same
    trial again and again).
    """
    params, options, seen = {}, {}, {}
    known = known_config_keys() | model_code_keys(get_model_class(model)) if model else None
    try:
        with open(path, encoding="utf-8-sig") as f:  # utf-8-sig: an editor's BOM is not part of a name
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise LLMMTLError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}, line {number}"
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise LLMMTLError(f"{where}: expected '<name> <choice|uniform|quniform|loguniform> <values>', "
                              f"got {line.strip()!r}")
        name, kind, text = parts[0], parts[1], "".join(parts[2].split())  # as RecBole: spaces dropped
        if name in seen:
            raise LLMMTLError(f"{where}: '{name}' is already defined on line {seen[name]}")
        seen[name] = number
        if known is not None and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            raise LLMMTLError(f"{where}: '{name}' is not a RecBole/LLMMTL config key"
                              + (f"; did you mean '{close[0]}'?" if close else ""))
        if kind == "choice":
            try:
                values = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                values = None
            if not isinstance(values, list) or not values:
                raise LLMMTLError(f"{where}: choice '{name}' needs a non-empty list of Python literals, "
                                  f"got {text!r}")
            if any(isinstance(v, (dict, list, tuple)) for v in values):
                options[name] = {f"option {i}": v for i, v in enumerate(values)}
                values = list(options[name])
            params.setdefault("choice", {})[name] = values
        elif kind in SPACE_ARITY:
            try:
                values = [float(v) for v in text.split(",")]
            except ValueError:
                values = []
            if len(values) != SPACE_ARITY[kind]:
                raise LLMMTLError(f"{where}: {kind} '{name}' needs {SPACE_ARITY[kind]} comma-separated "
                                  f"numbers, got {text!r}")
            params.setdefault(kind, {})[name] = values
        else:
            raise LLMMTLError(f"{where}: unknown type '{kind}' for '{name}' "
                              f"(one of choice, {', '.join(SPACE_ARITY)})")
    if not params:
        raise LLMMTLError(f"{path}: no parameters to search")

    def decode(point):
        return {k: options[k][v] if k in options else v for k, v in point.items()}

    return params, decode


def _cli_value(value):
    return repr(value) if not isinstance(value, str) else value


def _trial_key(params, fixed=None):
    """A trial's identity: its parameters and the settings fixed for the whole search (a search
    re-run with another patience, say, must not reuse the old trials)."""
    return json.dumps({"params": params, "fixed": fixed or {}}, sort_keys=True, default=str)


def _file_hash(path):
    if not os.path.isfile(path):
        raise LLMMTLError(f"config file '{path}' not found")
    return file_sha1(path)


def _load_trials(path):
    """Finished trials of an earlier (killed) search: params key -> record."""
    # a line cut by a kill is skipped: that trial runs again
    return {_trial_key(r["params"], r.get("fixed")): r for r in read_jsonl(path)}


def _search_fixed(model, overrides=None, config_files=None):
    """What a search fixes for all its trials; part of each trial's identity."""
    fixed = dict(overrides or {})
    version = getattr(get_model_class(model), "RESULTS_VERSION", None)
    if version not in (None, 1):  # trials (and their checkpoints) of older model code are not reused
        fixed["results_version"] = version
    if config_files:  # by content: a trial made with another version of a YAML is not reused
        fixed["config_files"] = {path: _file_hash(path) for path in config_files}
    return fixed


def tune(model, dataset, params_file, algo="exhaustive", max_evals=20, early_stop=10, config_files=None,
         overrides=None, output_dir="saved/hyper", evaluate_test=False, report=True):
    """Run the search; returns (best_params, trials) where trials are dicts of params + scores.

    Selection is on valid only: trials never read the test split unless ``evaluate_test``.
    The search resumes: every finished trial is appended to ``<model>-<dataset>.trials.jsonl``
    and is not run again, and each trial checkpoints into its own folder, so a killed trial
    continues from its last finished epoch.
    """
    if not os.path.isfile(params_file):
        raise LLMMTLError(f"params_file '{params_file}' not found (see properties/hyper/ for examples)")
    if algo not in ALGOS:
        raise LLMMTLError(f"algo '{algo}' is not one of {ALGOS}")
    os.makedirs(output_dir, exist_ok=True)
    base = os.path.join(output_dir, f"{model}-{dataset}")
    done = _load_trials(base + ".trials.jsonl")
    trials = []
    fixed = _search_fixed(model, overrides, config_files)

    space, decode = read_space(params_file, model)
    if algo == "exhaustive" and "choice" not in space:  # hyperopt would run one trial and call it the best
        ranged = sorted(name for names in space.values() for name in names)
        raise LLMMTLError(f"{params_file}: --algo=exhaustive enumerates choice lists, and this space has only "
                          f"ranges ({', '.join(ranged)}): it would run one trial; use --algo=random or "
                          "--algo=bayes with --max_evals")

    def objective(params, fixed_files):
        params = decode(params)
        key = _trial_key(params, fixed)
        record = done.get(key)
        if record is None:
            print(f"trial {params}: training")  # (RecBole printed the space's stand-ins)
            folder = os.path.join(output_dir, "checkpoints", f"{model}-{dataset}",
                                  hashlib.sha1(key.encode()).hexdigest()[:12])
            resume = latest_resume_file(folder)
            part = record_part(folder, load_checkpoint(resume, mmap=True)["epoch"] + 1 if resume else 0)
            result = run(model, dataset, fixed_files, resume=resume,
                         config_dict={**(overrides or {}), **params, "checkpoint_dir": folder},
                         evaluate_test=evaluate_test)
            record = {"params": dict(params), "fixed": fixed,
                      "valid": result["best_valid_result"], "test": result["test_result"],
                      "best_valid_score": result["best_valid_score"], "valid_score_bigger": result["valid_score_bigger"],
                      "best_epoch": result["best_epoch"], "epochs": result["epochs"],
                      "fit_seconds": result["fit_seconds"], "checkpoint": result["checkpoint"],
                      # (epoch, valid score, seconds): the kept epoch is recomputed from it in the report
                      "history": result["history"], "provenance": part, "parts": read_parts(folder),
                      # cold-start searches select on these (valid), never on test_cold
                      **{k: result[k] for k in ("valid_cold", "valid_warm") if k in result}}
            with open(base + ".trials.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=float) + "\n")
        else:
            print(f"trial {params} finished earlier: valid score {record['best_valid_score']:.4f}")
        trials.append(record)
        return {"model": model, "best_valid_score": record["best_valid_score"],
                "valid_score_bigger": record["valid_score_bigger"],
                "best_valid_result": record["valid"], "test_result": record["test"] or "(not read: valid-only tuning)"}

    tuner = HyperTuning(objective, params_dict=space, fixed_config_file_list=config_files,
                        algo=algo, max_evals=max_evals, early_stop=early_stop)
    # hyperopt draws the order of the trials (the exhaustive grid's too) from fmin's random state,
    # fresh from the OS unless this variable is set: a fixed seed visits them in the same order on
    # every start, so a restarted search first resumes the trial it was killed in
    before = os.environ.get("HYPEROPT_FMIN_SEED")
    os.environ["HYPEROPT_FMIN_SEED"] = str((overrides or {}).get("seed", 2020))
    try:
        tuner.run()
    finally:
        if before is None:
            del os.environ["HYPEROPT_FMIN_SEED"]
        else:
            os.environ["HYPEROPT_FMIN_SEED"] = before
    best = decode(tuner.best_params)
    if report:
        write_report(model, dataset, trials, best, output_dir, overrides, config_files)
    return best, trials


def _best_trial(trials):
    """The best trial by valid; a tie keeps the earlier one (a later point must beat it)."""
    def rank(item):
        index, t = item
        return (t["best_valid_score"] if t.get("valid_score_bigger", True) else -t["best_valid_score"], -index)
    return max(enumerate(trials), key=rank)[1]


def _step(value, factor):
    """A learning rate x0.5 or x2, kept to 6 significant digits (0.0003 x 2 would otherwise be
    recorded as 0.0006000000000000001); a size stays an int."""
    return int(value * factor) if isinstance(value, int) else float(f"{value * factor:.6g}")


def edge_steps(trials, size_key=None, lr_key="learning_rate"):
    """The next trials of the edge rule (``benchmarks/results/tuning-log.md``, session 22).

    A search whose best point by valid has no tried neighbour on some side, along the learning
    rate or along ``size_key``, has not shown that its best is inside the space: the point one
    step beyond (half or twice the value) is tried next, at the best point's other values
    (dropout, say). A side counts as tried when any point on that line was, whatever its other
    searched values (a grid point at RecBole's dropout closes a side of a dropout trial's point).
    Returns the params of those neighbours, [] once the best has a tried neighbour on every side.
    ``trials``: records with ``params`` and ``best_valid_score``, in the order they were made (a
    tie keeps the earlier: a step must beat the best to move it). ``size_key=None``: a
    learning-rate look. Trials without one of the keys are left out; a key that no trial has is
    an error (a misspelt key would otherwise read as a closed search).
    """
    if size_key == lr_key:
        raise LLMMTLError(f"edge rule: {lr_key!r} given as both the learning rate and the size key")
    keys = [k for k in (lr_key, size_key) if k]
    searched = sorted({k for t in trials for k in t["params"]})
    for key in keys:  # a key no trial varied is a typo, not a closed search
        if trials and key not in searched:
            raise LLMMTLError(f"edge rule: no trial of this search has {key!r} (searched: {', '.join(searched)})")
    trials = [t for t in trials if all(k in t["params"] for k in keys)]
    if not trials:
        return []
    best = _best_trial(trials)["params"]
    if not best[lr_key] > 0:
        raise LLMMTLError(f"edge rule: the best trial's {lr_key} is {best[lr_key]!r}; it cannot be halved or doubled")
    tried = [tuple(t["params"][k] for k in keys) for t in trials]
    steps = []
    for axis, key in enumerate(keys):
        here = best[key]
        line = [p[axis] for p in tried  # the tried points on this key's line through the best
                if all(p[a] == best[k] for a, k in enumerate(keys) if a != axis)]
        for factor, open_side in ((0.5, not any(v < here for v in line)), (2, not any(v > here for v in line))):
            if open_side and (key != size_key or _step(here, factor) >= 1):
                steps.append({**best, key: _step(here, factor)})
    return steps


# fixed settings that change how a run is made, not what it computes: records differing only in
# these belong to the same search (data_path: the same files in another checkout)
SETTINGS_NOT_RESULTS = ("eval_batch_size", "show_progress", "data_path", "text_cache_dir", "state")


def _same_search(fixed, other):
    def strip(f):
        return {k: v for k, v in (f or {}).items() if k not in SETTINGS_NOT_RESULTS}
    return strip(fixed) == strip(other)


def _search_trials(base, fixed):
    """This search's trials and how many recorded ones were left out: the points
    ``<base>.logged.jsonl`` holds (trials whose records were lost, with the figures a log wrote;
    they count as tried and may be the best), then every recorded trial made under the same
    fixed settings, in order."""
    logged = read_jsonl(base + ".logged.jsonl", cut_lines_ok=False)  # written by hand: a bad line is named
    for number, t in enumerate(logged, 1):
        if not isinstance(t.get("params"), dict) or not isinstance(t.get("best_valid_score"), (int, float)):
            raise LLMMTLError(f"{base}.logged.jsonl, record {number}: needs 'params' (a dict) and "
                              f"'best_valid_score' (a number)")
    recorded = list(_load_trials(base + ".trials.jsonl").values())
    same = [t for t in recorded if _same_search(t.get("fixed"), fixed)]
    return logged + same, len(recorded) - len(same)


def tune_edge(model, dataset, size_key=None, lr_key="learning_rate", config_files=None, overrides=None,
              output_dir="saved/hyper", evaluate_test=False):
    """Follow the edge rule from the trials recorded in ``output_dir`` (and any logged points):
    each step runs as a one-point search (recorded and resumable like any trial) until none is
    left; the report, re-written after each step, covers every trial of the search. Returns the
    steps that were run or read back."""
    base = os.path.join(output_dir, f"{model}-{dataset}")
    fixed = _search_fixed(model, overrides, config_files)
    trials, left_out = _search_trials(base, fixed)
    if not trials:
        raise LLMMTLError(f"--edge: no finished trial of this search in {base}.trials.jsonl; run the search "
                          f"first (--params_file, with the same fixed settings)")
    if left_out:
        print(f"edge rule: {left_out} recorded trial(s) of other settings left out")
    space = base + ".edge.hyper"
    ran = []
    while steps := edge_steps(trials, size_key, lr_key):
        for step in steps:
            print(f"edge rule: trying {step}")
            with open(space, "w", encoding="utf-8") as f:
                f.writelines(f"{k} choice [{v!r}]\n" for k, v in step.items())
            points, decode = read_space(space)
            if decode({k: v[0] for k, v in points["choice"].items()}) != step:  # e.g. a string with spaces
                raise LLMMTLError(f"edge rule: the step {step} cannot be written as a .hyper space")
            _, trials = tune(model, dataset, space, "exhaustive", 1, 1, config_files, overrides, output_dir,
                             evaluate_test, report=False)
            os.remove(space)
            if not any(t["params"] == step for t in trials):  # a step that never lands would loop
                raise LLMMTLError(f"edge rule: the step {step} was not recorded in {base}.trials.jsonl")
            ran.append(step)
            trials = _search_trials(base, fixed)[0]
            # after each step, so that a search killed in the next one leaves the whole report
            write_report(model, dataset, trials, _best_trial(trials)["params"], output_dir, overrides, config_files)
    if not ran:  # nothing to add: the report still covers the whole search
        write_report(model, dataset, trials, _best_trial(trials)["params"], output_dir, overrides, config_files)
    return ran


def rerun_command(model, dataset, params, overrides=None, config_files=None):
    """The shell command of a plain training run with ``params``, quoted so that a dict or a
    value with spaces reaches the program as one argument."""
    args = ["python", "run_recbole_llm.py", f"--model={model}", f"--dataset={dataset}"]
    if config_files:
        args.append(f"--config_files={' '.join(config_files)}")
    args += [f"--{k}={_cli_value(v)}" for k, v in {**(overrides or {}), **params}.items()]
    return shlex.join(args)


def _trial_commits(trial):
    """The commits a trial trained at (``parts_commits``); ``-`` for trials recorded before
    commits were; a logged point (its record lost) says so."""
    if trial.get("logged"):
        return f"logged, record lost ({trial['logged']})"
    return parts_commits(trial.get("parts") or ([trial["provenance"]] if trial.get("provenance") else []))


def _trial_epoch(trial):
    """The epoch early stopping kept (RecBole's rule: a tie replaces the best), recomputed from
    the trial's history; trials recorded without one (before `b8279dc` the first maximum) keep
    what they recorded."""
    if trial.get("history"):
        return kept_epoch(trial["history"], trial.get("valid_score_bigger", True))
    return trial.get("best_epoch")


def write_report(model, dataset, trials, best, output_dir, overrides=None, config_files=None):
    """``.md`` and ``.csv`` of every trial: its valid metrics, those of cold and warm valid items
    where a cold-start search recorded them, the commits it trained at, and test metrics only where a
    search was asked to read test."""
    os.makedirs(output_dir, exist_ok=True)
    base = os.path.join(output_dir, f"{model}-{dataset}")
    keys = sorted({k for t in trials for k in t["params"]})
    columns = [(split, m) for split in ("valid", "valid_cold", "valid_warm", "test")
               for m in sorted({m for t in trials for m in (t.get(split) or {})})]
    value = lambda t, split, m: (t.get(split) or {}).get(m)
    with open(base + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial"] + keys + ["valid_score", "best_epoch", "epochs", "commits"]
                   + [f"{s}_{m}" for s, m in columns])
        for i, t in enumerate(trials, 1):
            w.writerow([i] + [t["params"].get(k) for k in keys]
                       + [t["best_valid_score"], _trial_epoch(t), t.get("epochs"), _trial_commits(t)]
                       + [value(t, s, m) for s, m in columns])
    fmt = lambda v: "-" if v is None else str(v) if isinstance(v, int) else f"{v:.4f}"  # ints: counts of rows
    lines = [f"# Tuning {model} on {dataset}", "",
             "Selected on the valid score alone" + ("" if any(t.get("test") for t in trials) else "; test was not read") + ".",
             "", "| trial | " + " | ".join(keys) + " | valid score | best epoch | epochs | commits | "
             + " | ".join(f"{s.replace('_', ' ')} {m}" for s, m in columns) + " |",
             "|---" * (len(keys) + len(columns) + 5) + "|"]
    for i, t in enumerate(trials, 1):
        lines.append(f"| {i} | " + " | ".join(str(t["params"].get(k)) for k in keys)
                     + f" | {t['best_valid_score']:.4f} | {_trial_epoch(t)} | {t.get('epochs')} | {_trial_commits(t)} | "
                     + " | ".join(fmt(value(t, s, m)) for s, m in columns) + " |")
    if any(not t.get("history") for t in trials):
        lines += ["", "Best epoch: the epoch early stopping kept, recomputed from each trial's history; a trial "
                  "recorded without its history (commits `-`) shows the epoch it recorded, which before "
                  "`b8279dc` was the first maximum of a tie."]
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
    parser.add_argument("--params_file", help="RecBole .hyper search space (optional with --edge: the "
                                                 "steps then start from the trials already recorded)")
    parser.add_argument("--algo", default="exhaustive", choices=ALGOS)
    parser.add_argument("--max_evals", type=int, default=20, help="trials for random/bayes")
    parser.add_argument("--early_stop", type=int, default=10, help="stop after this many trials without progress")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files fixed for all trials")
    parser.add_argument("--output_dir", default="saved/hyper",
                        help="reports, the trial log and per-trial checkpoints (re-running resumes)")
    parser.add_argument("--evaluate_test", action="store_true",
                        help="also test every trial (off: selection reads valid only)")
    parser.add_argument("--edge", metavar="SIZE_KEY", nargs="?", const="",
                        help="then follow the edge rule: while the best trial has an untried neighbour along "
                             "the learning rate or this size key (x0.5, x2), try it (no key: learning rate only)")
    args, overrides = parse_with_overrides(parser, argv)  # other --key=value: fixed for every trial
    if not args.params_file and args.edge is None:
        parser.error("--params_file is required (or --edge, to follow the edge rule from recorded trials)")
    files = args.config_files.split() if args.config_files else None
    warn_unknown_keys(overrides, "the command line")
    try:
        if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
            raise LLMMTLError(f"--output_dir '{args.output_dir}' is a file: give a folder for the search's reports")
        if args.params_file:
            tune(args.model, args.dataset, args.params_file, args.algo, args.max_evals, args.early_stop, files,
                 overrides, args.output_dir, args.evaluate_test)
        if args.edge is not None:
            tune_edge(args.model, args.dataset, args.edge or None, config_files=files, overrides=overrides,
                      output_dir=args.output_dir, evaluate_test=args.evaluate_test)
    except LLMMTLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
