"""Cold-start protocol: held-out items never reach training; cold/warm test metrics."""

import torch

from conftest import build, tiny_overrides
from recbole_llm_mtl.quick_start import run


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


def test_run_reports_cold_and_warm(tiny_root, cache_dir, workdir):
    result = run("LLMMTL", "amazon", config_dict=tiny_overrides(tiny_root, cache_dir, cold_item_ratio=0.1,
                                                                   item_id_embedding=False))
    cold, warm = result["test_cold"], result["test_warm"]
    assert cold["rows"] + warm["rows"] == 300 and cold["rows"] > 0
    assert 0 <= cold["recall@10"] <= 1 and 0 <= warm["recall@10"] <= 1


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
