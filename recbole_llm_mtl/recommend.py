"""Recommend with a trained LLMMTL checkpoint, with a short reason for each item.

    python -m recbole_llm_mtl.recommend --checkpoint saved/LLMMTL-....pth --user A1B2C3 --topk 10
    python -m recbole_llm_mtl.recommend --checkpoint ... --users-file users.txt --json
    python -m recbole_llm_mtl.recommend --checkpoint ... --item-text "Nitrile gloves" --topk 5

A user's history is everything the dataset holds for them (train, valid and test), so
this is "what next" after their latest interaction; items the user already has are left
out (``--include-seen`` keeps them). Scores are the model's logits (cosine similarity over
the temperature with the default scorer): higher is better, and their differences show how
far apart items are (the sigmoid of a logit is the model's output, which saturates near 1).
The checkpoint carries the user and item ids it was trained with: weights are mapped to
the current data by id, and what changed since training is printed as ``note:`` lines. Reasons come from the model's own
signals: the history item whose H_v is closest to the recommended item, and which part
of the user query (behaviour H_a, profile H_u, or the MLP's reasoning term) contributes
most to the score.
"""

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from recbole_llm_mtl.data.validate import fingerprint_changes
from recbole_llm_mtl.errors import ConfigError, LLMMTLError, report

SIGNALS = ("behaviour", "profile", "reasoning")
# state-dict entries with one row per item / per user, in the internal-id order of the data
# the checkpoint was trained on: they are remapped by external id
ITEM_ROWS = ("item_embedding.weight", "item_text")
USER_ROWS = ()  # user texts are rebuilt from the current data, not stored weights
# auxiliary-task tags and heads: their size follows the data's tag vocabulary and they
# play no part in scoring, so the model built from the current data keeps its own
TASK_ONLY = ("tasks.user_profile.", "tasks.item_semantics.")


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def row_map(saved_tokens, tokens):
    """For each current internal id, the checkpoint's row for the same external id (-1: new)."""
    saved = {t: k for k, t in enumerate(saved_tokens)}
    return torch.tensor([saved.get(t, -1) for t in tokens], dtype=torch.long)


def take_rows(saved, index, fill):
    """``fill`` with the rows of ``saved`` that ``index`` points to (-1 keeps ``fill``)."""
    out = fill.clone()
    known = index >= 0
    out[known] = saved[index[known]].to(out.dtype)
    return out


