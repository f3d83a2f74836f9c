"""Benchmark LLMMTL against RecBole baselines on one dataset, identical split and protocol.

    python -m recbole_llm_mtl.benchmark --dataset amazon

Each run is a separate process (so its peak memory is its own) that goes through the same
``run()`` as the CLI. Finished runs are kept as JSON under ``<out>/runs/<dataset>/`` and
are not redone while their recorded config input and data files match what the row would
run now; a stale one (changed model YAML, override, protocol, data file or the model's
``RESULTS_VERSION``) is moved to ``stale/`` beside it and run again. A killed run
resumes from the resume state in its checkpoint folder (``--checkpoints``) unless that
state was left by other settings (it is then set aside and the row starts afresh). Writes
``<out>/<dataset>.md``, ``.csv``, ``.json`` and ``<dataset>.png`` (test NDCG@10 against
training time).

Every row runs 3 seeds. A run's JSON holds its resolved config, the config it was given
(``config_input``), package versions, commit, machine and text dtype; per-user NDCG@10 of
valid and test goes to ``<run>.users.json.gz`` (paired significance tests).
``--rerun_from_json FILE ...`` re-makes runs from their recorded config.

``--protocol titles`` runs the same split with the item title as the only text and no tags,
into ``<out>/runs/<dataset>-titles/``; a row whose model reads none of a protocol's keys
(every RecBole baseline) is the same computation under both, so its runs are shared.
"""

import argparse
import csv
import gzip
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

from recbole_llm_mtl.errors import LLMMTLError

METRICS = ["recall@10", "ndcg@10", "mrr@10", "hit@10", "recall@50", "ndcg@50", "mrr@50", "hit@50"]
SEEDS = [2020, 2021, 2022]

# name -> (model, overrides, seeds). Every model reads its properties/model/<model>.yaml and
# <model>-<dataset>.yaml, so a baseline's corrected parameters go to the first and the ones
# tuned on a dataset's valid split to the second (SASRec-amazon.yaml, LightGCN-amazon.yaml),
# and reach its row without an override here; amazon.md lists, per row, what the model YAMLs set
# and how the resolved config differs from the model's defaults. Shared protocol:
# properties/overall.yaml (MAX_ITEM_LIST_LENGTH 20, early stopping patience 10).
WITH_L_V = {"behavior": 1.0, "user_profile": 0.0, "item_semantics": 0.1}  # the default of sessions 8-10
RUNS = {
    "LLMMTL": ("LLMMTL", {}, SEEDS),
    "SASRec": ("SASRec", {}, SEEDS),
    "GRU4Rec": ("GRU4Rec", {}, SEEDS),
    "BERT4Rec": ("BERT4Rec", {}, SEEDS),
    "FDSA": ("FDSA", {}, SEEDS),
    "BPR": ("BPR", {}, SEEDS),
    "LightGCN": ("LightGCN", {}, SEEDS),
    # the default is the behaviour loss alone, without user text: L_u, L_v and user text did not
    # clear the parts rule on valid (tuning log, sessions 8-12), so they are parts one adds.
    # "+ user text + L_v" is the default of sessions 8-10; the rows built on a part row measure
    # the next part against it (PARTS names the base row)
    "LLMMTL + user text": ("LLMMTL", {"user_text": "auto"}, SEEDS),
    "LLMMTL + L_v": ("LLMMTL", {"task_weights": WITH_L_V}, SEEDS),
    "LLMMTL + user text + L_v": ("LLMMTL", {"task_weights": WITH_L_V, "user_text": "auto"}, SEEDS),
    "LLMMTL + user text + L_v + L_u": ("LLMMTL", {"task_weights": {**WITH_L_V, "user_profile": 0.1},
                                                   "user_text": "auto"}, SEEDS),
    "LLMMTL + recent titles as user text": ("LLMMTL", {"user_text": True, "user_recent_titles": True}, SEEDS),
    "LLMMTL scorer: dot": ("LLMMTL", {"scorer": "dot"}, SEEDS),
    "LLMMTL text only (no ID)": ("LLMMTL", {"item_id_embedding": False}, SEEDS),
    "LLMMTL ID only (no text)": ("LLMMTL", {"use_text": False}, SEEDS),
    # cold-start protocol: 10% of items lose every train interaction (see README)
    "cold-start: LLMMTL inductive": ("LLMMTL", {"cold_item_ratio": 0.1, "item_id_embedding": False}, SEEDS),
    "cold-start: SASRec": ("SASRec", {"cold_item_ratio": 0.1}, SEEDS),
}
# Second protocols of the same harness (``--protocol``): name -> (overrides, models refused
# with why). Rows of the models that read the overrides run under them into the protocol's own
# runs folder; a row whose model reads none of them (a RecBole model, when every key is one
# only our models read: ``config_rules.plugin_only_keys``) would be the same computation, so it
# is run and kept once, in the first protocol's folder, and both reports read it there.
# ``titles``: item text is the title alone and there are no tags, so the
# auxiliary tasks must use labels the language model derives (issue 14).
PROTOCOLS = {
    "": ({}, {}),
    # one text field: its only view is the joint text (pinned, so that runs made before
    # amazon.yaml chose per-field views stay current)
    "titles": ({"item_text_fields": ["title"], "tag_fields": [], "item_text_views": None},
               {"FDSA": "FDSA reads the item tags as features (selected_features), which this protocol removes"}),
}
BASELINES = ("SASRec", "GRU4Rec", "BERT4Rec", "FDSA", "BPR", "LightGCN")
# weaker baselines shown in a clearly marked secondary table, with why (issue 16: a weak
# baseline gets a correction or moves there); they still count when the best baseline is chosen
SECONDARY = {
    "BERT4Rec": "RecBole's defaults: no correction of it has been run (its learning-rate search would "
                "take about 1.5 h per trial on this machine)",
}
PUBLISHED = {  # not re-run: RUCAIBox/VQ-Rec README, same data and protocol (amazon as shipped only)
    "amazon": {"VQ-Rec (published, not re-run)": {"recall@10": 0.1211, "ndcg@10": 0.0643, "recall@50": 0.2369,
                                                  "ndcg@50": 0.0897}},
}


def published(args):
    """Published figures for exactly this dataset and protocol (none for other protocols)."""
    return {} if args.protocol else PUBLISHED.get(args.dataset, {})


def _slug(name, seed):
    keep = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    return f"{keep}-seed{seed}"


def _users_path(result_path):
    return result_path[: -len(".json")] + ".users.json.gz"


def _model_yaml(model, dataset):
    """What ``properties/model/<model>.yaml`` and ``<model>-<dataset>.yaml`` set (tuned or
    corrected values) at run time."""
    import yaml

    from recbole_llm_mtl.config import PROPERTIES_DIR

    values = {}
    for name in (model, f"{model}-{dataset}"):
        path = os.path.join(PROPERTIES_DIR, "model", f"{name}.yaml")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                values.update(yaml.safe_load(f) or {})
    return values


