"""No valid/test item of a user reaches that user's inputs (real amazon slice).

The run() tests hold for any model built through the real path: what the model holds at
construction, and what it is trained on, must not change when every user's valid and test
items (and, with user text on, those interactions' reviews) are replaced, and every training
batch must end before the user's valid position.
"""

import os
from collections import Counter, defaultdict

import pytest
import torch

from conftest import ALL_TASKS, build, run_captured


def _raw_sequences(tiny_root, dataset):
    """user id -> internal item ids in time order, read straight from the atomic file."""
    seqs = _token_sequences(_read_inter(os.path.join(tiny_root, "amazon"))[1])
    return {dataset.token2id("user_id", u): [dataset.token2id("item_id", i) for i in s] for u, s in seqs.items()}


def test_every_input_is_exactly_the_earlier_items(tiny_root, cache_dir):
    """Each row's history is the items strictly before its target; train rows end before
    the user's valid item, valid rows before it too."""
    config, train, valid, test, _ = build("LLMMTL", tiny_root, cache_dir)
    seqs = _raw_sequences(tiny_root, train._dataset)
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    checked = 0
    for split, last_allowed in ((train, -3), (valid, -2), (test, -1)):
        f = split._dataset.inter_feat
        for u, hist, n, target, ts in zip(f["user_id"].tolist(), f["item_id_list"], f["item_length"].tolist(),
                                          f["item_id"].tolist(), f["timestamp"].tolist()):
            seq = seqs[u]
            pos = int(ts)  # amazon's timestamp is the position in the sequence
            assert seq[pos] == target
            assert pos <= len(seq) + last_allowed, "a train/valid row reaches a held-out position"
            assert hist[:n].tolist() == seq[max(0, pos - max_len):pos]
            assert (hist[n:] == 0).all()
            checked += 1
    assert checked > 300


def test_user_side_ignores_held_out_items(tiny_root, cache_dir):
    """The user-side query that ranks a user's valid item does not change when everything
    the model knows about that user's valid and test items (text vector, id embedding,
    tags) is replaced: it never reads them."""
    config, train, valid, test, model = build("LLMMTL", tiny_root, cache_dir, task_weights=ALL_TASKS)
    model.eval()
    batch = next(iter(valid))[0]
    seq, lens, users = batch["item_id_list"], batch["item_length"], batch["user_id"]
    test_f = test._dataset.inter_feat
    test_target = dict(zip(test_f["user_id"].tolist(), test_f["item_id"].tolist()))
    held = torch.unique(torch.cat([batch["item_id"], torch.tensor([test_target[u] for u in users.tolist()])]))
    in_history = torch.zeros(model.n_items, dtype=torch.bool)
    for row in range(len(seq)):
        in_history[seq[row, : lens[row]]] = True
    only_held = held[~in_history[held]]  # held-out items no user of this batch has seen before
    assert len(only_held) > 10

    def query():
        with torch.no_grad():
            _, _, q = model.user_states(batch, model.item_representations())
        return model.gather_indexes(q, lens - 1)

    q1 = query()
    with torch.no_grad():
        model.item_text[only_held] = torch.randn(len(only_held), model.item_text.size(1))
        model.item_embedding.weight[only_held] = torch.randn(len(only_held), model.hidden_size)
        for task in ("user_profile", "item_semantics"):
            model.tasks[task].item_labels[only_held] = 1.0
    q2 = query()
    assert torch.allclose(q1, q2, atol=1e-6)
    with torch.no_grad():  # sanity: the same change to a history item does move the query
        first = seq[0, 0]
        model.item_embedding.weight[first] = torch.randn(model.hidden_size)
    assert not torch.allclose(q1, query(), atol=1e-6)


