"""No valid/test item of a user reaches that user's inputs (real amazon slice)."""

import os
from collections import defaultdict

import torch

from conftest import build


def _raw_sequences(tiny_root, dataset):
    """user id -> internal item ids in time order, read straight from the atomic file."""
    seqs = defaultdict(list)
    with open(os.path.join(tiny_root, "amazon", "amazon.inter"), encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, ts = line.rstrip("\n").split("\t")
            seqs[dataset.token2id("user_id", user)].append((float(ts), dataset.token2id("item_id", item)))
    return {u: [i for _, i in sorted(v)] for u, v in seqs.items()}


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
    config, train, valid, test, model = build("LLMMTL", tiny_root, cache_dir)
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
