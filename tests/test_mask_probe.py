"""benchmarks/mask_probe.py masks as RecBole does: re-scoring a general model's best
checkpoint on valid with the training items masked gives back the valid NDCG@10 that
RecBole's own evaluator recorded for it."""

import importlib.util
import os

import pytest

from conftest import ROOT, tiny_overrides
from recbole_llm_mtl.config import build_config
from recbole_llm_mtl.quick_start import run


def _mask_probe():
    spec = importlib.util.spec_from_file_location("mask_probe", os.path.join(ROOT, "benchmarks", "mask_probe.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_masked_rescore_equals_recboles_valid_score(tiny_root, cache_dir, workdir):
    overrides = tiny_overrides(tiny_root, cache_dir, epochs=2)
    result = run("LightGCN", "amazon", config_dict=overrides, evaluate_test=False)
    plain, masked, repeats, users = _mask_probe().rescore(build_config("LightGCN", "amazon", config_dict=overrides),
                                                          result["checkpoint"])
    assert users == 300
    assert repeats > 0  # some valid targets repeat a training item: the case a stricter mask gets wrong
    assert masked == pytest.approx(result["best_valid_result"]["ndcg@10"], abs=5e-5)  # RecBole keeps 4 decimals
    assert plain < masked  # unmasked, a general model ranks the user's own training items first
