"""Cold-start protocol: held-out items never reach training; cold/warm test metrics."""

import pytest
import torch

from conftest import build, run_captured
from test_leakage import assert_batches_precede_valid


@pytest.fixture(scope="module")
def cold_run(tiny_root, cache_dir, tmp_path_factory):
    """One epoch of the inductive model under the cold-start protocol, through run()."""
    return run_captured("LLMMTL", tiny_root, cache_dir, str(tmp_path_factory.mktemp("cold")),
                        cold_item_ratio=0.1, item_id_embedding=False)


def test_cold_items_have_no_train_interactions(tiny_root, cache_dir):
    config, train, valid, test, model = build("LLMMTL", tiny_root, cache_dir, cold_item_ratio=0.1,
                                              item_id_embedding=False)
    ds = train._dataset
    cold = ds.cold_items
    assert 0 < int(cold.sum()) == round(0.1 * (len(cold) - 1))
    f = ds.inter_feat
    n = f["item_length"]
    seen = torch.cat([f["item_id"], f["item_id_list"][torch.arange(f["item_id_list"].size(1)) < n.unsqueeze(1)]])
    assert not cold[seen].any(), "a cold item reached the training data"
    assert (n > 0).all()
    targets = test._dataset.inter_feat["item_id"]
    assert cold[targets].any() and (~cold[targets]).any()
    assert all(torch.isfinite(l) for l in model.calculate_loss(next(iter(train))))


def test_run_reports_cold_and_warm_on_valid_and_test(cold_run):
    result, _ = cold_run
    for split in ("valid", "test"):
        cold, warm = result[f"{split}_cold"], result[f"{split}_warm"]
        assert cold["rows"] + warm["rows"] == 300 and cold["rows"] > 0
        assert 0 <= cold["recall@10"] <= 1 and 0 <= warm["recall@10"] <= 1


def test_run_never_trains_on_a_cold_item(cold_run):
    """No batch that run() trains on holds a cold item, as target or in a history, and
    every row still ends before the user's valid item."""
    _, captured = cold_run
    cold = captured.built.dataset.cold_items
    assert cold.any()
    for batch in captured.batches:
        n = batch["item_length"]
        in_history = torch.arange(batch["item_id_list"].size(1)) < n.unsqueeze(1)
        assert not cold[batch["item_id"]].any(), "a cold item is a training target"
        assert not cold[batch["item_id_list"][in_history]].any(), "a cold item is in a training history"
    assert assert_batches_precede_valid(captured) > 250


def test_cold_items_are_not_softmax_negatives(tiny_root, cache_dir):
    """Items unseen in training are unknown, not negatives: the loss ignores their vectors."""
    config, train, valid, test, model = build("LLMMTL", tiny_root, cache_dir, cold_item_ratio=0.1,
                                              item_id_embedding=False)
    cold = train._dataset.cold_items
    in_softmax = torch.zeros_like(cold)
    in_softmax[model.train_items] = True
    assert not (in_softmax & cold).any() and not in_softmax[0]
    batch = next(iter(train))
    model.eval()  # no dropout: two identical forward passes
    with torch.no_grad():
        before = model.calculate_loss(batch)[0]
        model.item_text[cold] = torch.randn(int(cold.sum()), model.item_text.size(1)) * 10
        after = model.calculate_loss(batch)[0]
        assert torch.equal(before, after)
        model.item_text[model.train_items[:5]] += 10.0  # a seen item's vector does matter
        assert not torch.equal(after, model.calculate_loss(batch)[0])


def test_behavior_items_all_lets_cold_items_compete(tiny_root, cache_dir):
    """``behavior_items: all`` (the alternative the default was chosen against): every item
    but padding is in the softmax, so a cold item's vector moves the loss."""
    config, train, valid, test, model = build("LLMMTL", tiny_root, cache_dir, cold_item_ratio=0.1,
                                              item_id_embedding=False, behavior_items="all")
    cold = train._dataset.cold_items
    assert model.train_items.tolist() == list(range(1, len(cold)))
    batch = next(iter(train))
    model.eval()
    with torch.no_grad():
        before = model.calculate_loss(batch)[0]
        model.item_text[cold] = torch.randn(int(cold.sum()), model.item_text.size(1)) * 10
        assert not torch.equal(before, model.calculate_loss(batch)[0])