class Recommender:
    """A loaded checkpoint plus each user's full history, ready to score.

    The model is built from the current data files (as training built it) and the
    checkpoint's weights are loaded into it remapped by external user/item id, so reordered
    rows change nothing; items new in ``.item`` are scored from their text (when the model
    reads text); ``notes`` says what no longer matches the data the checkpoint saw.
    ``data_path`` serves with the dataset in another folder than the one it was trained on.
    """

    def __init__(self, checkpoint, data_path=None):
        from recbole_llm_mtl.build import build
        from recbole_llm_mtl.config import build_config
        from recbole_llm_mtl.trainer import load_checkpoint

        state = load_checkpoint(checkpoint)
        if state["model"] != "LLMMTL":
            raise ConfigError(f"checkpoint '{checkpoint}' holds a {state['model']} model; recommend "
                              "explains LLMMTL checkpoints only")
        saved = {k: v for k, v in state["config_input"].items() if k not in ("model", "config_files")}
        dataset = saved.pop("dataset")
        saved.update({"show_progress": False, "state": "WARNING"})
        if data_path:
            saved["data_path"] = data_path
        config = build_config("LLMMTL", dataset, config_dict=saved, recorded=True)
        built = build(config, serving=True)  # as run() built it: from the train split
        self.data, self.model, test = built.dataset, built.model, built.test
        self.config, self.notes = config, []
        self.candidates = torch.ones(self.data.item_num, dtype=torch.bool)
        self.candidates[0] = False  # padding
        self._new_items = torch.zeros(0, dtype=torch.long)
        self._load(checkpoint, state)
        self.model.eval()
        self._score_new_items()
        self._histories(test._dataset.inter_feat)
        self._seen_items()
        self.titles = self._titles()
        with torch.no_grad():
            self.h_v = self.model.item_representations()
            self.items = self.model.scorer.items(self.h_v)

    # ------------------------------------------------------------------ loading
    def _load(self, checkpoint, state):
        ids = state.get("data")
        if ids is None:
            self.notes.append("the checkpoint predates stored ids: its rows are assumed to follow the "
                              "current files' order (retrain to serve changed data safely)")
        try:  # a tensor of another width fails in the remap already, before loading
            weights = state["state_dict"] if ids is None else self._remap(state["state_dict"], ids)
            self.model.load_state_dict(weights)
        except RuntimeError as e:
            raise ConfigError(f"checkpoint '{checkpoint}' does not fit the model built from its config and "
                              f"the current data ({str(e).splitlines()[-1].strip()[:200]}); retrain") from None

    def _remap(self, weights, ids):
        """The checkpoint's weights in the current data's internal-id order."""
        ds, current = self.data, self.model.state_dict()
        items = row_map(ids["item_tokens"], ds.field2id_token[ds.iid_field])
        users = row_map(ids["user_tokens"], ds.field2id_token[ds.uid_field])
        out = {k: v for k, v in weights.items() if not k.startswith(TASK_ONLY)}
        out.update({k: v for k, v in current.items() if k.startswith(TASK_ONLY)})
        for keys, index in ((ITEM_ROWS, items), (USER_ROWS, users)):
            for key in keys:
                if key in out:
                    fill = torch.zeros_like(current[key]) if key in ITEM_ROWS else current[key]
                    out[key] = take_rows(out[key], index, fill)
        self._note_changes(ids, items, users)
        self._new_items = torch.nonzero(items < 0).flatten()  # padding maps to padding
        return out

    def _note_changes(self, ids, items, users):
        missing_users = len(ids["user_tokens"]) - int((users > 0).sum()) - 1
        missing_items = len(ids["item_tokens"]) - int((items > 0).sum()) - 1
        if missing_users or missing_items:
            parts = [_plural(n, w) for n, w in ((missing_users, "user"), (missing_items, "item")) if n]
            self.notes.append(f"{' and '.join(parts)} of the checkpoint {'is' if missing_users + missing_items == 1 else 'are'} "
                              "missing from the data")
        new_users = int((users[1:] < 0).sum())
        if new_users:
            self.notes.append(f"{_plural(new_users, 'user')} of the data {'is' if new_users == 1 else 'are'} "
                              "new since training (served from their history)")
        changes = fingerprint_changes(ids.get("fingerprint", {}), getattr(self.data, "data_fingerprint", {}),
                                      order_matters=False)  # ids are mapped by token
        if changes:
            self.notes.append("data changed since training: " + "; ".join(changes))

    def _titles(self):
        ds, fields = self.data, self.config["item_text_fields"] or []
        from recbole_llm_mtl.text.templates import field_strings

        if not fields or ds.item_feat is None:
            return [str(t) for t in ds.field2id_token[ds.iid_field]]
        return field_strings(ds, ds.item_feat, fields[0])

    # ------------------------------------------------------------------ new items
    def _item_texts(self):
        """(joint texts, {view: texts}) of every item in the current item file."""
        from recbole_llm_mtl.data.text_features import item_text_views

        texts, _, views = item_text_views(self.config, self.data)
        return texts, views

    def encode_texts(self, texts):
        """Text vectors of new items' free texts (read as the first view of the item text),
        standardised as the model's own item text vectors, from the checkpoint's own language
        model (its fine-tuned one in lora/full mode)."""
        return self.model.encode_new_items([list(texts)])

    def _score_new_items(self):
        """Items new in ``.item`` get their text vector (and no ID embedding); without text
        they cannot be scored and are left out."""
        new = self._new_items
        if not len(new):
            return
        texts, views = self._item_texts() if self.model.use_text else ([""] * self.data.item_num, {})
        has_text = torch.tensor([bool(texts[i]) for i in new.tolist()], dtype=torch.bool)
        scored = new[has_text]
        if len(scored):
            ids = scored.tolist()
            self.model.item_text[scored] = self.model.encode_new_items([[view[i] for i in ids]
                                                                        for view in views.values()])
            self.notes.append(f"{_plural(len(scored), 'item')} new since training {'is' if len(scored) == 1 else 'are'} "
                              "scored from text alone")
        left_out = new[~has_text]
        if len(left_out):
            self.candidates[left_out] = False
            self.notes.append(f"{_plural(len(left_out), 'item')} new since training "
                              f"{'has' if len(left_out) == 1 else 'have'} no text the model can read: left out")

    # ------------------------------------------------------------------ users
    def _histories(self, test_feat):
        """Full sequence per user: the test row's history plus its target, last L items."""
        model, L = self.model, self.model.max_seq_length
        seq, lens, target = test_feat[model.ITEM_SEQ], test_feat[model.ITEM_SEQ_LEN], test_feat[model.ITEM_ID]
        full = torch.cat([seq, torch.zeros_like(seq[:, :1])], dim=1)
        full[torch.arange(len(full)), lens] = target
        lens = lens + 1
        over = lens > L  # drop the oldest item where the appended target overflows the window
        full[over] = torch.roll(full[over], -1, dims=1)
        self.seq, self.lens = full[:, :L], lens.clamp(max=L)
        self.row_of_user = {u: r for r, u in enumerate(test_feat[model.USER_ID].tolist())}
        self.user_ids = test_feat[model.USER_ID]

    def _seen_items(self):
        """Sorted user * n_items + item keys of every interaction in the data: each target of
        the (augmented) rows, and each history item (a user's first item is only there)."""
        feat, m, n = self.data.inter_feat, self.model, self.data.item_num
        users, targets, seqs = feat[m.USER_ID], feat[m.ITEM_ID], feat[m.ITEM_SEQ]
        in_seq = seqs > 0
        keys = torch.cat([users * n + targets, (users.unsqueeze(1) * n + seqs)[in_seq]])
        self._seen = torch.unique(keys)

    def seen(self, uid):
        """Internal ids of the items user ``uid`` has interacted with."""
        n = self.data.item_num
        lo, hi = torch.searchsorted(self._seen, torch.tensor([uid * n, (uid + 1) * n])).tolist()
        return self._seen[lo:hi] - uid * n

    def user_row(self, raw_user):
        ds = self.data
        try:
            uid = ds.token2id(ds.uid_field, raw_user)
        except ValueError:
            raise ConfigError(f"unknown user '{raw_user}': valid ids are the {ds.uid_field} values of "
                              f"{self.config['data_path']}/{self.config['dataset']}.inter") from None
        if uid not in self.row_of_user:
            raise ConfigError(f"user '{raw_user}' has too few interactions to have a history")
        return self.row_of_user[uid]

    @torch.no_grad()
    def _queries(self, rows):
        m = self.model
        history = {m.USER_ID: self.user_ids[rows], m.ITEM_SEQ: self.seq[rows], m.ITEM_SEQ_LEN: self.lens[rows]}
        h_a, h_u, q = m.user_states(history, self.h_v, last_only=True)  # the last position is read
        pick = (self.lens[rows] - 1).view(-1, 1, 1).expand(-1, 1, q.size(-1))
        gather = lambda x: x.gather(1, pick).squeeze(1)
        return gather(h_a), gather(h_u), gather(q)

    # ------------------------------------------------------------------ scoring
    def check_topk(self, topk, limit, what):
        if not 1 <= topk <= limit:
            raise ConfigError(f"--topk {topk} is out of range: give 1 to {limit} ({what})")

    @torch.no_grad()
    def recommend(self, raw_users, topk=10, exclude_seen=True):
        """Top ``topk`` items per user by the model's logit (higher is better; sigmoid of it
        is the model's output). Every item in the user's data is left out unless
        ``exclude_seen`` is False; a user with fewer unseen items gets fewer."""
        n_candidates = int(self.candidates.sum())
        self.check_topk(topk, n_candidates, "the items this checkpoint can score")
        rows = torch.tensor([self.user_row(u) for u in raw_users])
        h_a, h_u, q = self._queries(rows)
        scores = self.model.scorer.logits(q, self.items).double()
        scores[:, ~self.candidates] = float("-inf")
        if exclude_seen:
            for r, row in enumerate(rows.tolist()):
                scores[r, self.seen(int(self.user_ids[row]))] = float("-inf")
        top = torch.topk(scores, topk, dim=1)
        parts = torch.stack([h_a, h_u, q * 0], dim=1)  # (B, 3, d), reasoning filled below
        if self.model.scorer_mode == "mlp":
            parts[:, 2] = self.model.scorer.mlp(torch.cat([h_a, h_u, h_a * h_u], dim=-1))
        out = []
        for r, row in enumerate(rows.tolist()):
            history = self.seq[row, : self.lens[row]]
            hist_vecs = F.normalize(self.h_v[history], dim=-1)
            recs = []
            for item, score in zip(top.indices[r].tolist(), top.values[r].tolist()):
                if score == float("-inf"):
                    break  # no unseen candidate left for this user
                v = self.h_v[item]
                sim = hist_vecs @ F.normalize(v, dim=0)
                nearest = int(history[int(torch.argmax(sim))])
                contrib = parts[r] @ v
                signal = SIGNALS[int(torch.argmax(contrib))]
                recs.append({"item": self.data.id2token(self.data.iid_field, item), "title": self.titles[item],
                             "score": round(score, 4), "because_you_bought": self.titles[nearest],
                             "main_signal": signal})
            out.append({"user": raw_users[r], "recommendations": recs})
        return out

    def free_text_note(self):
        """What a new item's free text stands for when the model reads its fields one by one
        (``item_text_views: fields``): the first field alone, the others empty, or None."""
        fields = self.config["item_text_fields"] or []
        if self.config["item_text_views"] != "fields" or len(fields) < 2:
            return None
        return (f"a new item's free text is read as its {fields[0]} (item_text_views: fields); its "
                f"{', '.join(fields[1:])} count as empty. To give them, add the item with its fields to "
                f"{self.config['dataset']}.item: items new there are scored from all their fields")

    @torch.no_grad()
    def users_for_new_item(self, text, topk=10):
        """Rank existing users for an item the model has never seen, from its text alone
        (encoded by the checkpoint's own language model); scores are logits."""
        m = self.model
        self.check_topk(topk, len(self.seq), "the users with a history")
        vec = self.encode_texts([text])
        item = m.scorer.items(m.item_norm(m.adaptor(vec)))  # text path only: no ID embedding exists
        rows = torch.arange(len(self.seq))
        _, _, q = self._queries(rows)
        scores = m.scorer.logits(q, item).double().squeeze(1)
        top = torch.topk(scores, topk)
        return [{"user": self.data.id2token(self.data.uid_field, int(self.user_ids[r])), "score": round(s, 4)}
                for r, s in zip(top.indices.tolist(), top.values.tolist())]


