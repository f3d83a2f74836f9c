"""llm_mode: lora trains peft adapters of the shared model end to end (tiny real slice)."""

import os

import torch

from conftest import build


def _cache_files(cache_dir):
    return {f: open(os.path.join(cache_dir, f), "rb").read() for f in os.listdir(cache_dir)}


def test_lora_adapters_learn_and_eval_refreshes(tiny_root, cache_dir):
    over = dict(llm_mode="lora", train_batch_size=16, task_weights={"behavior": 1.0})
    _, train, valid, _, model = build("LLMMTL", tiny_root, cache_dir, **over)
    cache_before = _cache_files(cache_dir)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    frozen = [p for n, p in model.llm.named_parameters() if "lora_" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)
    before = {n: p.detach().clone() for n, p in lora.items()}
    cached = model.item_text.clone()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    batch = next(iter(train))
    for _ in range(2):
        (loss,) = model.calculate_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(before[n], p) for n, p in lora.items()), "no LoRA weight changed"
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(next(iter(valid))[0])
    assert torch.isfinite(scores).all()
    assert not torch.allclose(model.item_text, cached), "item vectors were not refreshed for evaluation"
    # the checkpoint holds the adapter weights: a fresh model reloaded from it scores the same
    state = model.state_dict()
    assert any("lora_" in k for k in state)
    _, _, _, _, fresh = build("LLMMTL", tiny_root, cache_dir, **over)
    fresh.load_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.full_sort_predict(next(iter(valid))[0]), scores)
    assert _cache_files(cache_dir) == cache_before, "fine-tuned vectors reached the frozen-mode cache"
