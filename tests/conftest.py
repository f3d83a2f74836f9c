"""Shared fixtures: a small real slice of the shipped amazon dataset and one text cache."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """data_path holding ``amazon/`` with 300 real users of the shipped dataset."""
    from recbole_llm_mtl.data.atomic import write_user_slice

    root = tmp_path_factory.mktemp("data")
    write_user_slice(os.path.join(ROOT, "dataset", "amazon"), str(root / "amazon"), 300)
    return str(root)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("text_cache"))


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """Run in a fresh folder so log/, saved/ land there, not in the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# every task on (the default trains the behaviour task alone): tests of the tasks and of leakage use it, so the
# opt-in auxiliary tasks stay covered
ALL_TASKS = {"behavior": 1.0, "user_profile": 0.1, "item_semantics": 0.1}


def tiny_overrides(tiny_root, cache_dir, **extra):
    base = {"data_path": tiny_root, "text_cache_dir": cache_dir, "show_progress": False,
            "epochs": 1, "eval_batch_size": 256, "train_batch_size": 64, "state": "ERROR"}
    base.update(extra)
    return base


def build(model, tiny_root, cache_dir, **extra):
    """(config, train, valid, test dataloaders, model) on the tiny slice, built as run() builds."""
    from recbole_llm_mtl.build import build_from_args

    b = build_from_args(model, "amazon", config_dict=tiny_overrides(tiny_root, cache_dir, **extra))
    return b.config, b.train, b.valid, b.test, b.model


class Captured:
    """What run() built and fed its model: a copy of every parameter and buffer as
    constructed, the model object, the dataset, and every training batch."""

    def __init__(self):
        self.built, self.model, self.initial, self.batches = None, None, {}, []

    def __call__(self, built, trainer):
        self.built, self.model = built, built.model
        self.initial = {name: t.detach().clone() for name, t in
                        [*built.model.named_parameters(), *built.model.named_buffers()]}
        loss = built.model.calculate_loss

        def recording_loss(interaction):  # observes the batch, trains as usual
            self.batches.append({k: v.detach().clone() for k, v in interaction.interaction.items()})
            return loss(interaction)

        built.model.calculate_loss = recording_loss


def run_captured(model, data_path, cache_dir, rundir, **extra):
    """run() on ``data_path`` from inside ``rundir`` (log/, saved/ land there); returns
    (result, Captured)."""
    from recbole_llm_mtl.quick_start import run

    captured, here = Captured(), os.getcwd()
    os.makedirs(rundir, exist_ok=True)
    os.chdir(rundir)
    try:
        result = run(model, "amazon", config_dict=tiny_overrides(data_path, cache_dir, **extra), on_built=captured)
    finally:
        os.chdir(here)
    return result, captured