def _read_lines(path):
    try:
        with open(path, encoding="utf-8-sig") as f:  # utf-8-sig: an editor's BOM is not part of an id
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (bytes {e.object[e.start:e.start + 4]!r} at byte {e.start}); "
                          "re-save it as UTF-8") from None


def _print_text(result, new_items):
    if new_items:
        for entry in result:
            print(f"Users for new item {entry['item_text']!r}:")
            for r in entry["users"]:
                print(f"  {r['score']:8.3f}  {r['user']}")
        return
    for u in result:
        print(f"Top {len(u['recommendations'])} for user {u['user']}:")
        for k, r in enumerate(u["recommendations"], 1):
            print(f"  {k:2d}. {r['score']:8.3f}  {r['title'][:70]}")
            print(f"        because you bought: {r['because_you_bought'][:60]}  (main signal: {r['main_signal']})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="an LLMMTL checkpoint from saved/")
    parser.add_argument("--user", action="append", default=[], help="raw user id (repeatable)")
    parser.add_argument("--users-file", help="file with one raw user id per line")
    parser.add_argument("--item-text", action="append", default=[],
                        help="text of a new item: rank users for it instead (repeatable)")
    parser.add_argument("--items-file", help="file with one new item's text per line")
    parser.add_argument("--topk", type=int, default=10, help="1 to the number of items (users) that can be ranked")
    parser.add_argument("--include-seen", action="store_true",
                        help="also recommend items the user already has (left out by default)")
    parser.add_argument("--data-path", help="folder holding the dataset folder (default: the one trained on)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        users = list(args.user) + (_read_lines(args.users_file) if args.users_file else [])
        new_items = list(args.item_text) + (_read_lines(args.items_file) if args.items_file else [])
        if not users and not new_items:
            parser.error("give --user, --users-file, --item-text or --items-file")
        if users and new_items:  # one ranking per request: users' items, or a new item's users
            raise ConfigError("give users (--user, --users-file) or new items (--item-text, --items-file), not both")
        blank = [text for text in new_items if not text.strip()]
        if blank:
            raise ConfigError(f"--item-text {blank[0]!r} is empty: give the new item's text (title, brand, ...)")
        if args.topk < 1:
            raise ConfigError(f"--topk {args.topk} is out of range: give a number from 1")
        rec = Recommender(args.checkpoint, args.data_path)
        free_text = rec.free_text_note() if new_items else None
        for note in rec.notes + ([free_text] if free_text else []):
            print(f"note: {note}", file=sys.stderr)
        start = time.perf_counter()
        if new_items:
            result = [{"item_text": t, "users": rec.users_for_new_item(t, args.topk)} for t in new_items]
        else:
            result = rec.recommend(users, args.topk, exclude_seen=not args.include_seen)
        elapsed = time.perf_counter() - start
    except (LLMMTLError, OSError) as e:
        return report(e)
    if args.json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
    else:
        _print_text(result, new_items)
    print(f"({elapsed * 1000:.1f} ms for {len(result)} request(s) after loading the model)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
