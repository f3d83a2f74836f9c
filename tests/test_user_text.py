"""User text read by the shared language model: it holds only what happened before the item
each position predicts (titles and reviews), in training, validation and test alike."""

import os
import re
import shutil

import pytest
import torch

from conftest import build


@pytest.fixture(scope="module")
def review_root(tiny_root, tmp_path_factory):
    """The slice plus a .review file with a review of EVERY interaction (valid and test ones
    too, which a converter would never write) and one late review per user, written after
    all of the user's interactions: the model must filter them itself."""
    root = tmp_path_factory.mktemp("reviews")
    shutil.copytree(os.path.join(tiny_root, "amazon"), root / "amazon")
    lines = ["user_id:token\titem_id:token\ttimestamp:float\ttext:token_seq"]
    with open(root / "amazon" / "amazon.inter", encoding="utf-8") as f:
        next(f)
        first_item = {}
        for line in f:
            user, item, ts = line.rstrip("\n").split("\t")
            first_item.setdefault(user, item)
            lines.append(f"{user}\t{item}\t{ts}\trvw {user} {item} at {ts}")
    lines += [f"{u}\t{i}\t100000\tzzlatezz {u} {i}" for u, i in first_item.items()]
    (root / "amazon" / "amazon.review").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(root)


def _titles(model, ids):
    return [model.user_texts.titles[i] for i in ids if model.user_texts.titles[i]]


def _check_rows(model, ds, batch, last_only):
    """Every position's text against the items and times of its own row."""
    texts = model.user_texts
    seqs, lens = batch["item_id_list"].tolist(), batch["item_length"].tolist()
    times, targets, users = batch["timestamp_list"].tolist(), batch["timestamp"].tolist(), batch["user_id"].tolist()
    items = batch["item_id"].tolist()
    checked = 0
    for b, p, key in texts.position_keys(batch, last_only):
        row = seqs[b][: lens[b]] + [items[b]]
        row_times = times[b][: lens[b]] + [targets[b]]
        text = texts.text(key)
        allowed = set(_titles(model, row[: p + 1]))
        for later in _titles(model, row[p + 1:]):
            assert later in allowed or later not in text, f"a later item's title reached position {p}: {text!r}"
        bound = row_times[p + 1]
        raw_user = ds.id2token("user_id", users[b])
        assert "zzlatezz" not in text, f"a review written after the predicted item reached the input: {text!r}"
        history = {ds.id2token("item_id", i) for i in row[: p + 1]}
        for user, item, ts in re.findall(r"rvw (\S+) (\S+) at (\S+)", text):
            assert user == raw_user and item in history and float(ts) < bound, \
                f"review of {item} at {ts} reached position {p} (next item at {bound})"
        checked += 1
    return checked


def test_user_text_holds_only_the_past(review_root, cache_dir):
    config, train, valid, test, model = build("LLMMTL", review_root, cache_dir, user_text=True, user_recent_titles=True)
    assert model.user_texts is not None and model.user_texts.reviews
    ds = train._dataset
    n = sum(_check_rows(model, ds, batch, last_only=False) for batch in list(train)[:3])
    for loader in (valid, test):
        n += sum(_check_rows(model, ds, batch[0], last_only=True) for batch in list(loader)[:2])
    assert n > 500
    # the texts really do carry reviews and titles (a check that could not fail otherwise)
    sample = [model.user_texts.text(k) for k in list(model.user_texts.rows)[:200]]
    assert any("Review: rvw" in t for t in sample) and all(t.startswith("Recently: ") for t in sample)


def test_query_reads_user_text(tiny_root, cache_dir):
    """H_u, and so the score, moves with the user-text vector of the scored position."""
    _, _, valid, _, model = build("LLMMTL", tiny_root, cache_dir, user_text=True, user_recent_titles=True)
    model.eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.profile.text_proj.weight)
        batch = next(iter(valid))[0]
        before = model.full_sort_predict(batch)
        model.user_texts.vectors[1:] = torch.randn_like(model.user_texts.vectors[1:])
        after = model.full_sort_predict(batch)
    assert not torch.allclose(before, after)


