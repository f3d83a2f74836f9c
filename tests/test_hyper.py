"""RecBole HyperTuning through our run(): 2 tiny trials end to end."""

import os

import pytest

from conftest import ROOT, tiny_overrides
from recbole_llm_mtl import hyper
from recbole_llm_mtl.hyper import rerun_command, tune


def test_two_trials_report_and_resume(tiny_root, cache_dir, workdir, monkeypatch):
    space = workdir / "space.hyper"
    space.write_text("learning_rate choice [0.001,0.003]\n")
    best, trials = tune("LLMMTL", "amazon", str(space), algo="exhaustive",
                        overrides=tiny_overrides(tiny_root, cache_dir, task_weights={"behavior": 1.0}),
                        output_dir=str(workdir / "hyper"))
    assert sorted(t["params"]["learning_rate"] for t in trials) == [0.001, 0.003]
    assert best["learning_rate"] in (0.001, 0.003)
    best_trial = max(trials, key=lambda t: t["best_valid_score"])
    assert best_trial["params"] == best
    table = (workdir / "hyper" / "LLMMTL-amazon.md").read_text()
    assert table.count("| 0.00") >= 2 and "python run_recbole_llm.py --model=LLMMTL" in table
    assert (workdir / "hyper" / "LLMMTL-amazon.csv").read_text().count("\n") == 3
    assert "--learning_rate=0.003" in rerun_command("LLMMTL", "amazon", {"learning_rate": 0.003})
    assert all(t["test"] == {} and t["valid"]["ndcg@10"] >= 0 for t in trials), "tuning read the test split"
    assert "test was not read" in table

    # re-running the same search resumes: finished trials are read back, none is trained again
    def no_training(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(hyper, "run", no_training)
    best2, trials2 = tune("LLMMTL", "amazon", str(space), algo="exhaustive",
                          overrides=tiny_overrides(tiny_root, cache_dir, task_weights={"behavior": 1.0}),
                          output_dir=str(workdir / "hyper"))
    scores = lambda ts: {t["params"]["learning_rate"]: t["best_valid_score"] for t in ts}
    assert best2 == best and scores(trials2) == scores(trials)  # (hyperopt may visit them in another order)
    # the same search with a config file is another search: its trials are not those above
    extra = workdir / "extra.yaml"
    extra.write_text("weight_decay: 0.0001\n")
    with pytest.raises(AssertionError, match="trained again"):
        tune("LLMMTL", "amazon", str(space), algo="exhaustive", config_files=[str(extra)],
             overrides=tiny_overrides(tiny_root, cache_dir, task_weights={"behavior": 1.0}),
             output_dir=str(workdir / "hyper"))


def test_shipped_spaces_parse():
    from recbole.trainer import HyperTuning

    names = sorted(os.listdir(os.path.join(ROOT, "properties", "hyper")))
    assert {"LLMMTL.hyper", "LLMMTL-tasks.hyper", "SASRec.hyper", "FDSA.hyper", "LightGCN.hyper"} <= set(names)
    for name in names:
        tuner = HyperTuning(lambda *a: None, params_file=os.path.join(ROOT, "properties", "hyper", name), algo="random")
        assert tuner.space, name
        assert "learning_rate" in tuner.space or name == "LLMMTL-tasks.hyper", name
