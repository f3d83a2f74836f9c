"""The user's text at each position of a history, read by the shared language model.

At position ``p`` of a history (the model then predicts the item after ``p``), the user's
text combines, when the dataset has them:

* profile fields (``user_text_fields``), e.g. "Age 24. gender M. occupation: technician";
* with ``user_recent_titles``, the titles of the last ``user_history_items`` items up to and
  including ``p``, most recent first ("Recently: <title p>; <title p-1>; ..."); off by
  default: they make every position's text distinct (ml-100k: 95,061 texts instead of 943
  profiles, 1,092 s of encoding instead of 12 s) and did not raise valid NDCG@10 on amazon
  or ml-100k (``benchmarks/results/tuning-log.md``);
* the user's own review texts of the last ``user_history_items`` items (a ``<dataset>.review`` atomic file: user,
  item, timestamp, text), only reviews written before the time of the item after ``p``.

So the text at a position holds only what happened before the item that position predicts,
in training exactly as at validation, test and serving: one function (:meth:`UserTexts.key`)
decides it everywhere. Texts are identified by a key (user, recent items, reviews used), so
equal texts are encoded once; the keys of every training position are encoded in one
length-sorted, content-cached pass before training, and keys first met at evaluation or
serving (a valid/test row's last position) are encoded when first needed.
"""

import logging
import os
from collections import defaultdict

import numpy as np
import torch

from recbole_llm_mtl.data.validate import read_atomic_file
from recbole_llm_mtl.errors import ConfigError, DataError
from recbole_llm_mtl.text.templates import render_texts

logger = logging.getLogger(__name__)

def review_path(config):
    """Where a dataset's review texts are read from: ``<data_path>/<dataset>.review``."""
    return os.path.join(config["data_path"], f"{config['dataset']}.review")


def review_file(config):
    """The ``.review`` file a run of ``config`` reads, or None: where the model reads user
    reviews (``user_reviews``, with ``user_text`` on or ``auto``) and the file exists. One rule
    for the model and for the files a benchmark run records as readable."""
    if not config["user_reviews"] or config["user_text"] in (False, None):
        return None
    path = review_path(config)
    return path if os.path.isfile(path) else None


REVIEW_SNIPPET = 300  # characters of one review kept in user text (the token limit cuts the rest)


def load_reviews(path, dataset, encoding="utf-8", separator="\t"):
    """``(user id, item id) -> [(timestamp, text), ...]`` (internal ids, oldest first) from a
    ``.review`` atomic file, read by the one atomic-file reader (bad bytes, a stray tab and a
    bad header are named with the file and line); rows of users or items the dataset lacks
    are skipped."""
    table = read_atomic_file(path, encoding, separator)
    if isinstance(getattr(dataset, "data_fingerprint", None), dict):  # runs record the data they read;
        dataset.data_fingerprint[os.path.basename(path)] = table.fingerprint()  # splits share this dict
    need = ("user_id", "item_id", "timestamp", "text")
    missing = [c for c in need if c not in table.names]
    if missing:
        raise DataError(f"{path}: header lacks {missing}; a .review file has columns "
                        "user_id:token, item_id:token, timestamp:float, text:token_seq")
    users = dataset.field2token_id[dataset.uid_field]
    items = dataset.field2token_id[dataset.iid_field]
    reviews = defaultdict(list)
    for line, (user, item, ts, text) in zip(table.lines, zip(*(table.column(c) for c in need))):
        try:
            ts = float(ts)
        except ValueError:
            raise DataError(f"{path}, line {line}: expected user, item, a numeric timestamp "
                            f"and text; timestamp {ts!r} is not a number") from None
        if user in users and item in items and text.strip():
            reviews[(users[user], items[item])].append((ts, text.strip()[:REVIEW_SNIPPET]))
    for value in reviews.values():
        value.sort()
    return dict(reviews)


def check_review_times(config, dataset, reviews, path):
    """Reviews are kept only when written before the predicted item, by comparing their
    timestamps with the interactions': that needs the time field, unnormalised, and both
    files on one clock. Otherwise the bound would pass every review (a leak) or none."""
    time = config["TIME_FIELD"]
    inter = f"{config['dataset']}.inter"
    if not time or time not in dataset.inter_feat:
        raise ConfigError(f"{path}: reviews are kept only if written before the predicted item, which "
                          f"needs the interaction time field '{time}': load it (load_col) or set user_reviews: False")
    if config["normalize_all"] or time in (config["normalize_field"] or []):
        raise ConfigError(f"{path}: review timestamps are compared with {inter}'s '{time}', which this config "
                          f"normalises (normalize_all / normalize_field): leave '{time}' unnormalised")
    times = dataset.inter_feat[time].numpy()
    lo, hi = float(times.min()), float(times.max())
    span = max(hi - lo, 1.0)
    written = np.array([ts for value in reviews.values() for ts, _ in value])
    middle = float(np.median(written))
    if not lo - span <= middle <= hi + span:  # e.g. milliseconds against seconds
        raise DataError(f"{path}: review timestamps (median {middle:.6g}) are not on the clock of {inter}'s "
                        f"'{time}' ({lo:.6g} to {hi:.6g}); write both in the same unit")


