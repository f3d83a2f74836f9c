"""RecBole HyperTuning through our run(): 2 tiny trials end to end."""

import ast
import csv
import json
import os
import shlex
from pathlib import Path

import pytest

from conftest import ROOT, tiny_overrides
from recbole_llm_mtl import hyper
from recbole_llm_mtl.config import build_config
from recbole_llm_mtl.errors import LLMMTLError
from recbole_llm_mtl.hyper import edge_steps, main, read_space, rerun_command, tune, tune_edge, write_report
from recbole_llm_mtl.quick_start import parse_args
from recbole_llm_mtl.trainer import kept_epoch


def test_trials_report_and_resume_in_order(tiny_root, cache_dir, workdir, monkeypatch):
    space = workdir / "space.hyper"
    # a dict-valued choice too: hyperopt cannot enumerate dicts, read_space stands them in
    space.write_text("# three trials\nlearning_rate choice [0.001,0.002,0.003]\ntask_weights choice [{'behavior': 1.0}]\n")
    best, trials = tune("LLMMTL", "amazon", str(space), algo="exhaustive",
                        overrides=tiny_overrides(tiny_root, cache_dir, task_weights={"behavior": 1.0}),
                        output_dir=str(workdir / "hyper"))
    assert sorted(t["params"]["learning_rate"] for t in trials) == [0.001, 0.002, 0.003]
    assert best["learning_rate"] in (0.001, 0.002, 0.003)
    best_trial = max(trials, key=lambda t: t["best_valid_score"])
    assert best_trial["params"] == best and best["task_weights"] == {"behavior": 1.0}
    assert all(t["params"]["task_weights"] == {"behavior": 1.0} for t in trials)
    table = (workdir / "hyper" / "LLMMTL-amazon.md").read_text()
    assert table.count("| 0.00") >= 2 and "python run_recbole_llm.py --model=LLMMTL" in table
    assert (workdir / "hyper" / "LLMMTL-amazon.csv").read_text().count("\n") == 4
    assert "--learning_rate=0.003" in rerun_command("LLMMTL", "amazon", {"learning_rate": 0.003})
    # the printed command survives the shell: a dict or a spaced value stays one argument
    weights = {"behavior": 1.0, "user_profile": 0.3}
    argv = shlex.split(rerun_command("LLMMTL", "amazon", {"task_weights": weights}, {"note": "a b"}, ["x.yaml", "y.yaml"]))
    args, overrides = parse_args(argv[2:])
    assert ast.literal_eval(overrides["task_weights"]) == weights and overrides["note"] == "a b"
    assert args.config_files == "x.yaml y.yaml"
    assert all(t["test"] == {} and t["valid"]["ndcg@10"] >= 0 for t in trials), "tuning read the test split"
    assert "test was not read" in table
    # each trial keeps its history and commit; the report's best epoch is the one early stopping kept
    rows = list(csv.DictReader(open(workdir / "hyper" / "LLMMTL-amazon.csv")))
    for t, row in zip(trials, rows):
        assert row["best_epoch"] == str(kept_epoch(t["history"])) == str(t["best_epoch"])
        (part,) = t["parts"]  # trained in one part, from epoch 0, at this tree's commit
        assert part["from_epoch"] == 0 and row["commits"].startswith(part["commit"]) and part["commit"] != "unknown"

    # re-running the same search resumes: finished trials are read back, none is trained again
    def no_training(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(hyper, "run", no_training)
    best2, trials2 = tune("LLMMTL", "amazon", str(space), algo="exhaustive",
                          overrides=tiny_overrides(tiny_root, cache_dir, task_weights={"behavior": 1.0}),
                          output_dir=str(workdir / "hyper"))
    scores = lambda ts: {t["params"]["learning_rate"]: t["best_valid_score"] for t in ts}
    assert best2 == best and scores(trials2) == scores(trials)
    # in the same order: a search killed in a trial resumes that trial first
    assert [t["params"] for t in trials2] == [t["params"] for t in trials]
    # the same search with a config file is another search: its trials are not those above
    extra = workdir / "extra.yaml"
    extra.write_text("weight_decay: 0.0001\n")
    with pytest.raises(AssertionError, match="trained again"):
        tune("LLMMTL", "amazon", str(space), algo="exhaustive", config_files=[str(extra)],
             overrides=tiny_overrides(tiny_root, cache_dir, task_weights={"behavior": 1.0}),
             output_dir=str(workdir / "hyper"))


def test_report_best_epoch_and_cold_columns(workdir):
    """The report recomputes the kept epoch from a trial's history (a tie replaces the best, as in
    RecBole's early stopping) and shows the valid cold/warm metrics a cold-start search selects on."""
    path = Path(ROOT) / "benchmarks" / "results" / "tuning" / "LLMMTL-amazon-behavior_items.trials.jsonl"
    trials = [json.loads(line) for line in path.read_text().splitlines()]
    for t in trials:  # as recorded before trials kept their history
        t.pop("history", None), t.pop("parts", None), t.pop("provenance", None)
    tied = dict(trials[0], history=[[0, 0.05, 1.0], [1, 0.07, 2.0], [2, 0.06, 3.0], [3, 0.07, 4.0], [4, 0.065, 5.0]],
                best_epoch=1, parts=[{"commit": "abc1234", "from_epoch": 0}, {"commit": "abc1234", "from_epoch": 2},
                                     {"commit": "def5678", "dirty": True, "from_epoch": 3}])
    late = dict(trials[1], parts=[{"commit": "def5678", "from_epoch": 61}])  # earlier parts not recorded
    write_report("LLMMTL", "amazon", [tied, late] + trials[2:], {"behavior_items": "train"}, str(workdir))
    rows = list(csv.DictReader(open(workdir / "LLMMTL-amazon.csv")))
    assert [r["best_epoch"] for r in rows] == ["3"] + [str(t["best_epoch"]) for t in trials[1:]]
    assert [r["commits"] for r in rows[:3]] == ["abc1234 -> def5678 (dirty)", "def5678 (from epoch 61)", "-"]
    assert [float(r["valid_cold_recall@10"]) for r in rows] == [t["valid_cold"]["recall@10"] for t in trials]
    table = (workdir / "LLMMTL-amazon.md").read_text()
    assert "valid cold recall@10" in table and "valid warm ndcg@10" in table
    assert f"| {trials[0]['valid_cold']['rows']} |" in table  # a count, not a metric
    assert "recorded without its history" in table  # says which epochs were not recomputed


def _committed_trials(name, first):
    """The first ``first`` records of a committed search (later ones may be appended as trials land)."""
    path = Path(ROOT) / "benchmarks" / "results" / "tuning" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()][:first]


