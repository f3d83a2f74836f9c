"""Recommend with a trained LLMMTL checkpoint, with a short reason for each item.

    python -m recbole_llm_mtl.recommend --checkpoint saved/LLMMTL-....pth --user A1B2C3 --topk 10
    python -m recbole_llm_mtl.recommend --checkpoint ... --users-file users.txt --json
    python -m recbole_llm_mtl.recommend --checkpoint ... --item-text "Nitrile gloves, Brand: Acme" --topk 5

A user's history is everything the dataset holds for them (train, valid and test), so
this is "what next" after their latest interaction. Reasons come from the model's own
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

from recbole_llm_mtl.errors import ConfigError, LLMMTLError

SIGNALS = ("behaviour", "profile", "reasoning")


class Recommender:
    """A loaded checkpoint plus each user's full history, ready to score."""

    def __init__(self, checkpoint):
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
        config = build_config("LLMMTL", dataset, config_dict=saved)
        built = build(config)  # as run() built it: from the train split
        self.data, self.model, test = built.dataset, built.model, built.test
        self.model.load_state_dict(state["state_dict"])
        self.model.eval()
        self.config = config
        self._histories(test._dataset.inter_feat)
        self.titles = self._titles()
        with torch.no_grad():
            self.h_v = self.model.item_representations()
            self.items = self.model.scorer.items(self.h_v)

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

    def _titles(self):
        ds, fields = self.data, self.config["item_text_fields"] or []
        from recbole_llm_mtl.text.templates import field_strings

        if not fields or ds.item_feat is None:
            return [str(t) for t in ds.field2id_token[ds.iid_field]]
        return field_strings(ds, ds.item_feat, fields[0])

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
        h_a, h_u, q = m.user_states(history, self.h_v)
        pick = (self.lens[rows] - 1).view(-1, 1, 1).expand(-1, 1, q.size(-1))
        gather = lambda x: x.gather(1, pick).squeeze(1)
        return gather(h_a), gather(h_u), gather(q)

    @torch.no_grad()
    def recommend(self, raw_users, topk=10, exclude_seen=True):
        rows = torch.tensor([self.user_row(u) for u in raw_users])
        h_a, h_u, q = self._queries(rows)
        scores = torch.sigmoid(self.model.scorer.logits(q, self.items).double())
        scores[:, 0] = -1
        if exclude_seen:
            for r, row in enumerate(rows.tolist()):
                scores[r, self.seq[row, : self.lens[row]]] = -1
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
                v = self.h_v[item]
                sim = hist_vecs @ F.normalize(v, dim=0)
                nearest = int(history[int(torch.argmax(sim))])
                contrib = parts[r] @ v
                signal = SIGNALS[int(torch.argmax(contrib))]
                recs.append({"item": self.data.id2token(self.data.iid_field, item), "title": self.titles[item],
                             "score": round(score, 6), "because_you_bought": self.titles[nearest],
                             "main_signal": signal})
            out.append({"user": raw_users[r], "recommendations": recs})
        return out

    @torch.no_grad()
    def users_for_new_item(self, text, topk=10):
        """Rank existing users for an item the model has never seen, from its text alone."""
        m = self.model
        if not m.use_text:
            raise ConfigError("this checkpoint was trained without text (use_text: False); it cannot rank new items")

        vec = m.encode_new_items([text])  # the checkpoint's own (fine-tuned) language model
        item = m.scorer.items(m.item_norm(m.adaptor(vec)))  # text path only: no ID embedding exists
        rows = torch.arange(len(self.seq))
        _, _, q = self._queries(rows)
        scores = torch.sigmoid(m.scorer.logits(q, item).double()).squeeze(1)
        top = torch.topk(scores, min(topk, len(scores)))
        return [{"user": self.data.id2token(self.data.uid_field, int(self.user_ids[r])), "score": round(s, 4)}
                for r, s in zip(top.indices.tolist(), top.values.tolist())]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="an LLMMTL checkpoint from saved/")
    parser.add_argument("--user", action="append", default=[], help="raw user id (repeatable)")
    parser.add_argument("--users-file", help="file with one raw user id per line")
    parser.add_argument("--item-text", action="append", default=[],
                        help="text of a new item: rank users for it instead (repeatable)")
    parser.add_argument("--items-file", help="file with one new item's text per line")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        users = list(args.user)
        if args.users_file:
            with open(args.users_file, encoding="utf-8") as f:
                users += [line.strip() for line in f if line.strip()]
        new_items = list(args.item_text)
        if args.items_file:
            with open(args.items_file, encoding="utf-8") as f:
                new_items += [line.strip() for line in f if line.strip()]
        if not users and not new_items:
            parser.error("give --user, --users-file, --item-text or --items-file")
        rec = Recommender(args.checkpoint)
        start = time.perf_counter()
        if new_items:
            result = [{"item_text": t, "users": rec.users_for_new_item(t, args.topk)} for t in new_items]
        else:
            result = rec.recommend(users, args.topk)
        elapsed = time.perf_counter() - start
    except (LLMMTLError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
    elif new_items:
        for entry in result:
            print(f"Users for new item {entry['item_text']!r}:")
            for r in entry["users"]:
                print(f"  {r['score']:.4f}  {r['user']}")
    else:
        for u in result:
            print(f"Top {args.topk} for user {u['user']}:")
            for k, r in enumerate(u["recommendations"], 1):
                print(f"  {k:2d}. {r['score']:.6f}  {r['title'][:70]}")
                print(f"        because you bought: {r['because_you_bought'][:60]}  (main signal: {r['main_signal']})")
    print(f"({elapsed * 1000:.1f} ms for {len(result)} request(s) after loading the model)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
