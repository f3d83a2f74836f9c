"""What a RecBole user does by habit works for LLMMTL, or stops with one line saying why:
sampled evaluation, and ``--resume`` of a checkpoint that no longer fits the config."""

import math
import os
import shutil

import pytest

from conftest import tiny_overrides
from recbole_llm_mtl.errors import ConfigError
from recbole_llm_mtl.quick_start import main, run

LEAVE_ONE_OUT = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user"}


@pytest.mark.parametrize("mode", ["uni100", "pop100"])
def test_sampled_evaluation_runs(mode, tiny_root, cache_dir, workdir):
    """RecBole writes ``predict``'s scores into a float32 buffer (it crashed on float64)."""
    overrides = tiny_overrides(tiny_root, cache_dir, eval_args={**LEAVE_ONE_OUT, "mode": mode})
    result = run("LLMMTL", "amazon", config_dict=overrides)
    for metrics in (result["best_valid_result"], result["test_result"]):
        assert {"recall@10", "ndcg@10", "recall@50"} <= set(metrics)
        assert all(0 <= v <= 1 and math.isfinite(v) for v in metrics.values())
    # 100 sampled negatives: the target is in the top 50 of 101 far more often than in the
    # top 50 of all items; a model ranking at random would give recall@50 about 0.5
    assert result["test_result"]["recall@50"] > 0.5


@pytest.fixture(scope="module")
def last_checkpoint(tiny_root, cache_dir, tmp_path_factory):
    """The every-epoch resume state of a one-epoch run with the default architecture."""
    folder = tmp_path_factory.mktemp("resume")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = run("LLMMTL", "amazon", config_dict=tiny_overrides(tiny_root, cache_dir))
    return result["checkpoint"][: -len(".pth")] + "-last.pth"


@pytest.mark.parametrize("changed,message", [
    ({"hidden_size": 32}, "hidden_size 64 (checkpoint) vs 32 (now)"),          # was a size-mismatch traceback
    ({"n_heads": 4}, "n_heads 2 (checkpoint) vs 4 (now)"),                     # same shapes: loaded silently
    ({"n_layers": 1, "scorer": "dot"}, "n_layers 2 (checkpoint) vs 1 (now); scorer 'mlp' (checkpoint) vs 'dot'"),
    ({"user_history_items": 1}, "user_history_items 3 (checkpoint) vs 1 (now)"),  # what user text reads
])
def test_resume_with_another_architecture_names_the_keys(changed, message, last_checkpoint, tiny_root,
                                                         cache_dir, workdir):
    with pytest.raises(ConfigError) as e:
        run("LLMMTL", "amazon", config_dict=tiny_overrides(tiny_root, cache_dir, **changed), resume=last_checkpoint)
    assert f"checkpoint '{last_checkpoint}' has another architecture: {message}" in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_resume_with_another_architecture_exits_2(last_checkpoint, tiny_root, cache_dir, workdir, capsys):
    args = [f"--{k}={v}" for k, v in tiny_overrides(tiny_root, cache_dir, hidden_size=32).items()]
    code = main(["--model=LLMMTL", "--dataset=amazon", f"--resume={last_checkpoint}"] + args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err[-2000:]
    assert "has another architecture: hidden_size 64 (checkpoint) vs 32 (now)" in errors[0]
    assert "Traceback" not in err


def test_resume_on_other_data_names_the_tensors(tiny_root, cache_dir, tmp_path, workdir):
    """Same config, one more item in the data: no key differs, the weights do not fit."""
    overrides = tiny_overrides(tiny_root, cache_dir, use_text=False)  # ID-only: no text to encode
    last = run("LLMMTL", "amazon", config_dict=overrides)["checkpoint"][: -len(".pth")] + "-last.pth"
    root = tmp_path / "data"
    shutil.copytree(os.path.join(tiny_root, "amazon"), root / "amazon")
    with open(root / "amazon" / "amazon.item", "a", encoding="utf-8") as f:
        f.write("NEW_ITEM\tA new item\tIndustrial & Scientific\tAcme\n")
    with open(root / "amazon" / "amazon.inter", "a", encoding="utf-8") as f:
        f.write("NEW_USER\tNEW_ITEM\t0\n")
    with pytest.raises(ConfigError) as e:
        run("LLMMTL", "amazon", config_dict={**overrides, "data_path": str(root)}, resume=last)
    assert f"checkpoint '{last}' does not fit this model: " in str(e.value)
    assert "item_embedding.weight [" in str(e.value)
    assert "Was it trained on other data or with another config?" in str(e.value)
    assert "\n" not in str(e.value)


def test_resume_under_another_results_version_is_refused(last_checkpoint, tiny_root, cache_dir, tmp_path, workdir):
    """A resume state written by model code that computed something else (an older
    RESULTS_VERSION) fits the weights, so it would resume silently into a mix of two models."""
    import torch

    state = torch.load(last_checkpoint, weights_only=True)
    assert state["results_version"] == 1
    state["results_version"] = 0
    old = str(tmp_path / "old-last.pth")
    torch.save(state, old)
    with pytest.raises(ConfigError) as e:
        run("LLMMTL", "amazon", config_dict=tiny_overrides(tiny_root, cache_dir), resume=old)
    assert (f"checkpoint '{old}' was trained by LLMMTL code of results version 0; this code computes version 1"
            in str(e.value))
    assert "\n" not in str(e.value)


ANOMALY_PROBE = """
import json, sys, torch
from recbole_llm_mtl.quick_start import run
seen = []
def during_training(built, trainer):
    seen.append(torch.is_anomaly_enabled())
torch.autograd.set_detect_anomaly(sys.argv[3] == "on")
run(sys.argv[4], "amazon", config_dict={"data_path": sys.argv[1], "show_progress": False, "epochs": 1,
    "train_batch_size": 256, "state": "ERROR", "checkpoint_dir": sys.argv[2]}, saved=False, on_built=during_training)
print(json.dumps(seen + [torch.is_anomaly_enabled()]))
"""


def test_importing_recbole_models_leaves_anomaly_detection_as_it_was(tiny_root, tmp_path):
    """RecBole's sine.py turns autograd anomaly detection on for the whole process when its
    sequential models are imported: every baseline then trained about 1.5x slower (same
    numbers). A fresh process, as a user's run is: off stays off (fails without the mend);
    on (a user debugging) stays on (fails if the mend forced it off)."""
    import json
    import subprocess
    import sys

    for state in ("off", "on"):
        proc = subprocess.run([sys.executable, "-c", ANOMALY_PROBE, tiny_root, str(tmp_path), state, "SASRec"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == [state == "on"] * 2