def worker(spec_path):
    """Child process: one training run; result JSON next to the spec, per-user scores in
    a gzip beside it (8k users per split would swamp the JSON)."""
    with open(spec_path) as f:
        spec = json.load(f)
    import torch

    from recbole_llm_mtl.provenance import read_parts, record_part
    from recbole_llm_mtl.quick_start import run
    from recbole_llm_mtl.trainer import load_checkpoint

    # read before training: the code and YAML that ran are the ones loaded now, and the tree
    # may move on during a run of hours; each part (a resumed or adopted run has several) is
    # kept in the checkpoint folder, so the JSON names every commit the run was made at
    start = load_checkpoint(spec["resume"], mmap=True)["epoch"] + 1 if spec.get("resume") else 0
    made_by = {**record_part(spec["checkpoint_dir"], start), "model_yaml": _model_yaml(spec["model"], spec["dataset"])}

    def timed_as(built, trainer):  # autograd anomaly detection slows training, not the numbers
        made_by["autograd_anomaly"] = torch.is_anomaly_enabled()

    result = run(spec["model"], spec["dataset"], resume=spec.get("resume"), recorded=spec.get("recorded", False),
                 config_dict={**spec["overrides"], "checkpoint_dir": spec["checkpoint_dir"]}, on_built=timed_as)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["seconds_per_epoch"] = result["fit_seconds"] / max(result["epochs"], 1)
    result["provenance"] = made_by
    result["commit"] = result["provenance"]["commit"]
    made_by["parts"] = read_parts(spec["checkpoint_dir"])  # every part, this one last
    adopted = os.path.join(spec["checkpoint_dir"], ADOPTED)
    if os.path.isfile(adopted):
        with open(adopted) as f:
            note = json.load(f)
        # trained elsewhere (--adopt) and only tested here: this process's memory and anomaly
        # state say nothing of that training (its history and fit time are the trained run's);
        # the anomaly state is the one the adopted run recorded (None: it recorded none)
        if os.path.basename(spec.get("resume") or "") == note["file"] and result["epochs"] == note["epochs"]:
            result["adopted_from"] = note
            result["peak_rss_mb"] = None
            made_by["autograd_anomaly"] = note.get("autograd_anomaly")
    _write_json(_users_path(spec["result"]), result.pop("per_user_ndcg@10"), gzip.open)
    _write_json(spec["result"], result)


def _write_json(path, data, opener=open):
    """Through a temp file and a rename: a killed worker never leaves half a result."""
    tmp = path + ".tmp"
    with opener(tmp, "wt") as f:
        json.dump(data, f, indent=None if opener is gzip.open else 1, default=str)
    os.replace(tmp, path)


def train_row(spec, result, log_path):
    """Run one spec in its own process; the path of the result JSON or None if it failed."""
    spec_path = result[:-5] + ".spec.json"
    with open(spec_path, "w") as f:
        json.dump({**spec, "result": result}, f)
    with open(log_path, "a" if spec.get("resume") else "w") as log:
        proc = subprocess.run([sys.executable, "-m", "recbole_llm_mtl.benchmark", "--worker", spec_path],
                              stdout=log, stderr=subprocess.STDOUT)
    os.unlink(spec_path)
    if proc.returncode != 0:
        print(f"    failed (exit {proc.returncode}); see {log_path}", flush=True)
        return None
    return result


def _runs_name(args, protocol=None):
    """``<dataset>[-<protocol>][-tiny]``: the runs folder and report name of an invocation."""
    protocol = args.protocol if protocol is None else protocol
    return args.dataset + (f"-{protocol}" if protocol else "") + ("-tiny" if args.tiny else "")


def _row_protocol(args, name):
    """The protocol a row runs under: this invocation's, or the first one ("") when the row's
    model reads none of its overrides (the same run serves both reports)."""
    from recbole_llm_mtl.config_rules import keys_not_read_by

    return args.protocol if set(PROTOCOLS[args.protocol][0]) - keys_not_read_by(RUNS[name][0]) else ""


def _row_dir(args, name):
    """The runs folder holding a row's JSONs."""
    return os.path.join(args.out, "runs", _runs_name(args, _row_protocol(args, name)))


def _row_overrides(args, name):
    """A row's overrides: its own, the protocol's (if its model reads them), then the
    invocation's (``--tiny``, ``--data_path``)."""
    protocol = PROTOCOLS[_row_protocol(args, name)][0]
    return {**RUNS[name][1], **protocol, **args.extra}


def run_all(args):
    todo = [(n, s) for n in (args.models or list(RUNS)) for s in RUNS[n][2][: args.max_seeds]
            if not args.seeds or s in args.seeds]
    for name in dict.fromkeys(n for n, _ in todo):  # a bad config or data folder stops here, not in N workers
        _spec_config({"model": RUNS[name][0], "dataset": args.dataset, "checkpoint_dir": args.checkpoints,
                      "overrides": _row_overrides(args, name)})
    for path in args.adopt or []:
        adopt(args, path, todo)
    for k, (name, seed) in enumerate(todo, 1):
        tag = f"[{k}/{len(todo)}] {name} seed {seed}"
        runs_dir = _row_dir(args, name)
        os.makedirs(runs_dir, exist_ok=True)
        result = os.path.join(runs_dir, _slug(name, seed) + ".json")
        # a shared row (a baseline under a second protocol) may be named by two invocations at once
        holder = _claim(result)
        if holder:
            print(f"{tag}: being run by another harness (pid {holder}), skipped", flush=True)
            continue
        try:
            _run_row(args, tag, name, seed, result)
        finally:
            os.unlink(_lock_path(result))


ADOPTED = "adopted.json"  # in a row seed's checkpoint folder: where its finished run came from


