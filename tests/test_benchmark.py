"""The benchmark harness end to end on the tiny slice: table, CSV, JSON, plot, resume,
provenance, per-user scores, the paired test and re-making a run from its JSON."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def test_harness_tiny_and_resumable(tiny_root, workdir):
    out = workdir / "results"
    cmd = [sys.executable, "-m", "recbole_llm_mtl.benchmark", "--dataset", "amazon", "--tiny", "--data_path", tiny_root,
           "--models", "LLMMTL", "LLMMTL + L_v", "LLMMTL + user text", "BPR", "--max_seeds", "1",
           "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    first = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "LLMMTL seed 2020: training" in first.stdout and "BPR seed 2020: training" in first.stdout
    for ext in ("md", "csv", "json", "png"):
        assert (out / f"amazon-tiny.{ext}").stat().st_size > 0
    table = (out / "amazon-tiny.md").read_text()
    assert "| LLMMTL | 1 |" in table and "| BPR | 1 |" in table and "VQ-Rec (published, not re-run)" in table
    data = json.loads((out / "amazon-tiny.json").read_text())
    assert {r["model"] for r in data["rows"]} == {"LLMMTL", "LLMMTL + L_v", "LLMMTL + user text", "BPR"}
    assert data["commit"]
    # what the left-out part adds: full minus ablation, paired over the same users
    part = data["parts"]["LLMMTL + L_v"]  # an added part: the row with it against full LLMMTL
    assert part["part"] == "L_v (weight 0.1)" and part["base"] == "LLMMTL"
    assert part["beyond_2std"] is None and part["users"] == 300  # one seed: no seed std to compare with
    assert abs(part["gain"] - part["mean_diff"]) < 1e-4
    # ... and on valid, where decisions are taken (per-user valid scores of the best checkpoint)
    assert part["valid_beyond_2std"] is None and part["valid_users"] == 300
    assert abs(part["valid_gain"] - part["valid_mean_diff"]) < 1e-4 and part["valid_gain"] != part["gain"]
    assert "## What each part adds" in table and "| L_v (weight 0.1) | LLMMTL + L_v | LLMMTL | " in table
    # the slice has no profile fields or reviews: "+ user text" (read where the dataset has
    # some) computes what LLMMTL does, and the table says so instead of a gain
    assert data["parts"]["LLMMTL + user text"] == {"part": "user text", "base": "LLMMTL", "same_model": True}
    assert "| user text | LLMMTL + user text | LLMMTL | not active on this dataset" in table
    assert "| part | row | against | test gain |" in table and "| valid gain |" in table
    _check_provenance(out / "runs" / "amazon-tiny" / "LLMMTL-seed2020.json")
    # BPR trained as fast as it can: importing RecBole's models left anomaly detection off
    assert json.loads((out / "runs" / "amazon-tiny" / "BPR-seed2020.json").read_text())[
        "provenance"]["autograd_anomaly"] is False and "†" not in table
    # the paired test over users: LLMMTL against the only (so the best) baseline
    test = data["significance"]["LLMMTL"]
    assert test["baseline"] == "BPR" and test["users"] == 300 and 0 <= test["p_wilcoxon"] <= 1
    assert test["ci95"][0] <= test["mean_diff"] <= test["ci95"][1]
    assert "## Paired test over users" in table and "| BPR | 1 |" in table and "(reference)" in table
    assert "## Configurations and provenance" in table and "`epochs: 1`" in table
    second = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert second.stdout.count("done earlier, kept") == 4 and "training ..." not in second.stdout
    # a second protocol: LLMMTL reads its keys and runs into the protocol's own folder; BPR
    # reads none of them, so its run of the first protocol serves both reports
    titles_cmd = cmd[:cmd.index("--models")] + ["--protocol", "titles", "--models", "LLMMTL", "BPR",
                                                "--max_seeds", "1", "--out", str(out)]
    titles = subprocess.run(titles_cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert titles.returncode == 0, titles.stderr[-2000:]
    assert "LLMMTL seed 2020: training" in titles.stdout and "BPR seed 2020: done earlier, kept" in titles.stdout
    assert not (out / "runs" / "amazon-titles-tiny" / "BPR-seed2020.json").exists()
    recorded = json.loads((out / "runs" / "amazon-titles-tiny" / "LLMMTL-seed2020.json").read_text())["config_input"]
    assert recorded["item_text_fields"] == ["title"] and recorded["tag_fields"] == []
    assert recorded["item_text_views"] is None  # one field: its joint text, the same vectors either way
    titles_table = (out / "amazon-titles-tiny.md").read_text()
    assert "| BPR | 1 |" in titles_table and "BPR read(s) none of them" in titles_table
    refused = subprocess.run(titles_cmd[:titles_cmd.index("--models") + 1] + ["FDSA"], cwd=workdir, env=env,
                             capture_output=True, text=True, timeout=900)
    assert refused.returncode == 2 and "FDSA reads the item tags as features" in refused.stderr
    # a run made with other settings than the row now has is stale: set aside, run again
    bpr = out / "runs" / "amazon-tiny" / "BPR-seed2020.json"
    old = json.loads(bpr.read_text())
    old["config_input"]["learning_rate"] = 0.123
    # ... but not for a key that only our model reads (a dataset YAML's item text views): BPR
    # never reads it, LLMMTL does
    assert old["config_input"]["item_text_views"] == "fields"
    old["config_input"]["item_text_views"] = "joint"
    bpr.write_text(json.dumps(old))
    plus_lv = out / "runs" / "amazon-tiny" / "LLMMTL___L_v-seed2020.json"
    lv = json.loads(plus_lv.read_text())
    lv["config_input"]["item_text_views"] = "joint"
    plus_lv.write_text(json.dumps(lv))
    # a report alone trains nothing, and leaves stale runs out rather than showing them under
    # a row that now runs something else
    report = subprocess.run(cmd + ["--report_only"], cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert report.returncode == 0, report.stderr[-2000:]
    assert ("BPR seed 2020: stale (config changed: learning_rate 0.123 -> 0.001); left out of the report"
            in report.stdout)
    data = json.loads((out / "amazon-tiny.json").read_text())
    assert {r["model"] for r in data["rows"]} == {"LLMMTL", "LLMMTL + user text"}
    assert len(data["run_notes"]) == 2 and all("left out, stale" in n for n in data["run_notes"])
    assert "Runs not in the figures as they are" in (out / "amazon-tiny.md").read_text()
    third = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "LLMMTL seed 2020: done earlier, kept" in third.stdout
    assert "BPR seed 2020: the earlier run is stale (config changed: learning_rate 0.123 -> 0.001)" in third.stdout
    assert ("LLMMTL + L_v seed 2020: the earlier run is stale (config changed: item_text_views 'joint' -> 'fields')"
            in third.stdout)
    kept = list((out / "runs" / "amazon-tiny" / "stale").glob("BPR-seed2020.json.*"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["config_input"]["learning_rate"] == 0.123
    assert json.loads(bpr.read_text())["config_input"]["learning_rate"] == 0.001
    # a run made on other data (a file's recorded fingerprint differs) is stale too
    old = json.loads(bpr.read_text())
    assert set(old["data_fingerprint"]) == {"amazon.inter", "amazon.item"}
    old["data_fingerprint"]["amazon.inter"]["sha256"] = "0" * 64
    bpr.write_text(json.dumps(old))
    fourth = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    assert "BPR seed 2020: the earlier run is stale (data changed in " in fourth.stdout
    assert "amazon.inter has other content (same number of rows))" in fourth.stdout
    assert fourth.stdout.count("done earlier, kept") == 3
    # a run made by model code that computes something else now (RESULTS_VERSION) is stale;
    # a run from before versions were recorded counts as version 1; RecBole's models have none
    assert json.loads(bpr.read_text())["results_version"] is None
    runs = out / "runs" / "amazon-tiny"
    for slug, version in (("LLMMTL-seed2020", 0), ("LLMMTL___L_v-seed2020", None)):
        path = runs / f"{slug}.json"
        old = json.loads(path.read_text())
        assert old["results_version"] == 1
        if version is None:
            del old["results_version"]
        else:
            old["results_version"] = version
        path.write_text(json.dumps(old))
    fifth = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert fifth.returncode == 0, fifth.stderr[-2000:]
    assert "LLMMTL seed 2020: the earlier run is stale (model code changed: results version 0 -> 1)" in fifth.stdout
    assert fifth.stdout.count("done earlier, kept") == 3
    # ... and so is a resume state left by other model code: not resumed, the row trains afresh
    import torch

    (resume,) = (workdir / "saved" / "benchmark" / "amazon-tiny" / "LLMMTL-seed2020").glob("*-last.pth")
    state = torch.load(resume, weights_only=True)
    assert state["results_version"] == 1
    state["results_version"] = 0
    torch.save(state, resume)
    (runs / "LLMMTL-seed2020.json").unlink()
    sixth = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert sixth.returncode == 0, sixth.stderr[-2000:]
    assert "LLMMTL seed 2020: the resume state is stale (model code changed: results version 0 -> 1)" in sixth.stdout
    assert "LLMMTL seed 2020: training ..." in sixth.stdout
    # a run that another live harness holds (its lock names a live pid) is skipped, not run twice
    # into the same files; a lock left by a process that is gone is taken over
    (runs / "BPR-seed2020.json").unlink()
    lock = runs / "BPR-seed2020.lock"
    lock.write_text(str(os.getpid()))
    seventh = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert seventh.returncode == 0, seventh.stderr[-2000:]
    assert f"BPR seed 2020: being run by another harness (pid {os.getpid()}), skipped" in seventh.stdout
    assert not (runs / "BPR-seed2020.json").exists() and lock.read_text() == str(os.getpid())
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(gone.stdout.strip())
    eighth = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert eighth.returncode == 0, eighth.stderr[-2000:]
    assert "BPR seed 2020: resuming from " in eighth.stdout  # its checkpoints of the run unlinked above
    assert (runs / "BPR-seed2020.json").exists() and not lock.exists()


def test_harness_finishes_a_run_killed_after_training(tiny_root, workdir):
    """A row whose process died after its last epoch (before writing its result) is finished
    from its resume state: tested, not trained again, with the same metrics."""
    out = workdir / "results"
    cmd = [sys.executable, "-m", "recbole_llm_mtl.benchmark", "--dataset", "amazon", "--tiny", "--data_path", tiny_root,
           "--models", "BPR", "--max_seeds", "1", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    first = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    result = out / "runs" / "amazon-tiny" / "BPR-seed2020.json"
    before = json.loads(result.read_text())
    result.unlink()  # as if the process had died between its last epoch and its result
    second = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "BPR seed 2020: resuming from" in second.stdout
    log = (out / "runs" / "amazon-tiny" / "BPR-seed2020.log").read_text()
    assert log.count("epoch 0 training") == 1 and "nothing left to train" in log
    after = json.loads(result.read_text())
    assert after["test_result"] == before["test_result"]
    # progress is carried from the resume state (its seconds are those at the last epoch's end)
    assert (after["epochs"], after["best_epoch"], after["history"]) == (
        before["epochs"], before["best_epoch"], before["history"])
    assert 0 < after["fit_seconds"] <= before["fit_seconds"]
    # both processes are named: the one that trained (from epoch 0) and the one that only tested
    parts = after["provenance"]["parts"]
    assert [p["from_epoch"] for p in parts] == [0, after["epochs"]]
    assert parts[0] == before["provenance"]["parts"][0] and after["commit"] == parts[-1]["commit"]
    # a resume state left by other settings is not resumed: the row trains afresh
    import torch

    (resume,) = (workdir / "saved" / "benchmark" / "amazon-tiny" / "BPR-seed2020").glob("*-last.pth")
    state = torch.load(resume, weights_only=True)
    state["config_input"]["learning_rate"] = 0.5
    torch.save(state, resume)
    result.unlink()
    third = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "BPR seed 2020: the resume state is stale (config changed: learning_rate 0.5 -> 0.001)" in third.stdout
    assert "BPR seed 2020: training ..." in third.stdout and result.exists()
    # the stale parts went aside with their checkpoints: the new run is one part, from epoch 0
    assert [p["from_epoch"] for p in json.loads(result.read_text())["provenance"]["parts"]] == [0]


def test_seeds_trains_only_the_seeds_named(tiny_root, workdir):
    """``--seeds``: one process per seed (the others run elsewhere); a seed no row has is refused."""
    out = workdir / "results"
    cmd = [sys.executable, "-m", "recbole_llm_mtl.benchmark", "--dataset", "amazon", "--tiny", "--data_path", tiny_root,
           "--models", "BPR", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(cmd + ["--seeds", "2021"], cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[1/1] BPR seed 2021: training" in proc.stdout and "seed 2020" not in proc.stdout
    assert sorted(p.name for p in (out / "runs" / "amazon-tiny").glob("*.json")) == ["BPR-seed2021.json"]
    refused = subprocess.run(cmd + ["--seeds", "7"], cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert refused.returncode == 2 and "--seeds [7]: not a seed of these rows" in refused.stderr


def test_parts_name_every_commit_a_run_was_made_at():
    """A run resumed at another commit names both; one adopted and only tested names the
    tester as such; one whose first parts were not recorded says where its record starts."""
    from recbole_llm_mtl.provenance import parts_commits

    trained = [{"commit": "aaa1111", "from_epoch": 0}, {"commit": "bbb2222", "dirty": True, "from_epoch": 12}]
    assert parts_commits(trained, 30) == "aaa1111 -> bbb2222 (dirty)"
    assert parts_commits(trained + [{"commit": "ccc3333", "from_epoch": 30}], 30) == (
        "aaa1111 -> bbb2222 (dirty) -> ccc3333 (tested)")
    assert parts_commits([{"commit": "ccc3333", "from_epoch": 7}], 30) == "ccc3333 (from epoch 7)"
    assert parts_commits([{"commit": "ccc3333", "from_epoch": 30}], 30) == "ccc3333 (tested)"
    assert parts_commits([]) == "-"


def test_a_part_line_cut_by_a_kill_is_skipped(tmp_path):
    """A process killed while appending its part leaves half a line; reading the parts after a
    finished run must not fail on it (the run's result would be lost)."""
    from recbole_llm_mtl.provenance import PARTS, read_parts, record_part

    record_part(str(tmp_path), 0)
    with open(tmp_path / PARTS, "a") as f:
        f.write('{"commit": "abc12')
    record_part(str(tmp_path), 5)
    assert [p["from_epoch"] for p in read_parts(str(tmp_path))] == [0, 5]
    assert (tmp_path / PARTS).read_text().count("\n") == 3  # two whole lines and the cut one, no blank


def _check_provenance(path):
    """A run JSON says what ran where: resolved config, versions, commit, machine, dtype;
    its per-user scores average to its reported NDCG@10."""
    run = json.loads(path.read_text())
    assert run["config"]["model"] == "LLMMTL" and run["config"]["epochs"] == 1 and run["config_input"]["seed"] == 2020
    prov = run["provenance"]
    assert set(prov["packages"]) >= {"torch", "recbole", "transformers", "numpy", "pandas"}
    assert prov["commit"] and prov["dirty"] in (True, False) and prov["machine"]["cores"] > 0
    assert prov["model_yaml"]["learning_rate"] > 0
    assert run["text_dtype"] in ("float32", "bfloat16")
    assert set(run["data_fingerprint"]) == {"amazon.inter", "amazon.item"} == set(run["data_files"])
    with gzip.open(str(path)[: -len(".json")] + ".users.json.gz", "rt") as f:
        users = json.load(f)
    for split, result in (("valid", run["best_valid_result"]), ("test", run["test_result"])):
        assert len(users[split]) == 300
        assert abs(sum(users[split].values()) / 300 - result["ndcg@10"]) < 1e-4


def test_rerun_from_json_remakes_the_run(tiny_root, workdir):
    """A run re-made from the config its JSON recorded gets the same test metrics."""
    out = workdir / "results"
    cmd = [sys.executable, "-m", "recbole_llm_mtl.benchmark", "--dataset", "amazon", "--tiny", "--data_path", tiny_root,
           "--models", "BPR", "--max_seeds", "1", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    assert subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900).returncode == 0
    original = out / "runs" / "amazon-tiny" / "BPR-seed2020.json"
    proc = subprocess.run([sys.executable, "-m", "recbole_llm_mtl.benchmark", "--out", str(out),
                           "--rerun_from_json", str(original)], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    remade = json.loads((out / "runs" / "rerun" / "amazon-tiny" / "BPR-seed2020.json").read_text())
    before = json.loads(original.read_text())
    assert remade["config"] == before["config"] | {"checkpoint_dir": remade["config"]["checkpoint_dir"]}
    assert remade["test_result"] == before["test_result"]


def test_published_figures_only_for_their_own_dataset_and_protocol():
    """VQ-Rec's figures are on amazon as shipped: the ml-100k and titles-only tables used to
    show them as a reference line too."""
    from argparse import Namespace

    from recbole_llm_mtl.benchmark import published

    assert "VQ-Rec (published, not re-run)" in published(Namespace(dataset="amazon", protocol=""))
    assert published(Namespace(dataset="amazon", protocol="titles")) == {}
    assert published(Namespace(dataset="ml-100k", protocol="")) == {}


def test_harness_bad_data_folder_is_one_line(workdir):
    """A wrong --data_path stops before any worker starts: one line, exit 2, no traceback."""
    cmd = [sys.executable, "-m", "recbole_llm_mtl.benchmark", "--dataset", "amazon", "--data_path",
           str(workdir / "nowhere"), "--models", "BPR", "--max_seeds", "1", "--out", str(workdir / "results")]
    proc = subprocess.run(cmd, cwd=workdir, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: dataset folder '{workdir / 'nowhere' / 'amazon'}' not found" in proc.stderr
    assert "Traceback" not in proc.stderr and "training" not in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--models", "BPR", "--max_seeds", "-1"], "--max_seeds -1: give a positive number"),  # ran 2 seeds
    (["--models", "BPR", "--max_seeds", "0"], "--max_seeds 0: give a positive number"),  # ran nothing
    (["--models"], "--models needs at least one row name"),  # ran every row
])
def test_harness_row_and_seed_arguments(args, message, workdir, capsys):
    from recbole_llm_mtl.benchmark import main

    with pytest.raises(SystemExit) as e:
        main(["--dataset", "amazon", "--out", str(workdir / "results"), "--data_path", str(workdir / "nowhere")] + args)
    assert e.value.code == 2 and f"error: {message}" in capsys.readouterr().err


def test_fingerprint_changes_name_each_kind_of_change(tiny_root):
    """A file gone, a file new, other rows, other content: each named as what happened."""
    from recbole_llm_mtl.data.validate import fingerprint_changes, read_atomic_file

    inter, item = (read_atomic_file(os.path.join(tiny_root, "amazon", f"amazon.{s}"), "utf-8", "\t").fingerprint()
                   for s in ("inter", "item"))
    assert fingerprint_changes({"amazon.inter": inter}, {"amazon.inter": inter}) == []
    assert fingerprint_changes({"amazon.inter": inter, "amazon.item": item}, {"amazon.inter": inter}) == [
        "amazon.item was read at training and is missing now"]
    assert fingerprint_changes({"amazon.inter": inter}, {"amazon.inter": inter, "amazon.item": item}) == [
        "amazon.item is new since training"]
    assert fingerprint_changes({"amazon.inter": inter}, {"amazon.inter": item}) == [
        f"amazon.inter has {item['rows']} rows (was {inter['rows']})"]
    assert fingerprint_changes({"amazon.inter": inter}, {"amazon.inter": {**inter, "sha256": "0" * 64}}) == [
        "amazon.inter has other content (same number of rows)"]


def test_config_report_leaves_out_keys_the_model_never_reads(tiny_root):
    """A dataset YAML's item_text_views is no difference for BPR (it never reads it), and
    seeds made before and after the key came do not disagree; a key BPR reads still shows."""
    from recbole_llm_mtl.benchmark import config_report, default_config

    defaults = default_config("BPR", "amazon", tiny_root)
    config = {**defaults, "data_path": os.path.join(tiny_root, "amazon"), "learning_rate": 0.01}
    runs = [{"model": "BPR", "config": {**config, "item_text_views": "joint"}},
            {"model": "BPR", "config": {**config, "item_text_views": None}}]
    report = config_report("BPR", runs, "amazon")
    assert report["vs_defaults"] == {"learning_rate": 0.01} and report["seeds_disagree"] == []
    llmmtl = config_report("LLMMTL", [{**r, "model": "LLMMTL"} for r in runs], "amazon")
    assert llmmtl["seeds_disagree"] == ["item_text_views"]


def test_a_data_file_added_since_the_run_makes_it_stale(tiny_root, tmp_path):
    """A run records the dataset's files it could read; one added since that the model reads
    (a .user file; a .review file for LLMMTL reading user text) makes the run stale,
    named; a file the model never reads (.review or .kg for BPR, a README) does not, and runs that
    recorded no file list (made before it was kept) are checked on their fingerprints alone."""
    import shutil

    from recbole_llm_mtl.benchmark import _spec_config, data_change
    from recbole_llm_mtl.data.dataset import readable_files
    from recbole_llm_mtl.data.validate import read_atomic_file

    shutil.copytree(os.path.join(tiny_root, "amazon"), tmp_path / "amazon")
    folder = tmp_path / "amazon"
    was = {f: read_atomic_file(str(folder / f), "utf-8", "\t").fingerprint() for f in ("amazon.inter", "amazon.item")}
    specs = {model: {"model": model, "dataset": "amazon", "checkpoint_dir": str(tmp_path / "ckpt"),
                     "overrides": {"data_path": str(tmp_path), "seed": 2020}} for model in ("BPR", "LLMMTL")}
    with_text = {**specs["LLMMTL"]["overrides"], "user_text": "auto"}
    specs["LLMMTL + user text"] = {**specs["LLMMTL"], "overrides": with_text}
    files = readable_files(_spec_config(specs["BPR"]))
    assert files == ["amazon.inter", "amazon.item"] and data_change(was, specs["BPR"], files) is None
    (folder / "amazon.review").write_text("user_id:token\titem_id:token\ttimestamp:float\ttext:token_seq\n")
    (folder / "amazon.README").write_text("notes")
    (folder / "amazon.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\n")
    assert data_change(was, specs["BPR"], files) is None  # RecBole loads a .kg for knowledge-based models alone
    cke = {**specs["BPR"], "model": "CKE"}
    assert data_change(was, cke, files) == f"data changed in {folder}: amazon.kg is new since training"
    assert data_change(was, specs["LLMMTL + user text"], files) == \
        f"data changed in {folder}: amazon.review is new since training"
    assert data_change(was, specs["LLMMTL"], files) is None  # user_text: False (the default) reads no .review
    (folder / "amazon.user").write_text("user_id:token\n")
    assert data_change(was, specs["BPR"], files) == f"data changed in {folder}: amazon.user is new since training"
    assert data_change(was, specs["BPR"], None) is None


def test_reordered_rows_make_a_run_stale_but_not_a_checkpoint(tiny_root, tmp_path):
    """Same rows in another order: RecBole numbers ids by first appearance and breaks time ties
    by row order, so a recorded run would not re-make; a checkpoint maps ids by token and
    ignores the order; fingerprints recorded before the order hash compare on content."""
    import shutil

    from recbole_llm_mtl.benchmark import data_change
    from recbole_llm_mtl.data.validate import fingerprint_changes, read_atomic_file

    shutil.copytree(os.path.join(tiny_root, "amazon"), tmp_path / "amazon")
    path = tmp_path / "amazon" / "amazon.inter"
    was = {"amazon.inter": read_atomic_file(str(path), "utf-8", "\t").fingerprint()}
    spec = {"model": "BPR", "dataset": "amazon", "checkpoint_dir": str(tmp_path / "ckpt"),
            "overrides": {"data_path": str(tmp_path), "seed": 2020}}
    assert data_change(was, spec) is None
    header, *rows = path.read_text().splitlines()
    path.write_text("\n".join([header, *reversed(rows)]) + "\n")
    now = {"amazon.inter": read_atomic_file(str(path), "utf-8", "\t").fingerprint()}
    assert data_change(was, spec) == (f"data changed in {tmp_path / 'amazon'}: amazon.inter has the same rows in "
                                      "another order (ids and timestamp ties follow row order)")
    assert fingerprint_changes(was, now, order_matters=False) == []
    before_order_hash = {"amazon.inter": {k: v for k, v in was["amazon.inter"].items() if k != "order_sha256"}}
    assert data_change(before_order_hash, spec) is None


def test_rows_timed_with_anomaly_detection_are_marked():
    """Runs recorded before the anomaly state was: RecBole's models trained with it on, ours
    off; a recorded state wins. The table marks the timings of such rows and says why, once:
    the secondary table refers to the footnote above it."""
    from recbole_llm_mtl.benchmark import _main_table, _results_table, trained_with_anomaly_detection

    assert trained_with_anomaly_detection({"model": "SASRec"}) is True
    assert trained_with_anomaly_detection({"model": "LLMMTL"}) is False
    assert trained_with_anomaly_detection({"model": "SASRec", "provenance": {"autograd_anomaly": False}}) is False
    # adopted from a run whose resume state recorded nothing: not known, neither marked nor cleared
    adopted = {"model": "BPR", "adopted_from": {"file": "x-last.pth"}, "provenance": {"autograd_anomaly": None}}
    assert trained_with_anomaly_detection(adopted) is None
    unknown = _results_table([{**_row("BPR", 0.05, 0.08), "anomaly_timed": 0, "anomaly_unknown": 1}], {}, {})
    assert "†" not in "".join(unknown) and unknown[-1].endswith("predates that record: BPR (1 of 3 seeds).")
    rows = [{**_row("LLMMTL", 0.07, 0.08), "anomaly_timed": 0}, {**_row("SASRec", 0.06, 0.07), "anomaly_timed": 2}]
    lines = _results_table(rows, {}, {})
    assert "| 1.0 | 10 |" in lines[2] and "| 1.0 † | 10 † |" in lines[3]
    assert lines[-1].startswith("† trained with autograd anomaly detection on (") and lines[-1].endswith(
        ": SASRec (2 of 3 seeds).")
    both = _main_table(rows + [{**_row("BERT4Rec", 0.03, 0.04), "anomaly_timed": 3}], {}, {})
    assert [line.split(":")[0] for line in both if line.startswith("†")] == [
        "† trained with autograd anomaly detection on (importing RecBole's models turned it on until it was mended)",
        "† as above"]
    assert both[-1] == "† as above: BERT4Rec (3 of 3 seeds)."


def test_adopted_runs_trained_after_the_mend_were_not_timed_with_anomaly_detection():
    """An adopted seed whose resume state recorded no anomaly state: every part that trained it
    ran at a clean commit holding the mend, so it trained without (BPR's seed 2020 as committed:
    trial at 5868d14, tested at 12dd5ba); a part before the mend, or dirty, leaves it unknown."""
    from recbole_llm_mtl.benchmark import ANOMALY_MEND, trained_with_anomaly_detection
    from recbole_llm_mtl.provenance import _git

    if _git("cat-file", "-e", ANOMALY_MEND + "^{commit}") is None:
        pytest.skip("a shallow clone: the mend's commit is not in this history")
    with open(os.path.join(ROOT, "benchmarks", "results", "runs", "amazon", "BPR-seed2020.json")) as f:
        run = json.load(f)
    assert run["adopted_from"] and run["provenance"]["autograd_anomaly"] is None
    assert trained_with_anomaly_detection(run) is False
    before = _git("rev-parse", "--short", ANOMALY_MEND + "~1")
    parts = run["provenance"]["parts"]
    for changed in ({"commit": before}, {"dirty": True}):
        moved = {**run, "provenance": {**run["provenance"], "parts": [{**parts[0], **changed}, *parts[1:]]}}
        assert trained_with_anomaly_detection(moved) is None, changed
    # the harness's own part only tested it (from its last epoch): a pre-mend commit there is no matter
    tested = {**run, "provenance": {**run["provenance"], "parts": [parts[0], {**parts[1], "commit": before}]}}
    assert trained_with_anomaly_detection(tested) is False


def _row(name, ndcg, valid, std=0.001):
    return {"model": name, "seeds": 3, "ndcg@10": ndcg, "ndcg@10_std": std, "valid_ndcg@10": valid,
            "valid_ndcg@10_std": std, "best_epoch": 10, "seconds_per_epoch": 1.0, "fit_seconds": 10.0,
            "eval_seconds": 1.0, "peak_rss_mb": 100.0}


def _runs(scores):
    """Three seeds' records with per-user NDCG@10 (the same for both splits)."""
    return [{"per_user": {"test": dict(scores), "valid": dict(scores)}, "parts": None}] * 3


def test_paired_test_uses_the_best_baseline_that_has_per_user_scores():
    """FDSA is best by mean but its runs kept no per-user scores: LLMMTL is paired with the
    best baseline that has them (SASRec), and the report names it."""
    from recbole_llm_mtl.benchmark import _main_table, _significance_lines, compare_with_best_baseline

    users = [str(u) for u in range(40)]
    rows = [_row("LLMMTL", 0.07, 0.08), _row("FDSA", 0.06, 0.06), _row("SASRec", 0.05, 0.06), _row("BPR", 0.04, 0.05)]
    loaded = {"LLMMTL": _runs({u: 0.1 * (int(u) % 3) for u in users}), "FDSA": [{"parts": None}] * 3,
              "SASRec": _runs({u: 0.05 * (int(u) % 2) for u in users}), "BPR": _runs({u: 0.0 for u in users})}
    significance = compare_with_best_baseline(rows, loaded)
    assert set(significance) == {"LLMMTL"} and significance["LLMMTL"]["baseline"] == "SASRec"
    table = "\n".join(_main_table(rows, significance, {}))
    assert "| p vs SASRec |" in table and "| SASRec | 3 |" in table.split("(reference)")[0].splitlines()[-1]
    text = "\n".join(_significance_lines(significance, rows, rows[1]))
    assert "that has per-user scores, SASRec (FDSA's runs have none" in text


def test_a_part_is_measured_against_its_base_row_or_says_it_has_none():
    """L_u is measured against "+ user text + L_v" (the row it is added to), not LLMMTL; without the
    base row in the report the part is listed as not compared, not dropped in silence."""
    from recbole_llm_mtl.benchmark import _parts_lines, compare_parts

    users = {str(u): 0.05 for u in range(30)}
    rows = [_row("LLMMTL", 0.060, 0.070), _row("LLMMTL + user text + L_v", 0.064, 0.074),
            _row("LLMMTL + user text + L_v + L_u", 0.066, 0.075)]
    loaded = {r["model"]: _runs(users) for r in rows}
    parts = compare_parts(rows, loaded)
    lu = "LLMMTL + user text + L_v + L_u"
    assert parts[lu]["base"] == "LLMMTL + user text + L_v"
    assert abs(parts[lu]["valid_gain"] - 0.001) < 1e-9  # not 0.005 (against LLMMTL)
    parts = compare_parts([rows[0], rows[2]], loaded)
    assert parts[lu] == {"part": "L_u (weight 0.1, with user text and L_v)", "base": "LLMMTL + user text + L_v",
                         "no_base": True}
    assert "not compared: LLMMTL + user text + L_v has no current runs" in "\n".join(_parts_lines(parts))


def test_a_secondary_baseline_is_shown_apart_and_still_counts_as_best():
    """A baseline in ``SECONDARY`` (no correction run yet) sits in its own, marked table after
    the main one, with why; it is not dropped from the choice of the best baseline, so moving
    a baseline there can never flatter LLMMTL's ratio."""
    from recbole_llm_mtl.benchmark import SECONDARY, _main_table, best_baseline

    assert "BERT4Rec" in SECONDARY
    rows = [_row("LLMMTL", 0.07, 0.08), _row("SASRec", 0.05, 0.06), _row("BERT4Rec", 0.06, 0.07)]
    lines = _main_table(rows, {}, {})
    marked = next(i for i, line in enumerate(lines) if line.startswith("Secondary baselines"))
    assert SECONDARY["BERT4Rec"] in lines[marked]
    assert not any(line.startswith("| BERT4Rec |") for line in lines[:marked])
    assert any(line.startswith("| BERT4Rec | 3 |") for line in lines[marked:])
    assert any(line.startswith("| SASRec | 3 |") for line in lines[:marked])
    assert best_baseline(rows)["model"] == "BERT4Rec"


def test_a_table_of_general_and_sequential_models_names_the_masking_rule():
    """RecBole masks training items for general models only; a table that holds both kinds
    says which rows ranked with the mask, and one kind alone needs no such line."""
    from recbole_llm_mtl.benchmark import _masking_lines

    both = _masking_lines([_row("LLMMTL", 0.07, 0.08), _row("LightGCN", 0.06, 0.09), _row("SASRec", 0.05, 0.06)])
    assert both and both[0].startswith("As RecBole evaluates them, LightGCN (general recommenders) have the user's "
                                       "training items masked before ranking; LLMMTL, SASRec (sequential)")
    assert _masking_lines([_row("LLMMTL", 0.07, 0.08), _row("SASRec", 0.05, 0.06)]) == []


def test_provenance_is_read_before_training(tiny_root, cache_dir, workdir, monkeypatch):
    """A run of hours records the commit it loaded, not the one the tree moved to while it trained."""
    import recbole_llm_mtl.provenance as provenance_module
    import recbole_llm_mtl.quick_start as quick_start
    from conftest import tiny_overrides
    from recbole_llm_mtl.benchmark import worker

    tree = {"commit": "loaded"}
    monkeypatch.setattr(provenance_module, "provenance", lambda: {"commit": tree["commit"]})
    real_run = quick_start.run

    def run_while_the_tree_moves(*args, **kwargs):
        tree["commit"] = "moved on"  # e.g. a checkout in the worktree during training
        return real_run(*args, **kwargs)

    monkeypatch.setattr(quick_start, "run", run_while_the_tree_moves)
    spec, result = workdir / "run.spec.json", workdir / "run.json"
    spec.write_text(json.dumps({"model": "LLMMTL", "dataset": "amazon", "result": str(result),
                                "checkpoint_dir": str(workdir / "ckpt"),
                                "overrides": tiny_overrides(tiny_root, cache_dir)}))
    worker(str(spec))
    recorded = json.loads(result.read_text())
    assert recorded["best_valid_result"] and tree["commit"] == "moved on"
    assert recorded["provenance"]["commit"] == recorded["commit"] == "loaded"


def test_keys_that_change_nothing_under_the_run_do_not_make_it_stale(tiny_root, tmp_path):
    """A frozen-model run is not stale for a fine-tuning key added or changed since (e.g.
    tuned_items_per_step): it computes the same; a fine-tuned run is."""
    from conftest import tiny_overrides
    from recbole_llm_mtl.benchmark import _spec_config, config_change
    from recbole_llm_mtl.trainer import plain_config

    spec = {"model": "LLMMTL", "dataset": "amazon", "overrides": tiny_overrides(tiny_root, str(tmp_path)),
            "checkpoint_dir": str(tmp_path / "ckpt")}
    now = json.loads(json.dumps(plain_config(_spec_config(spec).external_config_dict), default=str))
    assert now["llm_mode"] == "frozen" and now["tuned_items_per_step"] == 64
    was = {k: v for k, v in now.items() if k != "tuned_items_per_step"}  # made before the key existed
    was["lora_r"] = 99
    assert config_change(was, spec) is None
    assert config_change({**was, "learning_rate": 0.5}, spec) == "config changed: learning_rate 0.5 -> 0.002"
    tuned = dict(spec, overrides={**spec["overrides"], "llm_mode": "lora"})
    assert config_change({**was, "llm_mode": "lora"}, tuned) == (
        "config changed: lora_r 99 -> 8, tuned_items_per_step None -> 64")


def test_eval_batch_size_changes_no_full_ranking_metric(tiny_root, tmp_path):
    """Full ranking scores each user alone: FDSA gives every valid user the same scores over
    all items, and so the same top 10, whether 4096 users or 7 share an evaluation batch, so a
    run is not stale for another ``eval_batch_size`` (a lower one saves memory); under
    sampled ranking it still counts, and the configurations table still shows it (it sets the
    cost columns)."""
    import torch
    from recbole.data.utils import get_dataloader

    from recbole_llm_mtl.benchmark import _spec_config, config_change, config_report
    from recbole_llm_mtl.build import build
    from recbole_llm_mtl.config_rules import COST_KEYS, keys_without_effect
    from recbole_llm_mtl.trainer import plain_config

    overrides = {"data_path": tiny_root, "show_progress": False}
    spec = {"model": "FDSA", "dataset": "amazon", "overrides": overrides, "checkpoint_dir": str(tmp_path / "ckpt")}
    config = _spec_config(spec)
    built = build(config)
    built.model.eval()

    def scores(size):
        config["eval_batch_size"] = size
        loader = get_dataloader(config, "valid")(config, built.valid._dataset, built.valid._sampler, shuffle=False)
        with torch.no_grad():
            return torch.cat([built.model.full_sort_predict(batch[0]).view(len(batch[0]), -1) for batch in loader])

    large, small = scores(4096), scores(7)
    assert large.shape[0] > 200 and large.std(dim=1).min() > 0  # users differ, items differ
    assert torch.allclose(large, small, rtol=0, atol=1e-5)
    assert torch.equal(large.topk(10).indices, small.topk(10).indices)

    now = json.loads(json.dumps(plain_config(config.external_config_dict), default=str))
    assert config_change({**now, "eval_batch_size": 1024}, spec) is None
    assert "eval_batch_size" in COST_KEYS and "eval_batch_size" in keys_without_effect("FDSA", now)
    assert "eval_batch_size" not in keys_without_effect("Random", now)  # draws random scores per batch
    with open(os.path.join(ROOT, "benchmarks", "results", "runs", "amazon", "LLMMTL-seed2020.json")) as f:
        run = json.load(f)
    seeds = [run, {**run, "config": {**run["config"], "eval_batch_size": 1024}}]
    shown = config_report("LLMMTL", seeds, "amazon")
    assert shown["seeds_disagree"] == ["eval_batch_size"]
    assert config_report("LLMMTL", seeds[1:], "amazon")["vs_defaults"] == {"eval_batch_size": 1024}
    sampled = {**now["eval_args"], "mode": "uni100"}
    spec_sampled = dict(spec, overrides={**overrides, "eval_args": sampled})
    assert config_change({**now, "eval_args": sampled, "eval_batch_size": 1024}, spec_sampled) == (
        "config changed: eval_batch_size 1024 -> 4096")


def test_a_key_added_since_reads_as_the_value_its_runs_had(tiny_root, tmp_path):
    """behavior_items came after the amazon rows: a recorded config without it ran with the
    training items' softmax, so it is current against ``train`` (the default), stale against
    ``all``, and a re-run from the record rebuilds ``train``, not a missing key."""
    from conftest import tiny_overrides
    from recbole_llm_mtl.benchmark import _spec_config, config_change
    from recbole_llm_mtl.config import build_config
    from recbole_llm_mtl.trainer import plain_config

    spec = {"model": "LLMMTL", "dataset": "amazon", "overrides": tiny_overrides(tiny_root, str(tmp_path)),
            "checkpoint_dir": str(tmp_path / "ckpt")}
    now = json.loads(json.dumps(plain_config(_spec_config(spec).external_config_dict), default=str))
    was = {k: v for k, v in now.items() if k != "behavior_items"}
    assert now["behavior_items"] == "train" and config_change(was, spec) is None
    every = dict(spec, overrides={**spec["overrides"], "behavior_items": "all"})
    assert config_change(was, every) == "config changed: behavior_items 'train' -> 'all'"
    assert build_config("LLMMTL", "amazon", config_dict=was, recorded=True)["behavior_items"] == "train"
    from recbole_llm_mtl.benchmark import config_report

    with open(os.path.join(ROOT, "benchmarks", "results", "runs", "amazon", "LLMMTL-seed2020.json")) as f:
        run = json.load(f)  # recorded before the key: no difference from the defaults
    assert "behavior_items" not in run["config"] and config_report("LLMMTL", [run], "amazon")["vs_defaults"] == {}


def test_best_epoch_is_the_one_early_stopping_kept():
    """Over every committed amazon run: the reported best epoch is the last one RecBole's own
    early_stopping saved (a tie replaces the best), e.g. BPR seed 2021 ties 0.0704 at 83 and 86."""
    import glob

    from recbole.utils import early_stopping

    from recbole_llm_mtl.trainer import kept_epoch

    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "runs",
                                                                      "amazon", "*-seed*.json")))]
    runs = [r for r in runs if r.get("history")]
    assert len(runs) > 20
    ties = 0
    for r in runs:
        best, step, saved = float("-inf"), 0, None
        for epoch, score, *_ in r["history"]:
            best, step, _, update = early_stopping(score, best, step, 10**9, bigger=True)
            saved = epoch if update else saved
        assert kept_epoch(r["history"]) == saved, r["model"]
        ties += saved != max(r["history"], key=lambda h: h[1])[0]
    assert ties > 0  # the first maximum would differ on some of these runs


