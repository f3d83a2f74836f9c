"""llm_mode: lora trains peft adapters of the shared model end to end (tiny real slice)."""

import os

import pytest
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


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fine_tuning_starts_from_the_pretrained_weights(tiny_root, cache_dir, mode):
    """Building the model must not re-initialise the language model (an `apply(init)` over
    every submodule once redrew its embeddings): every pretrained tensor equals a fresh load."""
    from transformers import AutoModel

    from recbole_llm_mtl.text.encoder import default_model_dir

    _, _, _, _, model = build("LLMMTL", tiny_root, cache_dir, llm_mode=mode, user_text=False,
                              task_weights={"behavior": 1.0})
    fresh = AutoModel.from_pretrained(default_model_dir()).state_dict()
    ours = model.llm.model
    ours = ours.get_base_model() if mode == "lora" else ours
    state = {k.replace(".base_layer", ""): v for k, v in ours.state_dict().items() if "lora_" not in k}
    assert set(fresh) <= set(state)
    for name, tensor in fresh.items():
        assert torch.equal(state[name], tensor), f"{name} differs from the pretrained weights"


@pytest.mark.parametrize("views", ["joint", "fields"])
def test_fine_tuned_item_text_starts_as_the_loaded_vectors(tiny_root, cache_dir, views):
    """What a fine-tuned model re-reads each step (every view of the item text, standardised
    and masked as the frozen vectors are) equals those vectors while the adapters are new."""
    _, _, _, _, model = build("LLMMTL", tiny_root, cache_dir, llm_mode="lora", item_text_views=views,
                              user_text=False, task_weights={"behavior": 1.0})
    assert len(model.item_tokens) == (3 if views == "fields" else 1)
    ids = torch.arange(1, 7)
    if views == "fields":  # an item without a brand: its brand block stays zero
        no_brand = model.item_tokens[1].empty.nonzero().flatten()
        assert len(no_brand), "the slice has no item without a brand"
        ids = torch.cat([ids, no_brand[:1]])
    model.eval()
    with torch.no_grad():
        got = model._tuned_text(ids)
    assert got.shape == model.item_text[ids].shape
    assert torch.allclose(got, model.item_text[ids], atol=1e-3), (got - model.item_text[ids]).abs().max()


@pytest.mark.parametrize("cap", [8, None])
def test_items_re_encoded_with_grad_per_step_are_bounded(tiny_root, cache_dir, cap):
    """Backward keeps the language model's activations of every text re-encoded in a step:
    ``tuned_items_per_step`` bounds them (amazon's ~1,600 items per batch ran out of memory)."""
    _, train, _, _, model = build("LLMMTL", tiny_root, cache_dir, llm_mode="lora", train_batch_size=16,
                                  tuned_items_per_step=cap)
    seen, tuned_text = [], model._tuned_text
    model._tuned_text = lambda ids: seen.append(ids.tolist()) or tuned_text(ids)  # the real encoder, watched
    model.train()
    batch = next(iter(train))
    seq = batch[model.ITEM_SEQ]
    in_batch = set(torch.cat([seq[seq > 0], batch[model.POS_ITEM_ID]]).tolist())
    assert len(in_batch) > 8
    (loss,) = model.calculate_loss(batch)
    loss.backward()
    assert len(seen) == 1 and set(seen[0]) <= in_batch and len(set(seen[0])) == len(seen[0])
    assert len(seen[0]) == (cap if cap else len(in_batch))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