def test_edge_steps_on_the_committed_searches():
    """The edge rule reads the searches as they were recorded: SASRec's best (0.001 x 128) is
    the lowest rate and the largest size of its grid, so both neighbours beyond it come next;
    GRU4Rec's look already went past its best on both sides; LightGCN's patience-5 best (0.005 x
    128) has rates on both sides but no larger size."""
    def point(p):
        return p["learning_rate"], p.get("hidden_size", p.get("embedding_size"))

    sasrec = _committed_trials("SASRec-amazon.trials", 6)
    assert [point(p) for p in edge_steps(sasrec, "hidden_size")] == [(0.0005, 128), (0.001, 256)]
    assert edge_steps(_committed_trials("GRU4Rec-amazon.trials", 6)) == []
    lightgcn = _committed_trials("LightGCN-amazon.trials", 8)
    assert [point(p) for p in edge_steps(lightgcn, "embedding_size")] == [(0.005, 256)]
    # the same when lower is better: the rule reads the score's direction from the record
    flipped = [{**t, "best_valid_score": -t["best_valid_score"], "valid_score_bigger": False} for t in lightgcn]
    assert edge_steps(flipped, "embedding_size") == edge_steps(lightgcn, "embedding_size")
    # a step is taken at the best point's other values (FDSA's 0.3 dropout trial at 0.001 x 128);
    # the grid points whose records were lost count as tried from their logged figures
    grid = _committed_trials("FDSA-amazon.logged", 4)
    fdsa = grid + _committed_trials("FDSA-amazon.trials", 3)
    steps = edge_steps(fdsa, "hidden_size")
    assert [point(p) for p in steps] == [(0.0005, 128), (0.001, 256)]
    assert all(p["hidden_dropout_prob"] == p["attn_dropout_prob"] == 0.3 for p in steps)
    assert [point(p) for p in edge_steps(fdsa[4:], "hidden_size")] == [(0.0005, 128), (0.001, 64), (0.001, 256)]
    # a step that becomes the best is followed: its own open sides come next
    won = [{"params": steps[0], "best_valid_score": 0.07}, {"params": steps[1], "best_valid_score": 0.06}]
    assert [point(p) for p in edge_steps(fdsa + won, "hidden_size")] == [(0.00025, 128), (0.0005, 64), (0.0005, 256)]
    # one that only ties the best does not move it, and the search is closed
    tied = [{"params": p, "best_valid_score": 0.0661} for p in steps]
    assert edge_steps(fdsa + tied, "hidden_size") == []
    assert edge_steps([], "hidden_size") == []
    with pytest.raises(LLMMTLError, match="cannot be halved"):
        edge_steps([{"params": {"learning_rate": 0.0}, "best_valid_score": 0.1}])
    # a key the search never varied is a mistake (a typo, the rate twice), not a closed search
    with pytest.raises(LLMMTLError, match="'embedding_size'.*searched: hidden_size, learning_rate"):
        edge_steps(sasrec, "embedding_size")
    with pytest.raises(LLMMTLError, match="learning_rate.*both"):
        edge_steps(sasrec, "learning_rate")
    with pytest.raises(LLMMTLError, match="'lr'"):
        edge_steps(sasrec, "hidden_size", lr_key="lr")