def adopt(args, path, todo):
    """``--adopt``: a finished run made elsewhere (a tuning trial of ``run_hyper_llm.py``, a
    plain run) becomes the row seed it equals, so that seed is tested rather than trained
    again. ``path`` is its resume state (``*-last.pth``), the best checkpoint beside it, or its
    checkpoint folder; it must match one row seed of this invocation in seed, config (as a
    resume is checked), results version and data. Its resume state and best model are copied
    into that seed's checkpoint folder with a note of where they came from, and the row's run
    tests them (reading the test split there, once). Anything else is refused in one line."""
    from recbole_llm_mtl.provenance import file_sha1
    from recbole_llm_mtl.trainer import (_atomic_save, latest_resume_file, load_checkpoint, recorded_config_input,
                                         run_ended)

    if os.path.isdir(path):
        resume = latest_resume_file(path)
    elif path.endswith("-last.pth"):
        resume = path
    elif path.endswith(".pth"):
        resume = path[: -len(".pth")] + "-last.pth"
    else:
        raise LLMMTLError(f"--adopt {path}: expected a checkpoint (.pth) or a run's checkpoint folder")
    if not resume or not os.path.isfile(resume):
        raise LLMMTLError(f"--adopt {path}: no resume state ({resume or 'no *-last.pth in that folder'}; "
                          "a run writes it after every epoch)")
    state = load_checkpoint(resume, mmap=True)
    config = state.get("config") or {}
    if not run_ended(state.get("cur_step", 0), config.get("stopping_step", 0), state["epoch"] + 1,
                     config.get("epochs", 0)):
        raise LLMMTLError(f"--adopt {path}: that run has not finished (epoch {state['epoch']}, early stopping "
                          "not reached); finish it first, or let the harness train the row")
    was = recorded_config_input(state)
    reasons, matches = {}, []
    for name, seed in todo:
        if RUNS[name][0] != state.get("model") or seed != config.get("seed"):
            continue
        result = os.path.join(_row_dir(args, name), _slug(name, seed) + ".json")
        spec = _row_spec(args, name, seed, result)
        why = (None if state.get("config_input", {}).get("dataset") == args.dataset else "another dataset") or (
            config_change(was, spec) or results_version_change(state, spec)
            or data_change((state.get("data") or {}).get("fingerprint"), spec))
        if why:
            reasons[name] = why
        else:
            matches.append((name, seed, result, spec["checkpoint_dir"]))
    if len(matches) != 1:
        found = "; ".join(f"{n}: {why}" for n, why in reasons.items()) or "no row of this model and seed"
        raise LLMMTLError(f"--adopt {path}: a {state.get('model')} run of seed {config.get('seed')} on "
                          f"{state.get('config_input', {}).get('dataset')}; " + (
                              f"it matches {len(matches)} rows" if matches else f"it matches no row ({found})"))
    name, seed, result, ckpt_dir = matches[0]
    note_path, here = os.path.join(ckpt_dir, ADOPTED), latest_resume_file(ckpt_dir)
    note = {"from": os.path.abspath(resume), "sha1": file_sha1(resume), "file": os.path.basename(resume),
            "epochs": state["epoch"] + 1, "autograd_anomaly": state.get("autograd_anomaly")}
    if here and os.path.isfile(note_path):
        with open(note_path) as f:
            if json.load(f).get("sha1") == note["sha1"]:
                if not os.path.exists(result):  # (adopted before parts were carried over)
                    _carry_parts(resume, ckpt_dir)
                print(f"{name} seed {seed}: {path} was adopted earlier", flush=True)
                return
    if os.path.exists(result) or here:
        raise LLMMTLError(f"--adopt {path}: {name} seed {seed} already has a run "
                          f"({result if os.path.exists(result) else here}); move it aside first to adopt another")
    best = state.get("best_file")
    if not best or not os.path.isfile(best):  # (a relative path is relative to where that run was started)
        raise LLMMTLError(f"--adopt {path}: its best model '{best}' is not there; adopt from where the run was "
                          "made, or with its checkpoint folder intact")
    os.makedirs(os.path.dirname(result), exist_ok=True)
    holder = _claim(result)
    if holder:
        raise LLMMTLError(f"--adopt {path}: {name} seed {seed} is being run by another harness (pid {holder})")
    try:
        os.makedirs(ckpt_dir, exist_ok=True)
        # the note first: a state copied here is never taken for one trained here; the files
        # through temp names, so a killed copy leaves no half-written checkpoint to resume
        _write_json(note_path, {**note, "best_from": os.path.abspath(best), "best_sha1": file_sha1(best)})
        copy = os.path.join(ckpt_dir, os.path.basename(best))
        shutil.copy2(best, copy + ".tmp")
        os.replace(copy + ".tmp", copy)
        full = load_checkpoint(resume)
        full["best_file"] = os.path.abspath(copy)  # the row tests its own copy
        _carry_parts(resume, ckpt_dir)
        _atomic_save(full, os.path.join(ckpt_dir, note["file"]))
    finally:
        os.unlink(_lock_path(result))
    print(f"{name} seed {seed}: adopted {path}; its run tests it instead of training", flush=True)


def _carry_parts(resume, ckpt_dir):
    """An adopted run's recorded parts (a tuning trial's commits) become the first parts of
    the row seed that tests it; the test then adds its own."""
    from recbole_llm_mtl.provenance import PARTS

    source = os.path.join(os.path.dirname(resume), PARTS)
    if os.path.isfile(source):
        shutil.copy2(source, os.path.join(ckpt_dir, PARTS + ".tmp"))
        os.replace(os.path.join(ckpt_dir, PARTS + ".tmp"), os.path.join(ckpt_dir, PARTS))


def _run_row(args, tag, name, seed, result):
    """One row's seed: kept if its finished run is current, else resumed or trained."""
    from recbole_llm_mtl.trainer import latest_resume_file

    spec = _row_spec(args, name, seed, result)
    ckpt_dir = spec["checkpoint_dir"]
    if os.path.exists(result):
        why = stale_reason(result, spec)
        if why is None:
            print(f"{tag}: done earlier, kept", flush=True)
            return
        moved = _set_aside(result, ckpt_dir)
        print(f"{tag}: the earlier run is stale ({why}); moved to {moved}, running it again", flush=True)
    resume = latest_resume_file(ckpt_dir)
    state = resume and _resume_state(resume)
    why = resume and (config_change(state["config_input"], spec) or results_version_change(state, spec))
    if why:  # a state left by other settings (its JSON is gone): resuming would mix the two
        moved = _set_aside(result, ckpt_dir)
        print(f"{tag}: the resume state is stale ({why}); checkpoints moved beside {moved}", flush=True)
        resume = None
    spec["resume"] = resume
    print(f"{tag}: " + (f"resuming from {resume} ..." if resume else "training ..."), flush=True)
    t0 = time.time()
    if train_row(spec, result, result[:-5] + ".log"):
        with open(result) as f:
            ndcg = json.load(f)["test_result"]["ndcg@10"]
        print(f"    test NDCG@10 {ndcg:.4f} in {time.time() - t0:.0f}s", flush=True)


def _row_spec(args, name, seed, result):
    """What one row's seed runs: model, dataset, checkpoint folder and overrides."""
    # each row checkpoints into its own folder, so a killed row resumes where it stopped
    ckpt_dir = os.path.join(args.checkpoints, os.path.basename(os.path.dirname(result)), _slug(name, seed))
    return {"model": RUNS[name][0], "dataset": args.dataset, "checkpoint_dir": ckpt_dir,
            "overrides": {**_row_overrides(args, name), "seed": seed, "show_progress": False}}


def _lock_path(result):
    return result[: -len(".json")] + ".lock"


def _claim(result):
    """Take a run's lock file (it holds our pid), or return the pid of the live process that
    holds it. A lock left by a process that is gone (killed harness) is taken over."""
    lock = _lock_path(result)
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(lock) as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return pid
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)  # PermissionError too means a live process (someone else's)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


UNRECORDED = "made before runs recorded their config"


def stale_reason(result_path, spec):
    """Why a finished run is not what ``spec`` would run now, or None if it still is: its
    recorded config input (model, dataset and overall YAML plus overrides) is compared with
    the one this invocation resolves (where and how verbosely it ran aside: ``NOT_CONFIG``), so
    a changed model YAML or override re-runs the row; so do changed data files (their
    recorded fingerprints against the files the spec would read now).
    A key added since the run with the value ``~`` is not a change: new keys default to ``~``
    where that keeps the earlier behaviour (``train_window_stride``)."""
    with open(result_path) as f:
        old = json.load(f)
    if "config_input" not in old:
        return UNRECORDED
    return (config_change(old["config_input"], spec) or results_version_change(old, spec)
            or data_change(old.get("data_fingerprint"), spec, old.get("data_files")))


