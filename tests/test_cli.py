"""The CLI end to end, config precedence, checkpoints and clear errors."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, build, tiny_overrides
from recbole_llm_mtl.benchmark import RUNS
from recbole_llm_mtl.config import build_config, get_model_class
from recbole_llm_mtl.errors import ConfigError
from recbole_llm_mtl.quick_start import main as cli_main
from recbole_llm_mtl.quick_start import run


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_recbole_llm.py")] + args, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


# FDSA: its other_parameter() is a submodule, which a weights_only checkpoint must leave out
@pytest.mark.parametrize("model", ["LLMMTL", "SASRec", "FDSA"])
def test_cli_trains_and_tests_one_epoch(model, tiny_root, cache_dir, workdir):
    args = [f"--model={model}", "--dataset=amazon"] + [
        f"--{k}={v}" for k, v in tiny_overrides(tiny_root, cache_dir).items()]
    proc = _cli(args, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test result: {'recall@10'" in proc.stdout and "'ndcg@50'" in proc.stdout
    assert any(f.startswith(model) for f in os.listdir(workdir / "saved"))
    assert os.listdir(workdir / "log" / model)


def test_config_precedence(tiny_root, cache_dir, tmp_path):
    # overall.yaml: 2048 < LLMMTL.yaml: 512 < --config_files < command line
    base = {"data_path": tiny_root}
    assert build_config("SASRec", "amazon", config_dict=base)["train_batch_size"] == 2048
    cfg = build_config("LLMMTL", "amazon", config_dict=base)
    assert cfg["train_batch_size"] == 512
    assert cfg["valid_metric"] == "NDCG@10"                  # overall.yaml over RecBole's MRR@10
    assert cfg["item_text_fields"] == ["title", "brand", "categories"]  # dataset YAML
    assert cfg["eval_args"]["split"] == {"LS": "valid_and_test"} and cfg["eval_args"]["order"] == "TO"
    # a baseline's values tuned on one dataset's valid split apply to that dataset alone
    assert build_config("SASRec", "amazon", config_dict=base)["hidden_size"] == 128    # SASRec-amazon.yaml
    assert build_config("SASRec", "ml-100k")["hidden_size"] == 64                      # SASRec.yaml
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"train_batch_size": 128, "hidden_size": 32}))
    cfg = build_config("LLMMTL", "amazon", [str(user)], config_dict=base)
    assert (cfg["train_batch_size"], cfg["hidden_size"]) == (128, 32)
    cfg = build_config("LLMMTL", "amazon", [str(user)], config_dict=base, cmd_overrides={"train_batch_size": "64"})
    assert (cfg["train_batch_size"], cfg["hidden_size"]) == (64, 32)


def test_checkpoint_round_trip_gives_identical_scores(tiny_root, cache_dir, workdir):
    result = run("LLMMTL", "amazon", config_dict=tiny_overrides(tiny_root, cache_dir))
    assert result["checkpoint"] and os.path.isfile(result["checkpoint"])
    config, _, valid, _, model = build("LLMMTL", tiny_root, cache_dir)
    state = torch.load(result["checkpoint"], weights_only=True)  # no pickled objects inside
    model.load_state_dict(state["state_dict"])
    model.eval()
    batch = next(iter(valid))[0]
    with torch.no_grad():
        a = model.full_sort_predict(batch)
    config, _, _, _, fresh = build("LLMMTL", tiny_root, cache_dir, seed=7)
    fresh.load_state_dict(state["state_dict"])
    fresh.eval()
    with torch.no_grad():
        b = fresh.full_sort_predict(batch)
    assert torch.equal(a, b)


def test_runs_started_together_get_their_own_checkpoint(tiny_root, cache_dir, workdir):
    # RecBole names checkpoints after the second a run starts; a parallel sweep in one folder
    # would have its runs overwrite (and test) each other's best model
    from recbole_llm_mtl.trainer import make_trainer

    config, _, _, _, model = build("SASRec", tiny_root, cache_dir)
    files = {make_trainer(config, model).saved_model_file for _ in range(3)}
    assert len(files) == 3 and all(os.path.basename(f).startswith("SASRec-") for f in files)


def test_unknown_model_lists_available():
    with pytest.raises(ConfigError) as e:
        get_model_class("SASrec")
    assert "Did you mean SASRec" in str(e.value) and "LLMMTL" in str(e.value) and "LightGCN" in str(e.value)
    for typed, meant in (("sasrec", "SASRec"), ("llmmtl", "LLMMTL")):  # were "Caser" and no hint
        with pytest.raises(ConfigError, match=f"unknown model '{typed}'. Did you mean {meant}\\?"):
            get_model_class(typed)


def test_cli_errors_are_one_clear_line(tiny_root, workdir):
    proc = _cli(["--model=NoSuchModel", "--dataset=amazon"], workdir)
    assert proc.returncode == 2 and "unknown model 'NoSuchModel'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("unknown model 'NoSuchModel'") == 1  # was twice: a bare log line, then error:
    proc = _cli(["--model=SASRec", "--dataset=nowhere"], workdir)
    assert proc.returncode == 2 and "dataset folder" in proc.stderr and "nowhere" in proc.stderr
    assert "Traceback" not in proc.stderr
    # LLMMTL too, before its dataset-YAML keys (item_text_fields) are checked; a typo gets a hint
    proc = _cli(["--model=LLMMTL", "--dataset=amazn"], workdir)
    assert proc.returncode == 2 and "dataset folder" in proc.stderr and "amazn" in proc.stderr
    assert "did you mean 'amazon'" in proc.stderr and "item_text_fields" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--nproc=0"], "--nproc 0 is not allowed: expected a positive integer"),  # ran as one process
    (["--nproc=2", "--world_size=1"], "--world_size 1 is not allowed: expected -1"),  # gloo: rank < size
    (["--world_size=2", "--group_offset=5"], "--group_offset 5 is not allowed: expected 0 to 1"),  # hung
    (["--nproc=2", "--port=abc"], "--port 'abc' is not allowed"),  # ValueError from torch
    (["--resume="], "--resume needs a checkpoint path"),  # a fresh run started
])
def test_launch_arguments_are_checked_first(args, message, tiny_root, workdir, capsys):
    tiny = [f"--data_path={tiny_root}", "--epochs=1", "--show_progress=False", "--state=ERROR"]
    assert cli_main(["--model=SASRec", "--dataset=amazon"] + tiny + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err


def test_shipped_datasets_are_found_from_any_folder(workdir):
    """Without data_path, a dataset not under ./dataset is read from the shipped ones (RecBole's own
    default, 'dataset/', is relative to where the command runs); a data_path given is kept."""
    assert build_config("SASRec", "amazon")["data_path"] == os.path.join(ROOT, "dataset", "amazon")
    (workdir / "dataset" / "amazon").mkdir(parents=True)
    assert build_config("SASRec", "amazon", config_dict={"data_path": os.path.join(ROOT, "dataset")})["data_path"] \
        == os.path.join(ROOT, "dataset", "amazon")
    with pytest.raises(ConfigError, match="data_path 5 is not allowed"):
        build_config("SASRec", "amazon", config_dict={"data_path": 5})


def test_missing_dataset_under_an_unreadable_folder(monkeypatch, tmp_path):
    """The folder that should hold the dataset cannot be listed (permissions; root here ignores
    chmod, so listing fails as the OS would): still the one error naming the dataset folder."""
    def unreadable(path):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(os, "listdir", unreadable)
    with pytest.raises(ConfigError, match="dataset folder .*nowhere' not found"):
        build_config("SASRec", "nowhere", config_dict={"data_path": str(tmp_path)})


def test_missing_item_file_and_text_field(tiny_root, cache_dir, tmp_path):
    root = tmp_path / "data"
    (root / "amazon").mkdir(parents=True)
    inter = open(os.path.join(tiny_root, "amazon", "amazon.inter")).read()
    (root / "amazon" / "amazon.inter").write_text(inter)
    with pytest.raises(ConfigError, match="amazon.item' not found"):
        build_config("LLMMTL", "amazon", config_dict={"data_path": str(root)})
    with pytest.raises(ConfigError, match=r"item text field\(s\) \['colour'\] not found"):
        build("LLMMTL", tiny_root, cache_dir, item_text_fields=["title", "colour"])


def test_bad_values_are_reported(tiny_root, cache_dir):
    with pytest.raises(ConfigError, match="divisible"):
        build("LLMMTL", tiny_root, cache_dir, hidden_size=30, n_heads=4)
    with pytest.raises(ConfigError, match="llm_pooling 'meen'"):
        build("LLMMTL", tiny_root, cache_dir, llm_pooling="meen")
    with pytest.raises(ConfigError, match="task_weights"):
        build("LLMMTL", tiny_root, cache_dir, task_weights={"behavior": 1.0, "user_profile": -1})
    with pytest.raises(ConfigError, match="llm_path '/no/such/model'"):
        build("LLMMTL", tiny_root, cache_dir, llm_path="/no/such/model")


def test_comment_only_yaml_is_empty_and_a_list_is_named(tmp_path, tiny_root):
    """A YAML of comments only (LightGCN.yaml, once its tuned values moved to
    LightGCN-amazon.yaml) crashed inside RecBole (update(None)); it is an empty config. A file
    that is not key: value lines is one ConfigError naming it."""
    notes = tmp_path / "notes.yaml"
    notes.write_text("# nothing set here yet\n")
    config = build_config("SASRec", "amazon", [str(notes)], config_dict={"data_path": tiny_root})
    assert config["hidden_size"] == 128  # SASRec-amazon.yaml still read
    listed = tmp_path / "listed.yaml"
    listed.write_text("- learning_rate: 0.01\n")
    with pytest.raises(ConfigError, match=f"{listed} holds a list"):
        build_config("SASRec", "amazon", [str(listed)], config_dict={"data_path": tiny_root})


@pytest.mark.parametrize("model", sorted({spec[0] for spec in RUNS.values()}))
def test_every_benchmark_model_resolves_its_yaml_files(model, tiny_root):
    """Each model the harness runs gets a config from our YAML files (a file of comments only,
    as LightGCN.yaml is, included)."""
    config = build_config(model, "amazon", config_dict={"data_path": tiny_root})
    assert config["model"] == model and config["eval_args"]["mode"]["test"] == "full"


def test_yaml_typo_is_reported(tmp_path, tiny_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: [0.001\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        build_config("SASRec", "amazon", [str(bad)], config_dict={"data_path": tiny_root})
    # a folder, or bytes that are not UTF-8, were IsADirectoryError / UnicodeDecodeError tracebacks
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("learning_rate: 0.001 # r\xe9glage\n".encode("latin-1"))
    for path, message in ((tmp_path, "is a folder"), (latin, r"is not UTF-8 text \(bytes b'\\xe9")):
        with pytest.raises(ConfigError, match=message):
            build_config("SASRec", "amazon", [str(path)], config_dict={"data_path": tiny_root})