def test_default_user_text_is_reviews_without_titles(review_root, cache_dir):
    """``user_recent_titles: False`` (the default): the reviews of the recent items, no titles."""
    _, train, _, _, model = build("LLMMTL", review_root, cache_dir, user_text=True)
    texts = [t for t in map(model.user_texts.text, list(model.user_texts.rows)[:200]) if t]
    assert len(texts) > 50 and all(t.startswith("Review: rvw") for t in texts)
    assert not any("Recently:" in t for t in texts)


def test_user_text_reads_the_last_k_items_newest_first(review_root, cache_dir):
    """At every position the recent titles are the last ``user_history_items`` items up to
    it, newest first: all of them while the history is shorter than that."""
    _, train, _, _, model = build("LLMMTL", review_root, cache_dir, user_text=True, user_recent_titles=True)
    texts, batch = model.user_texts, next(iter(train))
    seqs, k = batch["item_id_list"].tolist(), texts.k
    assert k == 3 and texts.sources() == ["reviews", "recent titles"]
    found = texts.position_keys(batch)
    short = 0
    for b, p, key in found:
        assert key[1] == tuple(seqs[b][max(0, p + 1 - k): p + 1][::-1]), (p, key)
        short += 0 < p + 1 < k
    assert short > 10  # positions with a history shorter than k were checked


def test_no_history_items_means_no_reviews(review_root, cache_dir):
    """``user_history_items: 0`` reads no item's review or title (not all of them)."""
    _, train, _, _, model = build("LLMMTL", review_root, cache_dir, user_text=True, user_history_items=0,
                                  user_recent_titles=True)
    keys = [k for _, _, k in model.user_texts.position_keys(next(iter(train)))]
    assert keys and not any(k[1] or k[2] for k in keys) and model.user_texts.sources() == []


def test_forced_user_text_with_nothing_to_read_stops(tiny_root, cache_dir):
    from recbole_llm_mtl.errors import ConfigError

    with pytest.raises(ConfigError, match="user_text is True but amazon has no user text to read.*user_recent_titles"):
        build("LLMMTL", tiny_root, cache_dir, user_text=True)


def test_auto_reads_user_text_where_the_dataset_has_its_own(tiny_root, review_root, cache_dir):
    """``user_text: auto``: on with a .review file (or profile fields), off where the only
    user text would be titles the history already holds (the amazon slice)."""
    assert build("LLMMTL", tiny_root, cache_dir, user_text="auto")[-1].user_texts is None
    assert build("LLMMTL", review_root, cache_dir, user_text="auto")[-1].user_texts.reviews
    # the default is off (it did not clear the parts rule on valid): a .review file is not read
    assert build("LLMMTL", review_root, cache_dir)[-1].user_texts is None


def test_user_text_off_builds_no_table(tiny_root, cache_dir):
    _, train, _, _, model = build("LLMMTL", tiny_root, cache_dir, user_text=False)
    assert model.user_texts is None and model.profile.text_proj is None
    assert all(torch.isfinite(loss) for loss in model.calculate_loss(next(iter(train))))


