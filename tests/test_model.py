"""LLMMTL on a real 300-user slice of amazon with the real MiniLM encoder."""

import os

import pytest
import torch

from conftest import ALL_TASKS, build
from recbole_llm_mtl.text.cache import VectorCache


@pytest.fixture(scope="module")
def built(tiny_root, cache_dir):
    return build("LLMMTL", tiny_root, cache_dir, task_weights=ALL_TASKS)


def _steps(model, loader, n, lr=1e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    history = []
    batch = next(iter(loader))
    for _ in range(n):
        losses = model.calculate_loss(batch)
        opt.zero_grad()
        sum(losses).backward()
        opt.step()
        history.append([l.item() for l in losses])
    return history


def test_three_losses_finite_and_decreasing(built):
    config, train, _, _, model = built
    assert model.loss_names == ["behavior", "user_profile", "item_semantics"]
    hist = _steps(model, train, 15)
    for k, name in enumerate(model.loss_names):
        values = [h[k] for h in hist]
        assert all(torch.isfinite(torch.tensor(values))), name
        assert values[-1] < values[0], f"{name} loss did not decrease: {values}"


@pytest.mark.parametrize("overrides,names", [
    ({"task_weights": {"behavior": 1.0, "user_profile": 0.0, "item_semantics": 0.1}}, ["behavior", "item_semantics"]),
    ({"task_weights": {"behavior": 1.0}}, ["behavior"]),
    ({}, ["behavior"]),  # the default: L_u and L_v off (tuning log, sessions 8 and 10)
    ({"task_weighting": "uncertainty", "task_weights": ALL_TASKS}, ["behavior", "user_profile", "item_semantics"]),
    ({"behavior_loss": "bce", "scorer": "dot", "task_weights": ALL_TASKS}, ["behavior", "user_profile", "item_semantics"]),
])
def test_ablation_switches_change_losses(tiny_root, cache_dir, overrides, names):
    _, train, _, _, model = build("LLMMTL", tiny_root, cache_dir, **overrides)
    assert model.loss_names == names
    # the k-means labels are made only for an auxiliary task that trains
    assert (train.dataset.text_features.behavior_labels is None) == (names == ["behavior"])
    losses = model.calculate_loss(next(iter(train)))
    assert len(losses) == len(names) and all(torch.isfinite(l) for l in losses)
    if overrides.get("task_weighting") == "uncertainty":
        assert model.weighting.log_vars.requires_grad


def test_label_smoothing_mixes_in_a_uniform_target(tiny_root, cache_dir):
    """label_smoothing e: (1 - e) * CE + e * CE against a uniform target, so the loss is
    linear in e and differs from the plain CE."""
    config, train, _, _, model = build("LLMMTL", tiny_root, cache_dir, label_smoothing=0.1)
    assert model.label_smoothing == config["label_smoothing"] == 0.1
    batch = next(iter(train))
    model.eval()  # no dropout: the passes below differ only by the smoothing
    with torch.no_grad():
        smoothed = model.calculate_loss(batch)[0]
        model.tasks["behavior"].label_smoothing = 0.0
        plain = model.calculate_loss(batch)[0]
        model.tasks["behavior"].label_smoothing = 0.2
        twice = model.calculate_loss(batch)[0]
    assert abs(smoothed - plain) > 1e-3
    assert torch.isclose(twice - smoothed, smoothed - plain, rtol=1e-3)


def test_full_sort_equals_predict(built):
    _, _, valid, _, model = built
    model.eval()
    batch = next(iter(valid))[0]
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        items = torch.randint(1, model.n_items, (len(batch),))
        batch.update(type(batch)({"item_id": items}))
        pair = model.predict(batch)
    # predict gives the float32 logit (RecBole's sampled evaluation buffer is float32)
    assert pair.dtype == torch.float32
    assert torch.allclose(full[torch.arange(len(batch)), items], torch.sigmoid(pair.double()), atol=1e-6)


def test_inductive_mode_ranks_with_text_only(tiny_root, cache_dir):
    _, _, valid, _, model = build("LLMMTL", tiny_root, cache_dir, item_id_embedding=False)
    assert not hasattr(model, "item_embedding")
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(next(iter(valid))[0])
    assert scores.shape[1] == model.n_items and torch.isfinite(scores).all()


# one text per item (amazon reads its fields as separate texts): one cache file per setting
ONE_TEXT = {"item_text_views": "joint"}


def test_cache_hit_and_invalidation(tiny_root, tmp_path, caplog):
    cache = str(tmp_path / "cache")
    build("LLMMTL", tiny_root, cache, task_weights={"behavior": 1.0}, user_text=False, **ONE_TEXT)
    files = os.listdir(cache)
    assert len(files) == 1
    caplog.set_level("INFO")
    _, _, _, _, m2 = build("LLMMTL", tiny_root, cache, task_weights={"behavior": 1.0}, user_text=False, **ONE_TEXT)
    assert "loaded from cache" in caplog.text and os.listdir(cache) == files
    caplog.clear()
    _, _, _, _, m3 = build("LLMMTL", tiny_root, cache, task_weights={"behavior": 1.0}, user_text=False, **ONE_TEXT,
                           item_text_template={"title": "Product: {}", "brand": "Brand: {}",
                                               "categories": "Category: {}"})
    assert "loaded from cache" not in caplog.text and len(os.listdir(cache)) == 2
    assert not torch.equal(m2.item_text, m3.item_text)


def test_truncated_cache_is_detected_and_rebuilt(tiny_root, tmp_path, caplog):
    cache = str(tmp_path / "cache")
    _, _, _, _, m1 = build("LLMMTL", tiny_root, cache, task_weights={"behavior": 1.0}, user_text=False, **ONE_TEXT)
    (path,) = [os.path.join(cache, f) for f in os.listdir(cache)]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    caplog.set_level("WARNING")
    _, _, _, _, m2 = build("LLMMTL", tiny_root, cache, task_weights={"behavior": 1.0}, user_text=False, **ONE_TEXT)
    assert "re-encoding" in caplog.text
    assert torch.allclose(m1.item_text, m2.item_text, atol=1e-5)
    assert VectorCache(cache).load(os.path.basename(path)[: -len(".safetensors")]) is not None


def test_causal_no_future_item_reaches_a_position(built):
    """Training reads every position: replacing items after t must not change position t."""
    _, train, _, _, model = built
    model.eval()
    batch = next(iter(train))
    seq, lens = batch["item_id_list"].clone(), batch["item_length"]
    row = int(torch.argmax(lens))
    t = int(lens[row]) // 2
    with torch.no_grad():
        h_v = model.item_representations()
        one = lambda: {"user_id": batch["user_id"][row:row + 1], "item_id_list": seq[row:row + 1],
                       "item_length": lens[row:row + 1]}
        _, _, q1 = model.user_states(one(), h_v)
        seq[row, t + 1:] = torch.randint(1, model.n_items, (seq.size(1) - t - 1,))
        _, _, q2 = model.user_states(one(), h_v)
    assert torch.allclose(q1[0, : t + 1], q2[0, : t + 1], atol=1e-5)
    assert not torch.allclose(q1[0, t + 1:], q2[0, t + 1:])


@pytest.mark.parametrize("stride, tied", [(None, False), (2, False), (None, True)],
                         ids=["disjoint", "stride-2", "tied-timestamps"])
def test_training_windows_cover_every_target(tiny_root, cache_dir, stride, tied):
    """Rows kept for all-position training (windows of MAX_ITEM_LIST_LENGTH = 5) against
    RecBole's own one-row-per-prefix train split: every target is trained, exactly once with
    disjoint windows; with ``train_window_stride: 2`` each is also trained with a context of
    at least 5 - 2 + 1 items whenever the user has that many before it. ``tied``: pairs of
    interactions share a timestamp (as on ml-100k, where 76% do); the row order of the
    split, not the timestamp, says which target comes last."""
    from recbole_llm_mtl.data.dataset import all_position_rows

    window = 5
    train = build("LLMMTL", tiny_root, cache_dir, train_all_positions=False, MAX_ITEM_LIST_LENGTH=window,
                  train_window_stride=stride)[1]._dataset.inter_feat
    users, times = train["user_id"].numpy(), train["timestamp"].numpy()
    lengths = train["item_length"].numpy()
    kept = set(all_position_rows(users, times // 2 if tied else times, window, stride).tolist())
    assert not tied or len(set(zip(users, times // 2))) < len(users)
    rows_of_user = {}  # each user's prefix rows in time order: row q predicts the user's item q + 1
    for i in sorted(range(len(users)), key=lambda i: (users[i], times[i])):
        rows_of_user.setdefault(users[i], []).append(i)
    checked = short = 0
    for rows in rows_of_user.values():
        contexts = [[] for _ in rows]  # per target: the context lengths it is trained with
        for t, r in enumerate(rows):
            if r in kept:
                n = lengths[r]
                for p in range(n):  # position p of row t predicts the target of row t + 1 - n + p
                    contexts[t + 1 - n + p].append(p + 1)
        for q, got in enumerate(contexts):
            best = lengths[rows[q]]  # the longest context RecBole's own row gives this target
            assert got, "a target is never trained"
            if stride is None:
                assert len(got) == 1
                short += max(got) < best
            else:
                assert max(got) >= min(best, window - stride + 1), (q, got)
            checked += 1
    assert len(kept) < len(users) and checked == len(users)
    if stride is None:  # disjoint windows: some targets with long histories see only a short context
        assert short > 0


def test_field_views_encode_each_field_alone(tiny_root, cache_dir):
    """``item_text_views: fields``: one block per item text field, each the standardised
    vector of that field's text alone; an item without a field has zeros in its block; a new
    item's free text fills the first block only."""
    from recbole_llm_mtl.text.templates import render_texts, template_from_config

    config, train, _, _, model = build("LLMMTL", tiny_root, cache_dir, item_text_views="fields")
    joint = build("LLMMTL", tiny_root, cache_dir, item_text_views="joint")[4]
    dataset = train.dataset
    template = template_from_config(config["item_text_fields"], config["item_text_template"])
    d = joint.item_text.size(1)
    assert list(template) == ["title", "brand", "categories"] and model.item_text.shape == (joint.n_items, 3 * d)
    lm = model.text_encoder.lm
    for k, (field, fmt) in enumerate(template.items()):
        texts, _ = render_texts(dataset, dataset.item_feat, {field: fmt}, config["text_separator"], "item")
        block = model.item_text[:, k * d:(k + 1) * d]
        empty = [i for i, t in enumerate(texts) if i and not t]
        have = [i for i, t in enumerate(texts) if t]
        if field == "brand":
            assert empty, "the slice has no item without a brand: the zero block is not checked"
        assert torch.all(block[empty] == 0)
        want = lm.encode([texts[i] for i in have[:4]], show_progress=False)
        got = block[have[:4]] * model.text_std[k * d:(k + 1) * d] + model.text_mean[k * d:(k + 1) * d]
        assert torch.allclose(got, want, atol=2e-2), (field, (got - want).abs().max())
    assert not torch.allclose(model.item_text[:, :d], joint.item_text)  # the title alone is not the joint text
    new = model.encode_new_items([["Nitrile gloves"]])  # a free text: the first view alone
    assert new.shape == (1, 3 * d) and torch.all(new[:, d:] == 0) and new[:, :d].abs().sum() > 0
    # an item's own views, as recommend reads a new item of the item file, give its row back
    from recbole_llm_mtl.data.text_features import item_text_views

    _, _, views = item_text_views(config, dataset)
    ids = [1, 2, 3]
    again = model.encode_new_items([[view[i] for i in ids] for view in views.values()])
    assert torch.allclose(again, model.item_text[ids], atol=2e-2)
    losses = _steps(model, train, 3)
    assert all(torch.isfinite(torch.tensor(step)).all() for step in losses)