def results_version_change(old, spec):
    """The model's code computes something else now than when ``old`` (a run JSON or a
    resume state) was made (its class's ``RESULTS_VERSION`` moved on), or None. Runs made
    before versions were recorded count as version 1; a model without a version (RecBole's
    own) never changes here."""
    from recbole_llm_mtl.config import get_model_class
    from recbole_llm_mtl.trainer import recorded_results_version

    now = getattr(get_model_class(spec["model"]), "RESULTS_VERSION", None)
    was = recorded_results_version(old, now)
    return None if was == now else f"model code changed: results version {was} -> {now}"


_fingerprints = {}  # (path, size, mtime) -> fingerprint: a report reads each file once


def data_change(was, spec, files=None):
    """Which atomic files the run read (``was``: name -> fingerprint) now hold other data
    in the folder ``spec`` reads, and which of the dataset's files are new there since the run
    (``files``: the ones it could read then; a new ``.review`` is user text a rerun reads), or
    None (runs made before fingerprints, or file lists, were recorded pass that check)."""
    from recbole_llm_mtl.data.dataset import readable_files
    from recbole_llm_mtl.data.validate import fingerprint_changes, read_atomic_file

    if not was and files is None:
        return None
    config = _spec_config(spec)
    new = sorted(set(readable_files(config)) - set(files) - set(was or {})) if files is not None else []
    now = {}
    for name in was or {}:
        path = os.path.join(config["data_path"], name)
        if os.path.isfile(path):
            key = (path, os.path.getsize(path), os.path.getmtime(path))
            if key not in _fingerprints:
                _fingerprints[key] = read_atomic_file(path, config["encoding"] or "utf-8",
                                                      config["field_separator"] or "\t").fingerprint()
            now[name] = _fingerprints[key]
    changed = fingerprint_changes(was or {}, now) + [f"{name} is new since training" for name in new]
    return f"data changed in {config['data_path']}: " + "; ".join(changed) if changed else None


_spec_configs = {}  # one invocation resolves (and checks the data files of) each spec once


def _spec_config(spec):
    """The config a spec resolves to now."""
    from recbole_llm_mtl.config import build_config

    key = json.dumps([spec["model"], spec["dataset"], spec["overrides"], spec["checkpoint_dir"]],
                     sort_keys=True, default=str)
    if key not in _spec_configs:
        _spec_configs[key] = build_config(spec["model"], spec["dataset"],
                                          config_dict={**spec["overrides"], "checkpoint_dir": spec["checkpoint_dir"]})
    return _spec_configs[key]


def _resume_state(path):
    """What the user set for the run that left resume state ``path`` (dataset aside), and
    the model's results version it was made under."""
    from recbole_llm_mtl.trainer import load_checkpoint, recorded_config_input

    state = load_checkpoint(path, mmap=True)  # the settings only, not the weights
    return {"config_input": recorded_config_input(state),
            **({"results_version": state["results_version"]} if "results_version" in state else {})}