def test_edge_rule_runs_its_steps_and_resumes(tiny_root, cache_dir, workdir, monkeypatch):
    """`--edge` runs each step as a recorded trial (real training on the tiny slice), stops when
    the best has a tried neighbour on every side, reports every trial, and trains nothing twice.
    The search's earlier points are written here with scores no trained step can reach, so the
    steps are known: 0.001 (below the best's rate) and size 64 (above its size). One of them is
    a logged point (its record lost); a trial made under other settings (patience 5) is not part
    of this search, though it scored best."""
    out = workdir / "hyper"
    out.mkdir()
    overrides = tiny_overrides(tiny_root, cache_dir, task_weights={"behavior": 1.0})
    fixed = {**overrides, "eval_batch_size": 128}  # an evaluation batch size is not a result setting

    def record(rate, size, score, **extra):
        return json.dumps({"params": {"learning_rate": rate, "hidden_size": size}, "test": {}, "valid": {"ndcg@10": score},
                           "best_valid_score": score, "best_epoch": 0, "epochs": 1, **extra}) + "\n"

    (out / "LLMMTL-amazon.trials.jsonl").write_text(
        record(0.002, 32, 1.0, fixed=fixed) + record(0.004, 32, 0.5, fixed=fixed)
        + record(0.002, 128, 2.0, fixed={**fixed, "stopping_step": "5"}))
    (out / "LLMMTL-amazon.logged.jsonl").write_text(record(0.002, 16, 0.5, logged="a log"))
    ran = tune_edge("LLMMTL", "amazon", "hidden_size", overrides=overrides, output_dir=str(out))
    assert ran == [{"learning_rate": 0.001, "hidden_size": 32}, {"learning_rate": 0.002, "hidden_size": 64}]
    records = [json.loads(line) for line in (out / "LLMMTL-amazon.trials.jsonl").read_text().splitlines()]
    assert [r["params"] for r in records[3:]] == ran and all(r["test"] == {} and r["history"] for r in records[3:])
    rows = list(csv.DictReader(open(out / "LLMMTL-amazon.csv")))  # every trial of the search: logged, grid, steps
    assert [(float(r["learning_rate"]), int(r["hidden_size"])) for r in rows] == [
        (0.002, 16), (0.002, 32), (0.004, 32), (0.001, 32), (0.002, 64)]
    assert rows[0]["commits"] == "logged, record lost (a log)" and not os.path.exists(out / "LLMMTL-amazon.edge.hyper")

    def no_training(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(hyper, "run", no_training)
    assert tune_edge("LLMMTL", "amazon", "hidden_size", overrides=overrides, output_dir=str(out)) == []
    with pytest.raises(SystemExit):  # neither a space nor the edge rule: nothing to do
        main(["--model=LLMMTL", "--dataset=amazon", f"--output_dir={out}"])
    assert main(["--model=LLMMTL", "--dataset=amazon", f"--output_dir={workdir / 'none'}", "--edge=hidden_size"]) == 2


@pytest.mark.parametrize("line, message", [
    ('{"params": {"learning_rate": 0.001}, "best_valid_score": 0.06\n', "line 2: not a JSON record"),
    ('{"params": {"learning_rate": 0.001}}\n', "record 2: needs 'params' \\(a dict\\) and 'best_valid_score'"),
])
def test_a_bad_logged_point_is_named(workdir, line, message):
    """Logged points are written by hand: a bad line is an error naming the file and the line,
    before anything trains or any report is written."""
    out = workdir / "hyper"
    out.mkdir()
    logged = out / "BPR-amazon.logged.jsonl"
    logged.write_text('{"params": {"learning_rate": 0.002}, "best_valid_score": 0.05}\n' + line)
    with pytest.raises(LLMMTLError, match=message) as e:
        tune_edge("BPR", "amazon", output_dir=str(out))
    assert str(logged) in str(e.value) and os.listdir(out) == ["BPR-amazon.logged.jsonl"]


def test_shipped_spaces_parse():
    """Every shipped space builds; an all-choice one builds for exhaustive search (RecBole's
    own reader fails there on dict options such as task_weights) with the full grid size."""
    import ast
    import math

    from recbole.trainer import HyperTuning

    names = sorted(os.listdir(os.path.join(ROOT, "properties", "hyper")))
    assert {"LLMMTL.hyper", "LLMMTL-tasks.hyper", "SASRec.hyper", "FDSA.hyper", "LightGCN.hyper"} <= set(names)
    for name in names:
        path = os.path.join(ROOT, "properties", "hyper", name)
        space, decode = read_space(path)
        exhaustive = set(space) == {"choice"}
        tuner = HyperTuning(lambda *a: None, params_dict=space, algo="exhaustive" if exhaustive else "random")
        assert tuner.space, name
        assert "learning_rate" in tuner.space or name == "LLMMTL-tasks.hyper", name
        if exhaustive:
            assert tuner.max_evals == math.prod(len(v) for v in space["choice"].values()), name
        with open(path) as f:  # every option decodes to the value the file wrote
            written = {line.split()[0]: ast.literal_eval("".join(line.split()[2:]))
                       for line in f if line.split()[1:2] == ["choice"]}
        for key, values in written.items():
            assert [decode({key: v})[key] for v in space["choice"][key]] == values, (name, key)


@pytest.mark.parametrize("text, message", [
    ("learning_rate\n", "line 2: expected"),
    ("learning_rate choice 0.001\n", "line 2: choice 'learning_rate' needs a non-empty list of Python literals"),
    ("learning_rate choice [0.001,\n", "needs a non-empty list of Python literals"),
    ("learning_rate uniform 0.1\n", "uniform 'learning_rate' needs 2 comma-separated numbers"),
    ("learning_rate normal 0,1\n", "unknown type 'normal'"),
    ("hidden_size uniform 0,1\n", "line 2: 'hidden_size' is already defined on line 1"),
    # every trial was the same run (the key reached no model), and a "best" was reported
    ("learnig_rate choice [0.0001,0.1]\n", "line 2: 'learnig_rate' is not a RecBole/LLMMTL config key; "
                                           "did you mean 'learning_rate'"),
])
def test_bad_space_lines_are_named(workdir, text, message):
    path = workdir / "bad.hyper"
    path.write_text("hidden_size choice [64]\n" + text)
    with pytest.raises(LLMMTLError, match=message) as e:
        read_space(str(path), "SASRec")
    assert str(path) in str(e.value)


def test_space_keys_the_model_reads_in_code_are_kept(workdir):
    """RecBole models read some keys no YAML declares (AutoInt's has_residual): not typos."""
    path = workdir / "autoint.hyper"
    path.write_text("has_residual choice [True,False]\nlearning_rate choice [0.001]\n")
    assert read_space(str(path), "AutoInt")[0]["choice"]["has_residual"] == [True, False]
    with pytest.raises(LLMMTLError, match="'has_residual' is not a RecBole/LLMMTL config key"):
        read_space(str(path), "SASRec")


def test_exhaustive_search_over_a_range_is_refused(tiny_root, cache_dir, workdir):
    """hyperopt's exhaustive search drew a single point of a range and reported it as the best."""
    path = workdir / "range.hyper"
    path.write_text("learning_rate loguniform -8,-2\n")
    with pytest.raises(LLMMTLError, match=r"exhaustive enumerates choice lists, and this space has only ranges "
                                          r"\(learning_rate\): it would run one trial"):
        tune("SASRec", "amazon", str(path), "exhaustive", overrides=tiny_overrides(tiny_root, cache_dir),
             output_dir=str(workdir / "out"))
    assert not os.path.exists(workdir / "out" / "SASRec-amazon.trials.jsonl")


def test_output_dir_that_is_a_file(workdir, capsys):
    """Was a FileExistsError traceback from makedirs."""
    (workdir / "taken").write_text("x")
    (workdir / "space.hyper").write_text("learning_rate choice [0.001]\n")
    assert main(["--model=SASRec", "--params_file=space.hyper", "--output_dir=taken"]) == 2
    assert capsys.readouterr().err.strip() == "error: --output_dir 'taken' is a file: give a folder for the search's reports"


def test_space_file_encoding(workdir):
    path = workdir / "space.hyper"
    path.write_bytes("\ufeffhidden_size choice [64,128]\n".encode("utf-8"))  # a Windows editor's BOM
    assert read_space(str(path))[0] == {"choice": {"hidden_size": [64, 128]}}
    path.write_bytes(b"hidden_size choice [64]  # caf\xe9\n")
    with pytest.raises(LLMMTLError, match="not UTF-8 text"):
        read_space(str(path))


# each tuned baseline's search records, as committed; its <model>-amazon.yaml must hold their best
TUNED_SEARCHES = {"LightGCN": ["LightGCN-amazon-p10.trials"], "BPR": ["BPR-amazon.trials"],
                  "GRU4Rec": ["GRU4Rec-amazon.trials"],
                  "SASRec": ["SASRec-amazon.trials", "SASRec-amazon-dropout.trials", "SASRec-amazon-edge.trials"]}


@pytest.mark.parametrize("model", sorted(TUNED_SEARCHES))
def test_tuned_yaml_holds_its_search_best(model):
    """The config a row trains with is its search's best point by valid (ties keep the earlier
    record), through every YAML a run reads: a search that moves without its YAML, or a YAML
    edited by hand, fails here."""
    trials = [t for name in TUNED_SEARCHES[model] for t in _committed_trials(name, None)]
    best = max(trials, key=lambda t: t["best_valid_score"])  # max keeps the first of equals
    config = build_config(model, "amazon")
    assert {k: config[k] for k in best["params"]} == best["params"]