def test_bad_review_file_is_named_with_its_line(tiny_root, cache_dir, tmp_path):
    from recbole_llm_mtl.data.user_text import load_reviews
    from recbole_llm_mtl.errors import DataError

    train = build("LLMMTL", tiny_root, cache_dir, user_text=False)[1]._dataset
    bad_header = tmp_path / "a.review"
    bad_header.write_text("user_id:token\titem_id:token\ttext:token_seq\nu\ti\thello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a.review: header lacks \['timestamp'\]"):
        load_reviews(str(bad_header), train)
    bad_row = tmp_path / "b.review"
    bad_row.write_text("user_id:token\titem_id:token\ttimestamp:float\ttext:token_seq\nu\ti\tsoon\thello\n",
                       encoding="utf-8")
    with pytest.raises(DataError, match=r"b.review, line 2: expected user, item, a numeric timestamp"):
        load_reviews(str(bad_row), train)
    header = b"user_id:token\titem_id:token\ttimestamp:float\ttext:token_seq\n"
    bad_bytes = tmp_path / "c.review"
    bad_bytes.write_bytes(header + b"u\ti\t1\tfine\nu\ti\t2\tcaf\xe9 latin-1\n")
    with pytest.raises(DataError, match=r"c.review, line 3: bytes .* are not valid utf-8"):
        load_reviews(str(bad_bytes), train)
    stray_tab = tmp_path / "d.review"
    stray_tab.write_bytes(header + b"u\ti\t1\ta review\twith a tab\n")
    with pytest.raises(DataError, match=r"d.review, line 2: 5 tab-separated values but the header has 4"):
        load_reviews(str(stray_tab), train)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_fine_tuned_model_keeps_user_text_vectors_as_loaded(review_root, cache_dir, mode):
    """With ``llm_mode: lora/full`` the shared model is trained, but user texts keep the
    vectors of the model as loaded (README): a text first met at validation must not be
    encoded by the half-trained model, or valid keys would carry the vectors of whichever
    epoch met them first."""
    over = dict(train_batch_size=16, task_weights={"behavior": 1.0}, user_text=True)
    _, train, valid, _, tuned = build("LLMMTL", review_root, cache_dir, llm_mode=mode, **over)
    # lora reads them with the adapters off (no second copy of the weights); full keeps a copy
    assert (tuned.user_texts.encoder.lm is tuned.llm) == (mode == "lora")
    opt = torch.optim.SGD([p for p in tuned.parameters() if p.requires_grad], lr=1.0)
    tuned.train()
    for batch in list(train)[:2]:
        (loss,) = tuned.calculate_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tuned.eval()
    _, _, _, _, frozen = build("LLMMTL", review_root, cache_dir, **over)
    batch = next(iter(valid))[0]
    keys = [k for _, _, k in tuned.user_texts.position_keys(batch, last_only=True)]
    new = [k for k in keys if k not in tuned.user_texts.rows and k[2]]
    assert new, "the valid batch meets no new user text: nothing is checked"
    with torch.no_grad():
        for texts in (tuned.user_texts, frozen.user_texts):
            texts.lookup(batch, last_only=True)
    got = tuned.user_texts.vectors[[tuned.user_texts.rows[k] for k in new]]
    want = frozen.user_texts.vectors[[frozen.user_texts.rows[k] for k in new]]
    assert torch.allclose(got, want, atol=1e-2), (got - want).abs().max()


def test_review_times_on_another_clock_stop(review_root, cache_dir, tmp_path):
    """Review times are compared with the interactions' times: milliseconds against
    positions (or a normalised time field) would keep every review or none, silently."""
    from recbole_llm_mtl.errors import ConfigError, DataError

    root = tmp_path / "ms"
    shutil.copytree(os.path.join(review_root, "amazon"), root / "amazon")
    review = root / "amazon" / "amazon.review"
    lines = review.read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    review.write_text("\n".join([lines[0]] + ["\t".join([u, i, str(float(ts) * 1000), t]) for u, i, ts, t in rows])
                      + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"amazon.review: review timestamps \(median .*\) are not on the clock"):
        build("LLMMTL", str(root), cache_dir, user_text=True)
    with pytest.raises(ConfigError, match=r"amazon.review: review timestamps are compared .* normalises"):
        build("LLMMTL", review_root, cache_dir, user_text=True, normalize_all=True)


class _Config(dict):
    """A config as RecBole's reads: a key nobody set is None (a baseline has no user_text)."""

    def __missing__(self, key):
        return None


@pytest.mark.parametrize("user_text, user_reviews, reads", [
    (True, True, True), ("auto", True, True), (False, True, False), (None, True, False),
    (True, False, False), ("auto", None, False), (None, None, False)])
def test_one_rule_says_which_review_file_a_run_reads(review_root, user_text, user_reviews, reads):
    """``review_file``: the model's user text and the files a benchmark run records as readable
    both ask it; a missing file is never read."""
    from recbole_llm_mtl.data.user_text import review_file

    folder = os.path.join(review_root, "amazon")  # RecBole's data_path names the dataset's folder
    config = _Config(data_path=folder, dataset="amazon", user_text=user_text, user_reviews=user_reviews)
    assert (review_file(config) == os.path.join(folder, "amazon.review")) == reads
    assert review_file(_Config(config, dataset="no-such")) is None
