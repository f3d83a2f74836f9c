"""recommend: top items with reasons, new-item ranking, clear errors (real tiny slice)."""

import json
import os
import random
import shutil

import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import build, tiny_overrides
from recbole_llm_mtl.errors import ConfigError
from recbole_llm_mtl.quick_start import run
from recbole_llm_mtl.recommend import Recommender, main
from recbole_llm_mtl.trainer import make_trainer


@pytest.fixture(scope="module")
def own_root(tiny_root, tmp_path_factory):
    """The checkpoint's own copy of the slice: tests edit it (and restore it, see edit_data)."""
    root = tmp_path_factory.mktemp("rec_data")
    shutil.copytree(os.path.join(tiny_root, "amazon"), root / "amazon")
    return root


@pytest.fixture(scope="module")
def checkpoint(own_root, cache_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("rec")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        result = run("LLMMTL", "amazon", config_dict=tiny_overrides(str(own_root), cache_dir))
    finally:
        os.chdir(cwd)
    return result["checkpoint"]


@pytest.fixture()
def edit_data(own_root):
    """The folder the checkpoint was trained on; its files are restored after the test."""
    folder = own_root / "amazon"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    yield folder
    for p in folder.iterdir():
        if p.name not in before:
            p.unlink()
    for name, data in before.items():
        (folder / name).write_bytes(data)


def _rows(path):
    header, *rows = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    return header, rows


def _write_rows(path, header, rows):
    path.write_text("\n".join([header] + rows) + "\n", encoding="utf-8")


def _users(root, n):
    _, rows = _rows(root / "amazon" / "amazon.inter")
    return list(dict.fromkeys(r.split("\t")[0] for r in rows))[:n]


def _first_user(tiny_root):
    with open(os.path.join(tiny_root, "amazon", "amazon.inter")) as f:
        next(f)
        return next(f).split("\t")[0]


def test_recommend_with_reasons(checkpoint, tiny_root):
    rec = Recommender(checkpoint)
    user = _first_user(tiny_root)
    (out,) = rec.recommend([user], topk=5)
    recs = out["recommendations"]
    assert len(recs) == 5
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    history = {rec.titles[i] for i in rec.seq[rec.user_row(user), : rec.lens[rec.user_row(user)]].tolist()}
    for r in recs:
        assert r["because_you_bought"] in history       # the reason is one of the user's own items
        assert r["main_signal"] in ("behaviour", "profile", "reasoning")


def test_new_item_ranks_users(checkpoint):
    rec = Recommender(checkpoint)
    users = rec.users_for_new_item("3D printer PLA filament 1.75mm, Brand: eSUN", topk=3)
    assert len(users) == 3 and users[0]["score"] >= users[-1]["score"]


def test_cli_json_and_unknown_user(checkpoint, tiny_root, capsys):
    assert main(["--checkpoint", checkpoint, "--user", _first_user(tiny_root), "--topk", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data[0]["recommendations"]) == 3
    assert main(["--checkpoint", checkpoint, "--user", "NO_SUCH_USER"]) == 2
    assert "unknown user 'NO_SUCH_USER'" in capsys.readouterr().err
    assert main(["--checkpoint", checkpoint, "--item-text", "Nitrile gloves", "--item-text", "Filament",
                 "--topk", "2", "--json"]) == 0
    out = capsys.readouterr()
    data = json.loads(out.out)
    assert [d["item_text"] for d in data] == ["Nitrile gloves", "Filament"] and len(data[0]["users"]) == 2
    # the slice reads its fields one by one: the free text stands for the title alone, and says so
    assert "note: a new item's free text is read as its title (item_text_views: fields); its brand, categories" \
        in out.err


def test_reordered_rows_give_identical_recommendations(checkpoint, edit_data):
    """Internal ids follow row order: the checkpoint used to be read by row position, so
    shuffled .inter/.item rows (same content) gave another top-10."""
    users = _users(edit_data.parent, 5)
    before = Recommender(checkpoint).recommend(users, topk=10)
    rng = random.Random(0)
    for name in ("amazon.inter", "amazon.item"):
        header, rows = _rows(edit_data / name)
        rng.shuffle(rows)
        _write_rows(edit_data / name, header, rows)
    rec = Recommender(checkpoint)
    after = rec.recommend(users, topk=10)
    for b, a in zip(before, after):
        assert [r["item"] for r in a["recommendations"]] == [r["item"] for r in b["recommendations"]]
        assert [r["score"] for r in a["recommendations"]] == pytest.approx([r["score"] for r in b["recommendations"]], abs=1e-3)
    assert rec.notes == []  # the data fingerprint ignores row order


def test_changed_data_is_named_and_new_items_are_scored_from_text(checkpoint, edit_data):
    """Appending an item to .item was a state-dict size-mismatch traceback."""
    header, items = _rows(edit_data / "amazon.item")
    ih, inter = _rows(edit_data / "amazon.inter")
    gone_users = set(_users(edit_data.parent, 300)[-3:])
    gone_item = items[-1].split("\t")[0]
    inter = [r for r in inter if r.split("\t")[0] not in gone_users and r.split("\t")[1] != gone_item]
    _write_rows(edit_data / "amazon.inter", ih, inter)
    new = ["NEWITEM1\tNitrile exam gloves, powder free, size M\tIndustrial & Scientific Lab Supplies\tAcme",
           "NEWITEM2\t\t\t"]
    _write_rows(edit_data / "amazon.item", header, items[:-1] + new)
    rec = Recommender(checkpoint)
    notes = "\n".join(rec.notes)
    assert "3 users and 1 item of the checkpoint are missing from the data" in notes
    assert "1 item new since training is scored from text alone" in notes
    assert "1 item new since training has no text the model can read: left out" in notes
    assert (f"data changed since training: amazon.inter has {len(inter)} rows (was " in notes
            and f"amazon.item has {len(items) + 1} rows (was {len(items)})" in notes)
    n = int(rec.candidates.sum())
    (out,) = rec.recommend([_users(edit_data.parent, 1)[0]], topk=n)
    picked = [r["item"] for r in out["recommendations"]]
    assert "NEWITEM1" in picked and "NEWITEM2" not in picked and gone_item not in picked


def _seen(root, user):
    _, rows = _rows(root / "amazon" / "amazon.inter")
    return {r.split("\t")[1] for r in rows if r.split("\t")[0] == user}


def test_items_the_user_has_are_left_out(checkpoint, own_root):
    """Only the last MAX_ITEM_LIST_LENGTH items were excluded, and a large --topk returned
    [PAD] and seen items at score -1."""
    rec = Recommender(checkpoint)
    _, rows = _rows(own_root / "amazon" / "amazon.inter")
    counts = {}
    for r in rows:
        counts[r.split("\t")[0]] = counts.get(r.split("\t")[0], 0) + 1
    user = max(counts, key=counts.get)  # longer than the model's history window
    assert counts[user] > rec.model.max_seq_length
    seen = _seen(own_root, user)
    (out,) = rec.recommend([user], topk=rec.data.item_num - 1)
    picked = [r["item"] for r in out["recommendations"]]
    assert not set(picked) & seen and "[PAD]" not in picked
    assert len(picked) == rec.data.item_num - 1 - len(seen)
    (kept,) = rec.recommend([user], topk=rec.data.item_num - 1, exclude_seen=False)
    assert seen <= {r["item"] for r in kept["recommendations"]}


def test_topk_out_of_range_is_one_line(checkpoint, own_root, capsys):
    user = _users(own_root, 1)[0]
    for k in ("0", "100000"):
        assert main(["--checkpoint", checkpoint, "--user", user, "--topk", k]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --topk {k} is out of range") and "\n" not in err
    assert main(["--checkpoint", checkpoint, "--user", user, "--topk", "3", "--include-seen", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["recommendations"]) == 3


def test_request_errors_before_loading(tmp_path, capsys):
    """A users file with non-UTF-8 bytes was a UnicodeDecodeError traceback; --user with
    --item-text dropped the user without a word; an empty --item-text was ranked."""
    users = tmp_path / "users.txt"
    users.write_bytes(b"U1\ncaf\xe9\n")
    for args, message in ((["--users-file", str(users)], f"error: {users}: not UTF-8 text (bytes b'\\xe9\\n'"),
                          (["--user", "U1", "--item-text", "gloves"], "error: give users (--user, --users-file) or "
                                                                         "new items (--item-text, --items-file), not both"),
                          (["--item-text", ""], "error: --item-text '' is empty")):
        assert main(["--checkpoint", str(tmp_path / "none.pth")] + args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err, err


def test_score_is_the_logit(checkpoint, own_root):
    """The printed score was sigmoid(logit): 0.999606, 0.999527, ... for a whole top-5. It is
    the logit now: its sigmoid is what the model's full_sort_predict returns."""
    rec = Recommender(checkpoint)
    user = _users(own_root, 1)[0]
    (out,) = rec.recommend([user], topk=5)
    row = rec.user_row(user)
    m = rec.model
    batch = Interaction({m.ITEM_SEQ: rec.seq[row:row + 1], m.ITEM_SEQ_LEN: rec.lens[row:row + 1],
                         m.USER_ID: rec.user_ids[row:row + 1]})
    with torch.no_grad():
        predicted = m.full_sort_predict(batch)[0]
    for r in out["recommendations"]:
        item = rec.data.token2id("item_id", r["item"])
        assert torch.sigmoid(torch.tensor(r["score"], dtype=torch.float64)) == pytest.approx(float(predicted[item]), abs=1e-4)
    assert out["recommendations"][0]["score"] - out["recommendations"][-1]["score"] > 1e-3


def test_new_item_text_is_encoded_by_the_fine_tuned_model(tiny_root, cache_dir, tmp_path):
    """--item-text with a lora checkpoint encoded the text with the base model, not the
    checkpoint's fine-tuned one: an existing item's own text, given as a new item, now
    scores users as the model scores that item from its text."""
    # one text per item: under per-field views a free text is the first view alone
    over = dict(llm_mode="lora", train_batch_size=16, task_weights={"behavior": 1.0},
                checkpoint_dir=str(tmp_path), item_text_views="joint")
    config, train, _, _, model = build("LLMMTL", tiny_root, cache_dir, **over)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for batch in list(train)[:2]:  # move the adapters away from the base model
        (loss,) = model.calculate_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.refresh_text_vectors()
    trainer = make_trainer(config, model)
    trainer._train_data = train
    trainer._save_checkpoint(0, verbose=False)
    rec = Recommender(trainer.saved_model_file)
    m, item = rec.model, 7
    text = rec._item_texts()[0][item]
    got = rec.users_for_new_item(text, topk=len(rec.seq))
    _, _, q = rec._queries(torch.arange(len(rec.seq)))
    with torch.no_grad():
        expected = m.scorer.logits(q, m.scorer.items(m.item_norm(m.adaptor(m.item_text[item:item + 1])))).squeeze(1)
    by_user = {rec.data.id2token("user_id", int(u)): float(s) for u, s in zip(rec.user_ids, expected)}
    assert [g["score"] for g in got] == pytest.approx([by_user[g["user"]] for g in got], abs=2e-3)


def test_serving_encodes_only_the_user_texts_it_scores(tiny_root, cache_dir, tmp_path):
    """recommend used to encode the user text of every training position at start-up (an
    hour of CPU for ml-100k without a warm cache); it now encodes the texts of the users it
    scores, and they score as the texts training prepares for the same positions."""
    over = tiny_overrides(tiny_root, cache_dir, user_text=True, user_recent_titles=True, checkpoint_dir=str(tmp_path))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ckpt = run("LLMMTL", "amazon", config_dict=over)["checkpoint"]
    finally:
        os.chdir(cwd)
    rec = Recommender(ckpt)
    texts = rec.model.user_texts
    assert texts is not None and len(texts.rows) == 0  # nothing encoded up front
    user = _first_user(tiny_root)
    (lazy,) = rec.recommend([user], topk=5)
    assert len(texts.rows) == 1  # that user's latest text only
    # the same user text through training's up-front path gives the same vector and scores
    (key,) = texts.rows
    texts.rows, texts.vectors = {}, texts.vectors[:1]
    texts.add([key], cache=True)
    (eager,) = rec.recommend([user], topk=5)
    assert [r["item"] for r in eager["recommendations"]] == [r["item"] for r in lazy["recommendations"]]
    assert [r["score"] for r in eager["recommendations"]] == pytest.approx(
        [r["score"] for r in lazy["recommendations"]], abs=1e-4)


def test_checkpoint_rebuilt_from_its_recorded_config_not_todays_yaml(tiny_root, cache_dir, tmp_path):
    """A checkpoint made before amazon.yaml set ``item_text_views: fields`` recorded no such
    key: it is rebuilt as it ran (one joint text block), not with today's YAML (three field
    blocks, whose weights would not fit)."""
    config, train, _, _, model = build("LLMMTL", tiny_root, cache_dir, item_text_views="joint",
                                       checkpoint_dir=str(tmp_path))
    trainer = make_trainer(config, model)
    trainer._train_data = train
    trainer._save_checkpoint(0, verbose=False)
    state = torch.load(trainer.saved_model_file, weights_only=True)
    del state["config_input"]["item_text_views"]  # as written before the key existed
    torch.save(state, trainer.saved_model_file)
    rec = Recommender(trainer.saved_model_file)
    assert rec.config["item_text_views"] is None
    assert rec.model.item_text.shape == model.item_text.shape
    assert torch.equal(rec.model.item_text, model.item_text)
    (out,) = rec.recommend([_first_user(tiny_root)], topk=3)
    assert len(out["recommendations"]) == 3
    # a record that does not match the weights (three blocks asked, one stored): one clear line
    state["config_input"]["item_text_views"] = "fields"
    torch.save(state, trainer.saved_model_file)
    with pytest.raises(ConfigError, match="does not fit the model built from its config.*retrain"):
        Recommender(trainer.saved_model_file)