def test_a_run_without_a_recorded_config_still_shows_its_commit():
    """BERT4Rec's committed run predates recorded configs but kept its commit: the
    configurations table names that commit instead of '-'."""
    from recbole_llm_mtl.benchmark import _config_lines, config_report

    with open(os.path.join(ROOT, "benchmarks", "results", "runs", "amazon", "BERT4Rec-seed2020.json")) as f:
        run = json.load(f)
    report = config_report("BERT4Rec", [run], "amazon")
    assert report == {"recorded": False, "commits": [run["commit"]]} and run["commit"]
    assert f"| BERT4Rec | (not recorded: run made before configs were kept) | - | {run['commit']} | - |" in (
        _config_lines({"BERT4Rec": report}))


def test_adopt_tests_a_finished_tuning_trial_instead_of_training_it(tiny_root, workdir):
    """``--adopt``: the selected tuning trial is the row's seed of the same config; the harness
    tests it (reading test once, there) without training, and says so in the run and the report.
    A run of another config, or one not finished, is refused with one line."""
    import torch

    from recbole_llm_mtl.hyper import tune

    def trial(name, **params):
        space = workdir / f"{name}.hyper"
        space.write_text("".join(f"{k} choice [{v}]\n" for k, v in params.items()))
        _, (record,) = tune("BPR", "amazon", str(space), output_dir=str(workdir / name),
                            overrides={"epochs": 1, "train_batch_size": 256, "data_path": tiny_root, "seed": 2020})
        return record

    chosen = trial("chosen", learning_rate=0.001)  # RecBole's BPR default: the harness row's config
    out = workdir / "results"
    cmd = [sys.executable, "-m", "recbole_llm_mtl.benchmark", "--dataset", "amazon", "--tiny", "--data_path", tiny_root,
           "--models", "BPR", "--max_seeds", "1", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(cmd + ["--adopt", chosen["checkpoint"]], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BPR seed 2020: adopted" in proc.stdout and "resuming from" in proc.stdout
    log = (out / "runs" / "amazon-tiny" / "BPR-seed2020.log").read_text()
    assert "nothing left to train" in log and "epoch 0 training" not in log
    run = json.loads((out / "runs" / "amazon-tiny" / "BPR-seed2020.json").read_text())
    assert run["adopted_from"]["from"] == chosen["checkpoint"][: -len(".pth")] + "-last.pth"
    assert run["best_valid_result"] == chosen["valid"] and run["history"] == json.loads(json.dumps(chosen["history"]))
    assert run["test_result"]["ndcg@10"] >= 0 and chosen["test"] == {}  # test read by the row, not the trial
    # the row tests its own copy of the trial's best model; the tester's memory is not the run's
    assert run["checkpoint"].startswith(str(workdir / "saved" / "benchmark")) and run["peak_rss_mb"] is None
    # its anomaly state is the one the trial's resume state recorded, not the tester's or a guess
    assert run["provenance"]["autograd_anomaly"] is False and run["adopted_from"]["autograd_anomaly"] is False
    assert "seed 2020 trained by an earlier run (`--adopt`)" in (out / "amazon-tiny.md").read_text()
    # the trial's parts (the commit it trained at) lead the run's, then the part that tested it
    from recbole_llm_mtl.provenance import parts_commits

    parts = run["provenance"]["parts"]
    assert parts[:-1] == chosen["parts"] and parts[-1]["from_epoch"] == run["epochs"]
    assert parts_commits(parts, run["epochs"]).endswith("(tested)")
    assert parts_commits(parts, run["epochs"]) in (out / "amazon-tiny.md").read_text()
    again = subprocess.run(cmd + ["--adopt", chosen["checkpoint"]], cwd=workdir, env=env, capture_output=True,
                           text=True, timeout=900)
    assert "adopted earlier" in again.stdout and "done earlier, kept" in again.stdout

    # another learning rate is another run: refused, naming why, and nothing is copied
    other = trial("other", learning_rate=0.01)
    fresh = [c if c != str(out) else str(workdir / "fresh") for c in cmd] + ["--checkpoints", str(workdir / "fresh-ckpt")]
    refused = subprocess.run(fresh + ["--adopt", other["checkpoint"]], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=900)
    assert refused.returncode == 2 and "learning_rate 0.01 -> 0.001" in refused.stderr
    assert "Traceback" not in refused.stderr and not (workdir / "fresh-ckpt").exists()
    # a run that has not finished is refused too
    resume = chosen["checkpoint"][: -len(".pth")] + "-last.pth"
    state = torch.load(resume, weights_only=True)
    state["config"]["epochs"] = 5
    torch.save(state, resume)
    refused = subprocess.run(fresh + ["--adopt", chosen["checkpoint"]], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=900)
    assert refused.returncode == 2 and "has not finished" in refused.stderr
    # ... and so is one whose best model is gone
    state["config"]["epochs"] = 1
    torch.save(state, resume)
    os.unlink(chosen["checkpoint"])
    refused = subprocess.run(fresh + ["--adopt", chosen["checkpoint"]], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=900)
    assert refused.returncode == 2 and "is not there" in refused.stderr


def _cells(line):
    """The cells of one markdown table row."""
    return [c.strip() for c in line.strip("|").split("|")]


def test_cold_start_table_shows_valid_and_test_cold_and_warm_recall_and_ndcg():
    """Cold-start choices are made on valid, so valid cold/warm NDCG@10 is shown beside recall,
    each column under its own header, as seed means from the runs."""
    from recbole_llm_mtl.benchmark import METRICS, _cold_lines, summarize_row

    def part(base):
        return {"recall@10": base, "ndcg@10": base / 2}

    runs = [{"model": "LLMMTL", "test_result": {m: 0.1 for m in METRICS}, "best_valid_result": {"ndcg@10": 0.1},
             "best_epoch": 3, "valid_cold": part(0.01 + s), "valid_warm": part(0.02 + s),
             "test_cold": part(0.03 + s), "test_warm": part(0.04 + s)} for s in (0.0, 0.002, 0.004)]
    lines = _cold_lines([summarize_row("cold-start: LLMMTL inductive", runs)])
    header, values = _cells(lines[-3]), _cells(lines[-1])
    assert len(header) == len(values) == 11
    assert dict(zip(header, values)) == {
        "model": "cold-start: LLMMTL inductive", "seeds": "3",
        "valid cold R@10": "0.0120 ± 0.0020", "valid cold N@10": "0.0060 ± 0.0010",
        "valid warm R@10": "0.0220 ± 0.0020", "valid warm N@10": "0.0110 ± 0.0010",
        "test cold R@10": "0.0320 ± 0.0020", "test cold N@10": "0.0160 ± 0.0010",
        "test warm R@10": "0.0420 ± 0.0020", "test warm N@10": "0.0210 ± 0.0010", "test cold/warm R@10": "0.76"}


@pytest.mark.parametrize("section, report", [
    ("## Results on `amazon`\n", "amazon.json"), ("## Results on `ml-100k`", "ml-100k.json"),
    ("## Results on `amazon`, titles only", "amazon-titles.json")])
def test_readme_results_table_is_the_committed_report(section, report):
    """Each README results table repeats rows of the report the harness wrote
    (``benchmarks/results/<report>``): every figure, seed count and p-value must be the report's,
    so neither can move without the other. The table keeps LLMMTL, the best baseline and the
    paired test's reference, and the text states the report's ratio to the best baseline."""
    from recbole_llm_mtl.benchmark import _fmt, _fmt_p, best_baseline

    report = json.load(open(os.path.join(ROOT, "benchmarks", "results", report)))
    # README names a row by the report's name plus a parenthesis of its own
    rows = {r["model"].split(" (")[0]: r for r in report["rows"]}
    rows.update({name.split(" (")[0]: {"model": name, "seeds": "-", **figures}
                 for name, figures in report["published"].items()})
    assert len(rows) == len(report["rows"]) + len(report["published"]), "two rows share a README name"
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    text = readme[readme.index(section):]
    text = text[:text.index("\n## ")]
    table = text[text.index("| model | seeds | R@10 | N@10 | R@50 | N@50 | valid N@10 |"):].split("\n\n")[0].splitlines()
    reference = {s["baseline"] for s in report["significance"].values()}
    assert table[0].endswith(f"| p vs {next(iter(reference))} |") if reference else "| p vs " not in table[0]
    shown = set()
    for line in table[2:]:
        cells = _cells(line)
        row = rows[cells[0].split(" (")[0]]
        shown.add(row["model"])
        expected = [str(row["seeds"])] + [_fmt(row, m) for m in (
            "recall@10", "ndcg@10", "recall@50", "ndcg@50", "valid_ndcg@10")]
        if reference:
            expected.append("(reference)" if row["model"] in reference
                            else _fmt_p(report["significance"].get(row["model"])))
        assert cells[1:] == expected, cells[0]
    best = best_baseline(report["rows"])
    assert {"LLMMTL", best["model"]} | reference <= shown
    ratio = next(r for r in report["rows"] if r["model"] == "LLMMTL")["ndcg@10"] / best["ndcg@10"]
    assert f"{ratio:.3f}x" in text



def test_dirty_files_keep_their_first_character(tmp_path):
    """A run records which tracked files differ from its commit; an unstaged change's porcelain
    line starts with a space, which stripping git's output would eat with the path's first letter."""
    from recbole_llm_mtl.provenance import git_state

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for name in ("alpha.py", "beta.py"):
        (tmp_path / name).write_text("x = 1\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "c"], check=True)
    (tmp_path / "alpha.py").write_text("x = 2\n")
    state = git_state(str(tmp_path))
    assert state["dirty"] is True and state["dirty_files"] == ["alpha.py"]