class UserTexts:
    """Keys, texts and vectors of user states (see the module doc)."""

    def __init__(self, config, dataset, titles, profile_template, encoder):
        self.k = int(config["user_history_items"])
        self.recent_titles = bool(config["user_recent_titles"])
        self.max_length = int(config["user_text_max_length"])
        self.separator = config["text_separator"]
        self.titles = titles
        self.encoder = encoder
        self.profile = None
        if profile_template:
            self.profile, _ = render_texts(dataset, dataset.user_feat, profile_template, self.separator, "user")
        path = review_file(config)
        self.reviews = load_reviews(path, dataset, config["encoding"] or "utf-8", config["field_separator"] or "\t") \
            if path else {}
        if self.reviews:
            logger.info(f"user text reads {sum(map(len, self.reviews.values()))} review texts from {path}")
        self.per_user = self.profile is not None or bool(self.reviews)
        self.uid, self.seq, self.len = config["USER_ID_FIELD"], dataset.item_id_list_field, dataset.item_list_length_field
        self.time = config["TIME_FIELD"]
        self.time_list = self.time + config["LIST_SUFFIX"] if self.time in dataset.inter_feat else None
        if self.reviews:
            check_review_times(config, dataset, self.reviews, path)
        self.rows = {}  # key -> row of self.vectors; row 0 is "no text" (padding)
        self.vectors = torch.zeros(1, encoder.lm.hidden_size)

    def sources(self):
        """What the text is made of, on this dataset: profile fields, reviews, recent titles."""
        return [name for name, used in (("profile", self.profile is not None), ("reviews", self.k > 0 and bool(self.reviews)),
                                        ("recent titles", self.k > 0 and self.recent_titles and self.titles is not None))
                if used]

    # ------------------------------------------------------------------ what a position may read
    def key(self, user, history, bound):
        """The text identity at the end of ``history`` (item ids, oldest first), for an item
        that comes at time ``bound``: nothing at or after ``bound`` and no later item."""
        last = history[max(len(history) - self.k, 0):][::-1] if self.k else []  # newest first ([-0:] is all)
        recent = tuple(last) if self.titles is not None and self.recent_titles else ()
        reviewed = []
        for item in last if self.reviews else ():
            written = [k for k, (ts, _) in enumerate(self.reviews.get((user, item), ())) if ts < bound]
            if written:
                reviewed.append((item, written[-1]))
        return (user if self.per_user else 0, recent, tuple(reviewed))

    def text(self, key):
        user, recent, reviewed = key
        parts = []
        if self.profile is not None and self.profile[user]:
            parts.append(self.profile[user])
        names = [self.titles[i] for i in recent if self.titles[i]] if recent else []
        if names:
            parts.append("Recently: " + "; ".join(names))
        parts += [f"Review: {self.reviews[(user, item)][k][1]}" for item, k in reviewed]
        return self.separator.join(parts)

    def position_keys(self, interaction, last_only=False):
        """``[(row, position, key)]`` for the real positions of a batch (only the last one
        of each row with ``last_only``, as scoring needs)."""
        users = interaction[self.uid].tolist()
        seqs, lens = interaction[self.seq].tolist(), interaction[self.len].tolist()
        inf = float("inf")
        times = interaction[self.time_list].tolist() if self.reviews and self.time_list in interaction else None
        target = interaction[self.time].tolist() if self.reviews and self.time in interaction else None
        out = []
        for b, (user, seq, n) in enumerate(zip(users, seqs, lens)):
            for p in ([n - 1] if last_only else range(n)):
                if times is None:
                    bound = inf if target is None else target[b]
                else:
                    bound = times[b][p + 1] if p + 1 < n else (target[b] if target is not None else inf)
                out.append((b, p, self.key(user, seq[: p + 1], bound)))
        return out

    # ------------------------------------------------------------------ vectors
    def add(self, keys, what="user", cache=False):
        """Encode keys not seen yet (one length-sorted pass; ``cache``: through the text cache)."""
        new = sorted({k for k in keys if k not in self.rows})
        if not new:
            return
        texts = [self.text(k) for k in new]
        vectors = self.encoder.encode(texts, what, self.max_length, cache=cache)
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
        vectors[[not t for t in texts]] = 0.0
        start = len(self.vectors)
        self.vectors = torch.cat([self.vectors, vectors])
        self.rows.update({k: start + i for i, k in enumerate(new)})

    def prepare(self, rows_of):
        """Encode every training position's text before training (cached by content)."""
        keys = [k for _, _, k in self.position_keys(rows_of.inter_feat)]
        self.add(keys, "user", cache=True)
        logger.info(f"user text: {len(self.rows)} distinct texts for {len(keys)} training positions")

    def lookup(self, interaction, last_only=False):
        """(B, L) rows into :attr:`vectors` for a batch; unseen keys are encoded now."""
        found = self.position_keys(interaction, last_only)
        self.add([k for _, _, k in found])
        index = torch.zeros(interaction[self.seq].shape, dtype=torch.long)
        if found:
            b, p, keys = zip(*found)
            index[list(b), list(p)] = torch.tensor([self.rows[k] for k in keys])
        return index