def _read_inter(folder):
    """(user, item, timestamp) rows of ``folder/amazon.inter``, file order."""
    with open(os.path.join(folder, "amazon.inter"), encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    return header, [tuple(r.split("\t")) for r in rows]


def _token_sequences(rows):
    """user token -> item tokens in time order."""
    seqs = defaultdict(list)
    for user, item, ts in rows:
        seqs[user].append((float(ts), item))
    return {u: [i for _, i in sorted(v)] for u, v in seqs.items()}


REVIEW_HEADER = "user_id:token\titem_id:token\ttimestamp:float\ttext:token_seq"
HELD_REVIEW = "heldoutreview"  # marks the review of a valid/test interaction: no input may hold it


def _write(root, header, rows, item_header, item_rows, reviews=None):
    os.makedirs(os.path.join(root, "amazon"), exist_ok=True)
    with open(os.path.join(root, "amazon", "amazon.inter"), "w", encoding="utf-8") as f:
        f.write("\n".join([header] + ["\t".join(r) for r in rows]) + "\n")
    with open(os.path.join(root, "amazon", "amazon.item"), "w", encoding="utf-8") as f:
        f.write("\n".join([item_header] + item_rows) + "\n")
    if reviews is not None:
        with open(os.path.join(root, "amazon", "amazon.review"), "w", encoding="utf-8") as f:
            f.write("\n".join([REVIEW_HEADER] + ["\t".join(r) for r in reviews]) + "\n")
    return str(root)


def held_out_pair(tiny_root, out, reviews=False):
    """Two data paths that differ only in every user's valid and test items.

    ``same`` is the slice; in ``moved`` those two items are replaced by popular train items
    the user never had. Train lines come first in both files and the item file follows the
    ``same`` id order, so RecBole maps every user and item to the same id in both (RecBole
    numbers tokens by first appearance): any difference between the two models can only
    come from the held-out interactions. With ``reviews``, both get a ``.review`` file with
    the user's review of every interaction, as a careless converter would write it: the train
    ones equal, the held-out ones marked and different in the two (their items differ too).
    """
    header, rows = _read_inter(os.path.join(tiny_root, "amazon"))
    by_user = defaultdict(list)
    for r in rows:
        by_user[r[0]].append(r)
    held_set = {r for user_rows in by_user.values() for r in sorted(user_rows, key=lambda r: float(r[2]))[-2:]}
    held = [r for r in rows if r in held_set]
    train = [r for r in rows if r not in held_set]
    popular = [i for i, _ in Counter(r[1] for r in train).most_common()]
    unseen = {u: iter([i for i in popular if i not in {r[1] for r in user_rows}]) for u, user_rows in by_user.items()}
    moved = [(user, next(unseen[user]), ts) for user, _, ts in held]
    order = list(dict.fromkeys(r[1] for r in train + held))
    with open(os.path.join(tiny_root, "amazon", "amazon.item"), encoding="utf-8") as f:
        item_header, *item_rows = f.read().splitlines()
    by_item = {r.split("\t", 1)[0]: r for r in item_rows}
    item_rows = [by_item[i] for i in order if i in by_item]
    review = {"same": None, "moved": None}
    if reviews:
        train_reviews = [(u, i, ts, f"rvw {u} {i}") for u, i, ts in train]
        review = {name: train_reviews + [(u, i, ts, f"{HELD_REVIEW} {name} {u} {i}") for u, i, ts in rows]
                  for name, rows in (("same", held), ("moved", moved))}
    return (_write(out / "same", header, train + held, item_header, item_rows, review["same"]),
            _write(out / "moved", header, train + moved, item_header, item_rows, review["moved"]))


# the model as defaulted, and with user text on (the user's reviews and recent titles, every task)
PAIR_RUNS = {"default": {}, "user_text": {"user_text": True, "user_recent_titles": True}}


@pytest.fixture(scope="module", params=list(PAIR_RUNS))
def held_out_runs(request, tiny_root, cache_dir, tmp_path_factory):
    """One epoch of LLMMTL through run() on each data path of :func:`held_out_pair`."""
    extra = PAIR_RUNS[request.param]
    out = tmp_path_factory.mktemp("held_out")
    same, moved = held_out_pair(tiny_root, out, reviews=bool(extra))
    return {name: run_captured("LLMMTL", path, cache_dir, str(out / f"run-{name}"), task_weights=ALL_TASKS,
                               **extra)[1]
            for name, path in (("same", same), ("moved", moved))}


def _item_tokens(captured):
    return list(captured.built.dataset.field2id_token["item_id"])


def test_the_pair_differs_only_in_held_out_items(held_out_runs):
    """The guard that makes the next two tests able to fail: ids match, and some held-out
    items of ``same`` occur nowhere in its train split (``moved`` drops them)."""
    same, moved = held_out_runs["same"], held_out_runs["moved"]
    assert _item_tokens(same) == _item_tokens(moved)
    assert list(same.built.dataset.field2id_token["user_id"]) == list(moved.built.dataset.field2id_token["user_id"])
    train_items = set(same.built.train._dataset.inter_feat["item_id"].tolist())
    for hist in same.built.train._dataset.inter_feat["item_id_list"]:
        train_items.update(hist.tolist())
    held = set(same.built.valid._dataset.inter_feat["item_id"].tolist()) | set(
        same.built.test._dataset.inter_feat["item_id"].tolist())
    assert len(held - train_items) > 20


def test_model_construction_ignores_held_out_items(held_out_runs):
    """Everything the model holds when built (parameters, buffers: the training-item
    softmax, text statistics, tags) is identical whatever the valid/test items are."""
    same, moved = held_out_runs["same"].initial, held_out_runs["moved"].initial
    assert same.keys() == moved.keys()
    differ = [name for name in same if not torch.equal(same[name], moved[name])]
    assert not differ, f"built from held-out interactions: {differ}"


def _without_key_bias(model):
    """state_dict less the key slice of each attention's in_proj_bias. Softmax ignores a shift
    shared by all keys, so that slice's true gradient is 0 and Adam scales its rounding noise up
    to learning-rate-sized steps (1e-4 apart after one epoch, measured): it moves at random and
    changes no output."""
    state = dict(model.state_dict())
    for name in [n for n in state if n.endswith("in_proj_bias")]:
        q, _, v = state[name].chunk(3)
        state[name] = torch.cat([q, v])
    return state


def test_training_ignores_held_out_items(held_out_runs):
    """The same batches reach the model and one epoch trains it to the same weights:
    training reads nothing of the valid/test items."""
    same, moved = held_out_runs["same"], held_out_runs["moved"]
    assert len(same.batches) == len(moved.batches) > 0
    for a, b in zip(same.batches, moved.batches):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    trained_same, trained_moved = _without_key_bias(same.model), _without_key_bias(moved.model)
    # identical batches and starting weights (checked above), so only float rounding may separate
    # the two runs: multi-threaded CPU kernels do not add in a fixed order (1e-8 apart after one
    # epoch on 2 threads, measured; 0 on 1 thread)
    differ = [k for k in trained_same
              if not torch.allclose(trained_same[k].float(), trained_moved[k].float(), rtol=1e-4, atol=1e-5)]
    assert not differ, f"trained weights depend on held-out items: {differ}"


def _earliest_end(seq, row):
    """Position in ``seq`` where ``row`` ends at the earliest as an ordered subsequence
    (cold-start histories skip removed items), or None."""
    k = 0
    for p, item in enumerate(seq):
        if item == row[k]:
            k += 1
            if k == len(row):
                return p
    return None


def assert_batches_precede_valid(captured):
    """Every training row, as tokens, is the user's raw sequence in order (history, then
    target) and ends before the user's valid item: nothing from valid or test is trained
    on. Returns the number of rows checked."""
    seqs = _token_sequences(_read_inter(captured.built.config["data_path"])[1])
    ds = captured.built.dataset
    item_token = ds.field2id_token["item_id"]
    checked = 0
    for batch in captured.batches:
        users = ds.field2id_token["user_id"][batch["user_id"].numpy()]
        lengths = batch["item_length"].tolist() if "item_length" in batch else [0] * len(users)
        hists = batch.get("item_id_list", torch.zeros(len(users), 0, dtype=torch.long))
        for user, hist, n, target in zip(users, hists, lengths, batch["item_id"].tolist()):
            seq = seqs[user]
            row = list(item_token[hist[:n].numpy()]) + [item_token[target]]
            end = _earliest_end(seq, row)
            assert end is not None, f"user {user}: trained on {row}, not in their sequence's order"
            assert end <= len(seq) - 3, f"user {user}: a training row reaches the valid/test items"
            checked += 1
    return checked


def test_training_batches_precede_valid_position(held_out_runs):
    assert assert_batches_precede_valid(held_out_runs["same"]) >= 300


def _user_texts(captured):
    """The user text of every training position and of every valid scoring position, as run()
    built and trained the model (the loaders the run used)."""
    texts, built = captured.model.user_texts, captured.built
    found = [texts.text(k) for batch in captured.batches for _, _, k in texts.position_keys(batch)]
    for batch in built.valid:
        found += [texts.text(k) for _, _, k in texts.position_keys(batch[0], last_only=True)]
    return found


def test_user_text_ignores_held_out_items(held_out_runs):
    """With user text on, the text each training position and each valid scoring position
    reads is the same whatever the valid/test items and their reviews are, and holds no
    held-out review: a user's own words about a valid/test item never reach that user's input."""
    same, moved = held_out_runs["same"], held_out_runs["moved"]
    if same.model.user_texts is None:
        pytest.skip("user text is off in this configuration")
    texts_same, texts_moved = _user_texts(same), _user_texts(moved)
    assert len(texts_same) == len(texts_moved) > 300
    # the texts really do hold the user's reviews (otherwise this test could not fail)
    assert sum("Review: rvw" in t for t in texts_same) > 100
    leaked = [t for t in texts_same + texts_moved if HELD_REVIEW in t]
    assert not leaked, f"a held-out interaction's review reached a user's input: {leaked[0]!r}"
    assert texts_same == texts_moved


def test_every_leakage_mutation_still_applies_to_the_code():
    """benchmarks/leakage_mutations.py breaks the code by exact source edits: each anchor must
    still occur once, or the script would stop (or, edited loosely, test nothing)."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("leakage_mutations",
                                                  os.path.join(root, "benchmarks", "leakage_mutations.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert len(script.MUTATIONS) >= 5
    for name, (_, rel, anchor, replacement, tests) in script.MUTATIONS.items():
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            assert f.read().count(anchor) == 1, f"{name}: its anchor is not in {rel} exactly once"
        assert replacement != anchor and os.path.isfile(os.path.join(root, tests[0]))