def config_change(was, spec):
    """How the config input ``was`` differs from the one ``spec`` resolves now (keys of
    ``NOT_CONFIG``, keys the spec's model never reads, keys that change nothing under both
    configs (``inert_keys``) and new keys whose value is ``~`` aside), or None."""
    from recbole_llm_mtl.config_rules import keys_without_effect, with_added_keys
    from recbole_llm_mtl.trainer import plain_config

    config = _spec_config(spec)
    now = json.loads(json.dumps(plain_config(config.external_config_dict), default=str))
    was = with_added_keys(spec["model"], json.loads(json.dumps(was, default=str)))
    # a key only our models read (a dataset YAML's item_text_views) does not change a RecBole model's run
    ignored = NOT_CONFIG | keys_without_effect(spec["model"], now, {**now, **was})
    changed = sorted(k for k in set(now) | set(was) if k not in ignored and now.get(k) != was.get(k)
                     and not (k not in was and now[k] is None))
    if changed:
        return "config changed: " + ", ".join(f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in changed[:6]) + (
            f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    return None


def _set_aside(result, ckpt_dir):
    """Move a stale run's JSON, per-user scores and log to ``stale/`` beside them (nothing
    is deleted), and its checkpoint folder out of the resume path."""
    folder = os.path.join(os.path.dirname(result), "stale")
    os.makedirs(folder, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = result[: -len(".json")]
    for path in (result, _users_path(result), base + ".log"):
        if os.path.exists(path):
            os.replace(path, os.path.join(folder, f"{os.path.basename(path)}.{stamp}"))
    if os.path.isdir(ckpt_dir):
        os.replace(ckpt_dir, f"{ckpt_dir}.stale-{stamp}")
    return folder


def rerun_from_json(args):
    """Re-make runs from the config their JSONs recorded (same model, dataset and config
    input: YAML values and overrides as they were), into ``<out>/runs/rerun/<source folder>/``."""
    from recbole_llm_mtl.trainer import latest_resume_file

    out_dir = os.path.join(args.out, "runs", "rerun")
    os.makedirs(out_dir, exist_ok=True)
    for path in args.rerun_from_json:
        with open(path) as f:
            old = json.load(f)
        name = os.path.basename(path)
        if "config_input" not in old:
            print(f"{name}: no recorded config (made before runs kept one), skipped", flush=True)
            continue
        # per source folder: amazon, amazon-titles and ml-100k all have an LLMMTL-seed2020
        source = os.path.basename(os.path.dirname(os.path.abspath(path)))
        ckpt_dir = os.path.join(args.checkpoints, "rerun", source, name[:-5])
        spec = {"model": old["model"], "dataset": old["dataset"], "checkpoint_dir": ckpt_dir,
                "resume": latest_resume_file(ckpt_dir), "recorded": True,
                "overrides": {k: v for k, v in old["config_input"].items() if k != "checkpoint_dir"}}
        try:
            data = data_change(old.get("data_fingerprint"), spec, old.get("data_files"))
        except LLMMTLError:
            data = None  # the folder itself is wrong: training says so in one line
        changed = "; ".join(c for c in (results_version_change(old, spec), data) if c)
        print(f"{name}: re-making {old['model']} on {old['dataset']}"
              + (f" ({changed}: the figures may differ)" if changed else "") + " ...", flush=True)
        os.makedirs(os.path.join(out_dir, source), exist_ok=True)
        target = os.path.join(out_dir, source, name)
        result = train_row(spec, target, target[:-5] + ".log")
        if result:
            with open(result) as f:
                new = json.load(f)
            print(f"    test NDCG@10 recorded {old['test_result'].get('ndcg@10')}, "
                  f"re-made {new['test_result'].get('ndcg@10')}", flush=True)


def _load_row(args, name, seeds, notes):
    """The run JSONs of one row (seeds that finished), with their per-user scores. A run that
    the harness would find stale (its row now runs another config, other data or other model
    code) is left out, and ``notes`` says why; a run made before configs were recorded, or one
    whose data folder is not on this machine, cannot be checked and is kept (``notes`` and the
    configurations table say so)."""
    results = []
    for seed in seeds:
        path = os.path.join(_row_dir(args, name), _slug(name, seed) + ".json")
        if not os.path.exists(path):
            continue
        try:
            why = stale_reason(path, _row_spec(args, name, seed, path))
        except LLMMTLError as e:  # e.g. the data folder is elsewhere: the figures stand, unchecked
            why = None
            notes.append(f"{name} seed {seed}: kept, not checked ({e})")
        if why and why != UNRECORDED:
            notes.append(f"{name} seed {seed}: left out, stale ({why})")
            print(f"{name} seed {seed}: stale ({why}); left out of the report", flush=True)
            continue
        with open(path) as f:
            result = json.load(f)
        users = _users_path(path)
        if os.path.exists(users):
            with gzip.open(users, "rt") as f:
                result["per_user"] = json.load(f)
        results.append(result)
    return results


def _mean_std(row, key, vals):
    row[key] = statistics.mean(vals) if vals else None
    row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None


ANOMALY_MEND = "422b46a"  # from this commit on, importing RecBole's models leaves anomaly detection off


def trained_with_anomaly_detection(result):
    """Whether the run trained with autograd anomaly detection on. Runs made before it was
    recorded: RecBole's models yes (importing them turned it on, until the mend), ours no.
    A run resumed across the mend records the state of its last part (none exists). A run trained
    elsewhere and adopted, whose resume state predates the record: no where every part that
    trained it ran at a clean tree that holds the mend, else None (not known)."""
    from recbole_llm_mtl.config import plugin_models
    from recbole_llm_mtl.provenance import includes_commit

    recorded = (result.get("provenance") or {}).get("autograd_anomaly")
    if recorded is None and result.get("adopted_from"):
        parts = [p for p in (result.get("provenance") or {}).get("parts") or []
                 if (p.get("from_epoch") or 0) < result.get("epochs", float("inf"))]  # the test-only part trained nothing
        mended = parts and all(p.get("dirty") is False and includes_commit(p.get("commit"), ANOMALY_MEND)
                               for p in parts)
        return False if mended else None
    return recorded if recorded is not None else result["model"] not in plugin_models()


def summarize_row(name, results):
    """Means (± std over seeds) of test metrics, valid NDCG@10, cold/warm parts and costs."""
    row = {"model": name, "seeds": len(results)}
    for m in METRICS:
        _mean_std(row, m, [r["test_result"][m] for r in results])
    _mean_std(row, "valid_ndcg@10", [r["best_valid_result"]["ndcg@10"] for r in results])
    from recbole_llm_mtl.trainer import kept_epoch

    # from the history where there is one: runs before the mend recorded the first maximum
    epochs = [kept_epoch(r["history"], r.get("valid_score_bigger", True)) if r.get("history") else r.get("best_epoch")
              for r in results]
    epochs = [e for e in epochs if e is not None]
    row["best_epoch"] = statistics.mean(epochs) if epochs else None
    for key in ("seconds_per_epoch", "fit_seconds", "eval_seconds", "peak_rss_mb"):
        vals = [r[key] for r in results if r.get(key) is not None]
        row[key] = statistics.mean(vals) if vals else None
    anomaly = [trained_with_anomaly_detection(r) for r in results]
    row["anomaly_timed"], row["anomaly_unknown"] = anomaly.count(True), anomaly.count(None)
    for part in ("valid_cold", "valid_warm", "test_cold", "test_warm"):
        if all(part in r for r in results):
            for m in ("recall@10", "ndcg@10"):
                _mean_std(row, f"{part}_{m}", [r[part][m] for r in results])
    return row


def summarize(args):
    from recbole_llm_mtl.provenance import git_state

    rows, loaded, notes = [], {}, []
    for name in args.models or list(RUNS):
        results = _load_row(args, name, RUNS[name][2][: args.max_seeds], notes)
        if results:
            loaded[name] = results
            rows.append(summarize_row(name, results))
    args.run_commits = {p.get("commit") or "unknown" for results in loaded.values() for r in results
                        for p in (r.get("provenance", {}).get("parts") or [r])}
    significance = compare_with_best_baseline(rows, loaded)
    parts = compare_parts(rows, loaded)
    configs = {name: config_report(name, results, args.dataset) for name, results in loaded.items()}
    command = "python -m recbole_llm_mtl.benchmark " + " ".join(
        a if " " not in a else repr(a) for a in sys.argv[1:] if a != "--report_only")
    base = os.path.join(args.out, _runs_name(args))
    os.makedirs(args.out, exist_ok=True)  # --report_only into a new folder
    with open(base + ".json", "w") as f:
        json.dump({"rows": rows, "significance": significance, "parts": parts, "configs": configs,
                   "run_notes": notes, "published": published(args),
                   "commit": git_state()["commit"], "command": command}, f, indent=1, default=str)
    with open(base + ".csv", "w", newline="") as f:
        fields = list(dict.fromkeys(k for r in rows for k in r)) or ["model"]  # cold rows add columns
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    _markdown(base + ".md", rows, args, command, significance, parts, configs, notes)
    _plot(base + ".png", rows, published(args))
    print(f"wrote {base}.md/.csv/.json/.png")


def best_baseline(rows):
    """The baseline with the highest mean test NDCG@10: the hardest comparison for LLMMTL
    (valid would favour the general models, whose valid item directly follows training)."""
    baselines = [r for r in rows if r["model"] in BASELINES]
    return max(baselines, key=lambda r: r["ndcg@10"]) if baselines else None


def _per_user(loaded, name, split="test"):
    """{user: ``split`` NDCG@10 averaged over the row's seeds}."""
    from recbole_llm_mtl.significance import seed_mean

    return seed_mean([r["per_user"][split] for r in loaded[name] if (r.get("per_user") or {}).get(split)])


def compare_with_best_baseline(rows, loaded):
    """Paired test over users, test NDCG@10 (per-user means over seeds), of every LLMMTL
    row against the best baseline whose runs kept per-user scores (a run made before they
    were recorded cannot be paired; the report names the baseline used):
    {row name: paired_test result}."""
    from recbole_llm_mtl.significance import paired_test

    best = best_baseline([r for r in rows if _per_user(loaded, r["model"])])
    if best is None:
        return {}
    reference = _per_user(loaded, best["model"])
    out = {}
    for row in rows:
        if RUNS[row["model"]][0] == "LLMMTL" and not _is_cold(row) and reference:
            test = paired_test(_per_user(loaded, row["model"]), reference)
            if test:
                out[row["model"]] = {**test, "baseline": best["model"]}
    return out


# LLMMTL variants as parts: row -> (the part, +1 if the row removes it, -1 if it adds it,
# the row it is measured against: the one it differs from by that part alone)
PARTS = {
    "LLMMTL + user text": ("user text", -1, "LLMMTL"),
    # user_text True reads the profile / reviews too, so this row adds the titles to "+ user text"
    "LLMMTL + recent titles as user text": ("recent titles in user text", -1, "LLMMTL + user text"),
    "LLMMTL + L_v": ("L_v (weight 0.1)", -1, "LLMMTL"),
    "LLMMTL + user text + L_v": ("L_v (weight 0.1, with user text)", -1, "LLMMTL + user text"),
    "LLMMTL + user text + L_v + L_u": ("L_u (weight 0.1, with user text and L_v)", -1, "LLMMTL + user text + L_v"),
    "LLMMTL scorer: dot": ("MLP scorer (against dot)", 1, "LLMMTL"),
    "LLMMTL text only (no ID)": ("item ID embedding", 1, "LLMMTL"),
    "LLMMTL ID only (no text)": ("item text", 1, "LLMMTL"),
}


def compare_parts(rows, loaded):
    """What each part adds: mean NDCG@10 with the part minus without it (the part's base row
    in ``PARTS``, against the row that removes or adds it), on
    test and on valid (where decisions are taken), against seed noise (the bar: above twice
    the larger seed standard deviation of the two rows) and as a paired test over users. A row
    whose runs used the same parts as its base (recorded by the model: e.g. user text on a
    dataset with none) is the same model and is marked, not compared."""
    from recbole_llm_mtl.significance import paired_test

    by_name = {r["model"]: r for r in rows}
    out = {}
    for row in rows:
        name = row["model"]
        if name not in PARTS or _is_cold(row):
            continue
        part, sign, base = PARTS[name]
        if base not in by_name:
            out[name] = {"part": part, "base": base, "no_base": True}
            continue
        full = by_name[base]
        full_parts, row_parts = ({json.dumps(r.get("parts"), sort_keys=True) for r in loaded.get(n, [])}
                                 for n in (base, name))
        if row_parts == full_parts and "null" not in row_parts:
            out[name] = {"part": part, "base": base, "same_model": True}
            continue
        full_users = {split: _per_user(loaded, base, split) for split in ("test", "valid")}
        out[name] = {"part": part, "base": base}
        for split, key, prefix in (("test", "ndcg@10", ""), ("valid", "valid_ndcg@10", "valid_")):
            stds = [s for s in (full[key + "_std"], row[key + "_std"]) if s is not None]
            noise = max(stds) if len(stds) == 2 else None
            gain = sign * (full[key] - row[key])
            with_part, without = (full_users[split], _per_user(loaded, name, split))[::sign]
            paired = paired_test(with_part, without) or {}
            out[name].update({prefix + "gain": gain, prefix + "seed_std": noise,
                              prefix + "beyond_2std": None if noise is None else gain > 2 * noise,
                              **{prefix + k: v for k, v in paired.items()}})
    return out


# keys that say where or how verbosely a run ran, not what it computed
NOT_CONFIG = {"seed", "data_path", "checkpoint_dir", "text_cache_dir", "show_progress", "state", "gpu_id",
              "use_gpu", "local_rank", "single_spec", "worker", "dataset_save_path", "dataloaders_save_path",
              "log_wandb", "wandb_project", "nproc", "world_size", "ip", "port", "offset", "group_offset"}
_defaults = {}


def default_config(model, dataset, data_root):
    """The model's resolved config with nothing overridden (our YAMLs included), plain;
    ``data_root`` only locates the dataset files the config checks for."""
    if (model, dataset) not in _defaults:
        from recbole_llm_mtl.config import build_config
        from recbole_llm_mtl.trainer import plain_config

        config = build_config(model, dataset, config_dict={"data_path": data_root} if data_root else None)
        _defaults[model, dataset] = plain_config(config.final_config_dict)
    return _defaults[model, dataset]


def config_diff(config, reference, ignored=frozenset()):
    """{key: value} where ``config`` differs from ``reference`` (keys of NOT_CONFIG and
    ``ignored`` aside)."""
    keys = sorted((set(config) | set(reference)) - NOT_CONFIG - set(ignored))
    return {k: config.get(k) for k in keys if config.get(k) != reference.get(k)}


def config_report(name, results, dataset):
    """A row's config against the model's defaults, what its model YAML sets, and any key on
    which its seeds' configs disagree (runs made with different code or settings)."""
    from recbole_llm_mtl.config import plugin_models
    from recbole_llm_mtl.config_rules import COST_KEYS, keys_without_effect, with_added_keys

    model = results[0]["model"]

    def not_shown(*configs):  # a cost key (eval_batch_size) is shown: the times and memory follow it
        return keys_without_effect(model, *configs) - COST_KEYS

    configs = [with_added_keys(r["model"], r["config"]) for r in results if r.get("config")]
    if not configs:  # older runs kept the commit alone
        return {"recorded": False, "commits": sorted({str(r["commit"]) for r in results if r.get("commit")})}
    prov = [r.get("provenance", {}) for r in results]
    # the recorded folder only locates the files the config checks; on another machine it may be gone
    recorded = configs[0]["data_path"]
    defaults = default_config(model, dataset, os.path.dirname(recorded) if os.path.isdir(recorded) else None)
    # keys the model never reads (a dataset YAML's item_text_views, for a RecBole model), or that
    # change nothing under these configs (fine-tuning keys of a frozen model), are no difference
    return {"recorded": True, "vs_defaults": config_diff(configs[0], defaults, not_shown(configs[0], defaults)),
            "model_yaml": prov[0].get("model_yaml", {}), "plugin": model in plugin_models(),
            "seeds_disagree": sorted({k for c in configs[1:]
                                      for k in config_diff(c, configs[0], not_shown(c, configs[0]))}),
            "text_dtype": sorted({str(r.get("text_dtype")) for r in results}),
            "commits": sorted({_run_commits(r) for r in results}),
            # seeds trained by an earlier run (--adopt) and only tested at these commits
            "adopted": sorted(str(r["config"].get("seed")) for r in results if r.get("adopted_from")),
            "machines": sorted({_machine_line(p.get("machine") or {}) for p in prov}),
            "packages": sorted({json.dumps(p.get("packages"), sort_keys=True) for p in prov})}


def _run_commits(result):
    """The commits a run was made at: every recorded part (``parts_commits``), or the one its
    provenance names (runs made before parts were kept)."""
    from recbole_llm_mtl.provenance import parts_commits

    p = result.get("provenance", {})
    if p.get("parts"):
        return parts_commits(p["parts"], result.get("epochs"))
    return f"{p.get('commit')}{' (dirty)' if p.get('dirty') else ''}"


def _machine_line(m):
    return f"{m.get('cpu')}, {m.get('cores')} cores" + (f", GPU {m['gpu']}" if m.get("gpu") else "")


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


def _fmt_p(test):
    if not test:
        return "-"
    return f"{test['p_wilcoxon']:.1e}" if test["p_wilcoxon"] < 1e-3 else f"{test['p_wilcoxon']:.3f}"


def _masking_lines(rows):
    """RecBole masks the user's training items before ranking for a general recommender and
    masks nothing for a sequential one: a table holding both kinds says so (on amazon the mask
    is worth about +0.019 valid NDCG@10; tuning log, session 12)."""
    from recbole.utils import ModelType

    from recbole_llm_mtl.config import get_model_class

    models = {RUNS[r["model"]][0] for r in rows}
    general = sorted(m for m in models if get_model_class(m).type == ModelType.GENERAL)
    sequential = sorted(models - set(general))
    if not general or not sequential:
        return []
    return [f"As RecBole evaluates them, {', '.join(general)} (general recommenders) have the user's training "
            f"items masked before ranking; {', '.join(sequential)} (sequential) have nothing masked.", ""]


def _main_table(rows, significance, reference):
    """The main table, then the secondary baselines' table (``SECONDARY``) when it has rows."""
    main = [r for r in rows if not _is_cold(r) and r["model"] not in SECONDARY]
    lines = _results_table(main, significance, reference)
    secondary = [r for r in rows if r["model"] in SECONDARY]
    if secondary:
        lines += ["", "Secondary baselines, not part of the main comparison: "
                  + "; ".join(f"{r['model']}: {SECONDARY[r['model']]}" for r in secondary) + ".", ""]
        lines += _results_table(secondary, significance, {},
                                footnote_above=any(r.get("anomaly_timed") for r in main))
    return lines


def _results_table(rows, significance, reference, footnote_above=False):
    cols = METRICS
    paired_with = next((t["baseline"] for t in significance.values()), None)
    lines = ["| model | seeds | " + " | ".join(cols) + f" | valid ndcg@10 | p vs {paired_with or 'best baseline'}"
             + " | best epoch | s/epoch | train s | eval s | peak RSS MB |",
             "|---|---|" + "---|" * (len(cols) + 7)]
    for r in rows:
        p = "(reference)" if r["model"] == paired_with else _fmt_p(significance.get(r["model"]))
        slow = " †" if r.get("anomaly_timed") else ""
        lines.append(f"| {r['model']} | {r['seeds']} | " + " | ".join(_fmt(r, c) for c in cols)
                     + f" | {_fmt(r, 'valid_ndcg@10')} | {p}"
                     + f" | {'-' if r['best_epoch'] is None else format(r['best_epoch'], '.3g')}"
                     + f" | {r['seconds_per_epoch']:.1f}{slow} | {r['fit_seconds']:.0f}{slow} | {r['eval_seconds']:.1f}"
                     + f" | {'-' if r['peak_rss_mb'] is None else format(r['peak_rss_mb'], '.0f')} |")
    for name, vals in reference.items():
        lines.append(f"| {name} | - | " + " | ".join(f"{vals[c]:.4f}" if c in vals else "-" for c in cols)
                     + " | - | - | - | - | - | - | - |")
    slow = [f"{r['model']} ({r['anomaly_timed']} of {r['seeds']} seeds)" for r in rows if r.get("anomaly_timed")]
    if slow and footnote_above:
        lines += ["", "† as above: " + ", ".join(slow) + "."]
    elif slow:
        lines += ["", "† trained with autograd anomaly detection on (importing RecBole's models turned it on until "
                  "it was mended): training time inflated, metrics the same: " + ", ".join(slow) + "."]
    unknown = [f"{r['model']} ({r['anomaly_unknown']} of {r['seeds']} seeds)" for r in rows if r.get("anomaly_unknown")]
    if unknown:
        lines += ["", "Whether anomaly detection was on is not recorded for seeds trained by an earlier run "
                  "(`--adopt`) whose resume state predates that record: " + ", ".join(unknown) + "."]
    return lines


def _significance_lines(significance, rows, best):
    by_name = {r["model"]: r for r in rows}
    lines = []
    if "LLMMTL" in by_name and best:
        lines += ["", f"LLMMTL's mean test NDCG@10 is {by_name['LLMMTL']['ndcg@10'] / best['ndcg@10']:.3f}x the best "
                  f"baseline's ({best['model']}, {best['ndcg@10']:.4f}; the best by mean test NDCG@10, the "
                  f"hardest comparison); baselines run so far: "
                  f"{', '.join(r['model'] for r in rows if r['model'] in BASELINES)}."]
    if not significance:
        return lines
    lines += ["", "## Paired test over users", "",
              "Test NDCG@10 per user (averaged over the row's seeds), each row against the best baseline on "
              "the same users" + _paired_with_note(significance, best) + ": mean difference, its 95% "
              "paired-bootstrap interval and the two-sided Wilcoxon signed-rank p-value (users scored "
              "equally by both, mostly both zero, are left out of it). Seed-to-seed variance does not enter "
              "this p-value (each user's score is averaged over the seeds first): the seed standard "
              "deviations of the main table are the check against it.", "",
              "| row | vs | users | mean difference | 95% CI | Wilcoxon p |", "|---|---|---|---|---|---|"]
    for name, t in significance.items():
        lines.append(f"| {name} | {t['baseline']} | {t['users']} | {t['mean_diff']:+.4f} | "
                     f"[{t['ci95'][0]:+.4f}, {t['ci95'][1]:+.4f}] | {_fmt_p(t)} |")
    return lines


def _paired_with_note(significance, best):
    """Why the paired baseline is not the best one, when it is not."""
    paired_with = next(iter(significance.values()))["baseline"]
    if best is None or paired_with == best["model"]:
        return ""
    return (f" that has per-user scores, {paired_with} ({best['model']}'s runs have none: made before "
            "they were recorded, they cannot be paired)")


def _parts_lines(parts):
    if not parts:
        return []
    lines = ["", "## What each part adds", "",
             "Mean NDCG@10 with the part minus without it (the row that adds or removes it against the "
             "row it is built on, named in the 'against' column): a part earns its place when the gain "
             "is above twice the larger seed standard deviation of the two rows; the paired test over "
             "users (per-user means over seeds; bootstrap interval, Wilcoxon p) is the finer look. "
             "Decisions read the valid columns; the test columns are the final measurement.", "",
             "| part | row | against | test gain | 2 x seed std | beyond 2 std | 95% CI (users) | Wilcoxon p "
             "| valid gain | 2 x seed std | beyond 2 std | 95% CI (users) | Wilcoxon p |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in parts.items():
        if t.get("no_base"):
            lines.append(f"| {t['part']} | {name} | {t['base']} | not compared: {t['base']} has no current "
                         "runs in this report |" + " - |" * 9)
            continue
        if t.get("same_model"):
            lines.append(f"| {t['part']} | {name} | {t['base']} | not active on this dataset: the row is the "
                         "same model as the one it is built on |" + " - |" * 9)
            continue
        cells = []
        for prefix in ("", "valid_"):
            std = t[prefix + "seed_std"]
            ci = t.get(prefix + "ci95")
            cells += [f"{t[prefix + 'gain']:+.4f}", "-" if std is None else f"{2 * std:.4f}",
                      _beyond(t[prefix + "beyond_2std"], t[prefix + "gain"], std),
                      f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "-",
                      _fmt_p({"p_wilcoxon": t[prefix + "p_wilcoxon"]}) if prefix + "p_wilcoxon" in t else "-"]
        lines.append(f"| {t['part']} | {name} | {t['base']} | " + " | ".join(cells) + " |")
    return lines


def _beyond(beyond, gain, std):
    """The 2-std bar in words: a part that costs more than the bar says so."""
    if beyond is None:
        return "- (one seed)"
    return "yes" if beyond else ("no: costs more than 2 std" if -gain > 2 * std else "no")


def _cold_lines(rows):
    cold = [r for r in rows if _is_cold(r)]
    if not cold:
        return []
    lines = ["", "## Cold start", "",
             "10% of items (seeded) lose every train interaction; valid and test rows are split by whether "
             "the target is such a cold item. Full ranking over all items. Protocol choices are made on the "
             "valid columns; test is read once per final row.", "",
             "| model | seeds | valid cold R@10 | valid cold N@10 | valid warm R@10 | valid warm N@10 "
             "| test cold R@10 | test cold N@10 | test warm R@10 | test warm N@10 | test cold/warm R@10 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in cold:
        warm = r["test_warm_recall@10"]
        ratio = r["test_cold_recall@10"] / warm if warm else float("nan")
        lines.append(f"| {r['model']} | {r['seeds']} | " + " | ".join(
            _fmt(r, f"{split}_{part}_{m}@10") for split in ("valid", "test") for part in ("cold", "warm")
            for m in ("recall", "ndcg")) + f" | {ratio:.2f} |")
    return lines


def _kv(d):
    return ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in d.items()) or "-"


def _config_lines(configs):
    lines = ["", "## Configurations and provenance", "",
             "Per row: how the resolved config differs from the model's defaults (properties/overall.yaml, "
             "dataset and model YAML; seed and paths aside), what a baseline's model YAML sets (tuned or corrected "
             "values; LLMMTL's YAML is where its defaults are defined), the commits the seeds ran at, and the text dtype LLMMTL used. `--rerun_from_json` "
             "re-makes any run from its JSON.", "",
             "| row | differs from defaults | model YAML | commits | text dtype |", "|---|---|---|---|---|"]
    machines, packages = set(), set()
    for name, c in configs.items():
        if not c["recorded"]:
            lines.append(f"| {name} | (not recorded: run made before configs were kept) | - | "
                         f"{', '.join(c['commits']) or '-'} | - |")
            continue
        machines.update(c["machines"])
        packages.update(c["packages"])
        diff = _kv(c["vs_defaults"]) + (f"; seeds disagree on {', '.join(c['seeds_disagree'])}"
                                         if c["seeds_disagree"] else "")
        yaml_keys = ("(defines its defaults)" if c["plugin"] else
                     _kv({k: v for k, v in c["model_yaml"].items() if k != "train_neg_sample_args"}))
        adopted = (f"; seed {', '.join(c['adopted'])} trained by an earlier run (`--adopt`), tested here"
                   if c.get("adopted") else "")
        lines.append(f"| {name} | {diff} | {yaml_keys} | {', '.join(c['commits'])}{adopted} | "
                     f"{', '.join(d for d in c['text_dtype'] if d != 'None') or '-'} |")
    lines += ["", f"Machines: {'; '.join(sorted(machines)) or 'not recorded'}.",
              f"Packages: {'; '.join(sorted(packages)) or 'not recorded'}."]
    return lines


def _markdown(path, rows, args, command, significance, parts, configs, notes):
    from recbole_llm_mtl.provenance import git_state

    best = best_baseline(rows)
    lines = [f"# {_runs_name(args)}: LLMMTL vs RecBole baselines", "",
             "Leave-one-out by time, full ranking over all items, test split; mean ± std over seeds "
             "where seeds > 1; valid ndcg@10 is the best-valid score that early stopping selected on.", ""]
    if args.protocol:
        overrides, _ = PROTOCOLS[args.protocol]
        shared = [r["model"] for r in rows if _row_protocol(args, r["model"]) != args.protocol]
        lines += [f"Protocol `{args.protocol}`: {_kv(overrides)} for the models that read these keys."
                  + (f" {', '.join(shared)} read(s) none of them: the same runs as the first protocol's "
                     f"(`runs/{_runs_name(args, '')}/`)." if shared else ""), ""]
    lines += _masking_lines(rows)
    lines += _main_table(rows, significance, published(args))
    lines += _significance_lines(significance, rows, best)
    lines += _parts_lines(parts)
    lines += _cold_lines(rows)
    lines += _config_lines(configs)
    if notes:
        lines += ["", "Runs not in the figures as they are, or not checked: " + "; ".join(notes) + "."]
    if args.note:
        lines += ["", f"Note: {args.note}"]
    lines += ["", f"Command: `{command}`  ", f"Table written at commit `{git_state()['commit']}`; runs made at "
              f"{', '.join(sorted(args.run_commits)) or 'unknown'}.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _plot(path, rows, reference):
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
    for name, vals in reference.items():
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
    parser.add_argument("--protocol", default="", choices=list(PROTOCOLS),
                        help="a second protocol of the same split: titles = item text is the title alone, no tags")
    parser.add_argument("--data_path", default=None, help="data_path override (e.g. a small slice)")
    parser.add_argument("--note", default="", help="a sentence for the table's notes (e.g. machine load)")
    parser.add_argument("--report_only", action="store_true",
                        help="write the table and plot from finished runs, train nothing")
    parser.add_argument("--rerun_from_json", nargs="+", metavar="FILE",
                        help="re-make these runs from the config their JSONs recorded, "
                             "into <out>/runs/rerun/<source folder>/")
    parser.add_argument("--adopt", nargs="+", metavar="CHECKPOINT",
                        help="finished runs made elsewhere (e.g. the selected tuning trial) that equal a row seed "
                             "here: that seed is tested, not trained again")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="train only these of the rows' seeds (e.g. one seed per process on a machine with "
                             "more cores; the report still shows every finished seed)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.max_seeds < 1:  # a list slice: -1 meant "all but the last seed", 0 no run at all
        parser.error(f"--max_seeds {args.max_seeds}: give a positive number of seeds per row")
    if args.models == []:  # `--models` with no names read as "every row", the full benchmark
        parser.error("--models needs at least one row name; leave it out for every row")
    unknown = [m for m in (args.models or []) if m not in RUNS]
    if unknown:
        parser.error(f"unknown benchmark rows {unknown}; choose from {list(RUNS)}")
    refused = {m: why for m, why in PROTOCOLS[args.protocol][1].items()
               if any(RUNS[n][0] == m for n in args.models or list(RUNS))}
    if refused and args.models:
        parser.error(f"--protocol {args.protocol}: " + "; ".join(refused.values()))
    row_seeds = {s for n in args.models or list(RUNS) for s in RUNS[n][2][: args.max_seeds]}
    if set(args.seeds or ()) - row_seeds:
        parser.error(f"--seeds {sorted(set(args.seeds) - row_seeds)}: not a seed of these rows "
                     f"(their seeds: {sorted(row_seeds)})")
    if refused:  # the default rows: leave those out
        args.models = [n for n in RUNS if RUNS[n][0] not in refused]
    args.extra = {}
    if args.tiny:
        args.extra.update({"epochs": 1, "train_batch_size": 256})
    if args.data_path:
        args.extra["data_path"] = args.data_path
    try:
        if args.rerun_from_json:
            rerun_from_json(args)
            return 0
        if not args.report_only:
            run_all(args)
        summarize(args)
    except LLMMTLError as e:  # a bad config or data folder: one line, as run_recbole_llm.py says it
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
