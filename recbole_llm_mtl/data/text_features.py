"""What LLMMTL reads from text and from the train split, prepared on the dataset side.

As UniSRec's dataset attaches its pre-computed text table to the dataset, the train split
of :class:`~recbole_llm_mtl.data.dataset.AllPositionDataset` carries a :class:`TextFeatures`
(``dataset.text_features``): item text vectors from the shared language model, the user-text
table, the items seen in training, and the semantic labels the two auxiliary tasks predict.
The model's ``__init__`` reads these tensors; it runs no text pipeline of its own.

Everything derived from interactions (behaviour clusters, the training-item set) comes from
the train split alone, so nothing about a user's valid or test items reaches the model.
"""

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from recbole_llm_mtl.data.user_text import UserTexts, review_file, review_path
from recbole_llm_mtl.distributed import is_distributed, sharded_cached_encode
from recbole_llm_mtl.errors import ConfigError, DataError
from recbole_llm_mtl.text.cache import VectorCache, cached_encode
from recbole_llm_mtl.text.encoder import SharedLanguageModel
from recbole_llm_mtl.text.templates import field_strings, multi_hot, render_texts, template_from_config

logger = logging.getLogger(__name__)


class TextEncoder:
    """The shared language model plus the content-keyed vector cache: one ``encode`` for
    item texts, user texts and anything else, timed in ``seconds``."""

    def __init__(self, config, lm):
        self.lm = lm
        self.cache = VectorCache(config["text_cache_dir"]) if config["text_cache_dir"] else None
        self.batch_tokens = config["llm_batch_tokens"]
        self.show_progress = config["show_progress"]
        self.seconds = 0.0

    def encode(self, texts, what, max_length=None, cache=True):
        """Vectors of ``texts``; ``cache`` (construction-time sets, the same on every rank):
        through the content-keyed cache and, with several processes, a sharded pass."""
        start = time.perf_counter()
        encode = lambda t: self.lm.encode(t, self.batch_tokens, self.show_progress and len(t) > 256,
                                          desc=f"Encoding {what} text", max_length=max_length)
        identity = self.lm.cache_identity(max_length)
        if not cache:  # texts met while scoring: each rank has its own, so no collective pass
            vectors = encode(texts)
        elif is_distributed():  # every rank holds the same texts: shard the pass
            vectors, _ = sharded_cached_encode(self.cache, identity, texts, encode)
        else:
            vectors, _ = cached_encode(self.cache, identity, texts, encode)
        self.seconds += time.perf_counter() - start
        return vectors


def item_text_views(config, dataset):
    """The item texts LLMMTL reads, rendered from ``dataset``'s item file: (joint texts, their
    number of empty ones, {view name: texts}). The one view is the joint text of all
    ``item_text_fields``; under ``item_text_views: fields`` each field alone is a view, in
    field order."""
    template = template_from_config(config["item_text_fields"], config["item_text_template"])
    joint, n_empty = render_texts(dataset, dataset.item_feat, template, config["text_separator"], "item")
    if config["item_text_views"] != "fields":
        return joint, n_empty, {"item": joint}
    return joint, n_empty, {field: render_texts(dataset, dataset.item_feat, {field: fmt}, config["text_separator"],
                                                "item")[0] for field, fmt in template.items()}


def require_text(empty):
    """Standardising needs text on two items at least (one has no spread)."""
    n_text = int((~empty).sum())
    if n_text < 2:
        raise DataError(f"only {n_text} item(s) have text in item_text_fields: text vectors cannot be "
                        "standardised; add item text, fix item_text_fields, or set use_text: False")


def standardize(vectors, empty):
    """Per-dimension standardisation over the items that have text (anisotropic sentence
    vectors otherwise crowd into a narrow cone); items without text get a zero vector."""
    require_text(empty)
    mean, std = vectors[~empty].mean(0), vectors[~empty].std(0).clamp(min=1e-6)
    return ((vectors - mean) / std).masked_fill(empty.unsqueeze(1), 0.0), mean, std


def train_rows(train, seq_field, len_field, item_field):
    """Each train row as one item sequence (history then target), as numpy arrays."""
    feat = train.inter_feat
    seq, lens, target = feat[seq_field].numpy(), feat[len_field].numpy(), feat[item_field].numpy()
    return [np.r_[s[:n], t] for s, n, t in zip(seq, lens, target)]


def seen_items(rows, n_items):
    seen = torch.zeros(n_items, dtype=torch.bool)
    if rows:
        seen[torch.as_tensor(np.concatenate(rows))] = True
    seen[0] = False
    return seen


def kmeans_labels(points, sizes, seed):
    """One-hot cluster memberships of ``points`` for each granularity in ``sizes``."""
    from sklearn.cluster import KMeans

    blocks = []
    for k in sizes:
        k = min(int(k), len(points))
        assign = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(points)
        blocks.append(np.eye(k, dtype=np.float32)[assign])
    return np.concatenate(blocks, 1) if blocks else np.zeros((len(points), 0), np.float32)


def behavior_clusters(rows, seen, sizes, seed, window=3, dim=32):
    """Clusters of items by how they are bought together in training sequences: items
    within ``window`` positions co-occur; a truncated SVD of the normalised co-occurrence
    matrix embeds them, and k-means at each granularity labels them. Items never seen in
    training get no label. These labels are collaborative facts the item text lacks."""
    from scipy.sparse import coo_matrix
    from sklearn.decomposition import TruncatedSVD

    n_items = len(seen)
    src, dst = [], []
    for r in rows:
        for d in range(1, window + 1):
            src.append(r[:-d])
            dst.append(r[d:])
    if not src or not sizes:
        return torch.zeros(n_items, 0)
    src, dst = np.concatenate(src), np.concatenate(dst)
    co = coo_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(n_items, n_items)).tocsr()
    co = co + co.T
    deg = np.asarray(co.sum(1)).ravel() + 1.0
    norm = co.multiply(1 / np.sqrt(deg)[:, None]).multiply(1 / np.sqrt(deg)[None, :]).tocsr()
    ids = seen.nonzero().flatten().numpy()
    dim = max(2, min(dim, len(ids) - 1))
    emb = TruncatedSVD(n_components=dim, random_state=seed).fit_transform(norm[ids][:, ids])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-9)
    labels = torch.zeros(n_items, sum(min(int(k), len(ids)) for k in sizes))
    labels[torch.as_tensor(ids)] = torch.as_tensor(kmeans_labels(emb, sizes, seed))
    return labels


def text_clusters(vectors, empty, sizes, seed):
    """Semantic labels from the language model itself, for datasets without tags: k-means
    over the item text vectors at each granularity (items without text get none)."""
    ids = (~empty).nonzero().flatten()
    ids = ids[ids > 0]
    labels = torch.zeros(len(empty), sum(min(int(k), len(ids)) for k in sizes))
    if len(ids) and sizes:
        points = F.normalize(vectors[ids], dim=-1).numpy()
        labels[ids] = torch.as_tensor(kmeans_labels(points, sizes, seed))
    return labels


class TextFeatures:
    """Item text vectors, user texts, the training-item set and task labels (see module doc).

    ``train`` is the train split: features are built from it and from the item/user files
    (text is not an interaction), never from valid or test rows."""

    def __init__(self, config, train, user_texts_up_front=True):
        started = time.perf_counter()
        self.n_items = train.item_num
        seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        rows = train_rows(train, seq_field, config["ITEM_LIST_LENGTH_FIELD"], config["ITEM_ID_FIELD"])
        self.seen = seen_items(rows, self.n_items)
        self.use_text = config["use_text"]
        self.trainable = config["llm_mode"] != "frozen"
        user_template = template_from_config(config["user_text_fields"] or [], config["user_text_template"])
        self.use_user_text = self._wants_user_text(config, user_template)
        need_llm = self.use_text or self.use_user_text
        self.lm = SharedLanguageModel.from_config(config, self.trainable) if need_llm else None
        self.text_dim = self.lm.hidden_size if self.lm is not None else 0
        self.encoder = TextEncoder(config, self.lm) if self.lm is not None else None

        # ---- item text ----
        self.item_views = None  # {view: one text per item}, re-read by a fine-tuned model
        self.item_text = self.item_text_empty = self.text_mean = self.text_std = None
        if self.use_text:
            if not config["item_text_fields"]:
                raise ConfigError("item_text_fields is not set: list the item fields to read as text "
                                  "in the dataset YAML (or set use_text: False)")
            texts, n_empty, views = item_text_views(config, train)
            if n_empty:
                logger.info(f"{n_empty} of {len(texts) - 1} items have no text; they use a zero text vector")
            self.item_views = views
            self.item_text_empty = torch.tensor([not t for t in texts])
            require_text(self.item_text_empty)  # before any field view is found wanting
            # one block per view, each standardised over the items that have its text
            blocks = [standardize(self.encoder.encode(view, f"item {name}" if len(views) > 1 else "item"),
                                  self._view_empty(name, view, len(views)))
                      for name, view in views.items()]
            self.item_text, self.text_mean, self.text_std = (torch.cat(parts, -1) for parts in zip(*blocks))

        # ---- user text: profile, own reviews and recent history, per position ----
        self.user_texts = None
        if self.use_user_text:
            titles = self._item_titles(config, train)
            # user texts met later (valid, test, serving) must get the vectors of the model as
            # loaded, as the training positions' texts did: under lora the shared model gives
            # them with its adapters off; full fine-tuning changes the weights, so it keeps a
            # second, frozen copy (in the dtype the run's text vectors have)
            user_encoder = self.encoder if config["llm_mode"] != "full" else TextEncoder(config, SharedLanguageModel(
                config["llm_path"], config["llm_pooling"], config["llm_max_length"], self.lm.dtype_name
            ).to(config["device"] or "cpu"))
            self.user_texts = UserTexts(config, train, titles, user_template, user_encoder)
            if user_texts_up_front:  # training reads them all; serving encodes what it scores
                self.user_texts.prepare(rows_of=train)

        # ---- semantic labels of items, for the auxiliary tasks: made when a task first asks
        # (k-means costs seconds; they draw no torch random numbers, so when they are made
        # changes nothing else)
        self.tags, self.tag_names = multi_hot(train, train.item_feat, config["tag_fields"] or [],
                                              config["tag_min_count"], config["tag_max_share"]) \
            if train.item_feat is not None else (torch.zeros(self.n_items, 0), [])
        self._cluster_inputs = (rows, config["seed"], list(config["text_clusters"] or []),
                                list(config["behavior_clusters"] or []))
        self.content_labels = self.behavior_labels = None
        self.seconds = time.perf_counter() - started

    def _make_labels(self):
        """Content labels (item tags, else k-means over the text vectors) and behaviour clusters."""
        rows, seed, text_sizes, behavior_sizes = self._cluster_inputs
        tags = self.tags
        if tags.size(1) == 0 and self.use_text and text_sizes:
            tags = text_clusters(self.item_text, self.item_text_empty, text_sizes, seed)
            self.tag_names = [f"text-cluster-{k}" for k in range(tags.size(1))]
            logger.info(f"no item tags: {tags.size(1)} semantic labels from k-means over the text vectors "
                        f"(granularities {text_sizes})")
        self.content_labels = tags
        self.behavior_labels = behavior_clusters(rows, self.seen, behavior_sizes, seed)

    @staticmethod
    def _view_empty(name, texts, n_views):
        """Which items lack this view's text. A field view needs text on two items at least
        (one joint text lets a long field, the category path, crowd out a short one, the
        brand, in the pooled vector; a field on one item has no spread to standardise)."""
        empty = torch.tensor([not t for t in texts])
        if n_views > 1 and int((~empty).sum()) < 2:
            raise DataError(f"item text field '{name}' has text on {int((~empty).sum())} item(s): it cannot "
                            "be a view of its own (item_text_views: fields); drop it from item_text_fields "
                            "or use item_text_views: joint")
        return empty

    def _wants_user_text(self, config, user_template):
        """``user_text: auto`` reads user text where the dataset has some of its own (profile
        fields or a ``.review`` file): recent titles alone repeat what H_v already holds of
        the history, and on amazon they did not move valid NDCG@10 (tuning log, session 5).
        ``user_text: True`` with nothing to read stops with one line."""
        choice = config["user_text"]
        review = review_path(config)
        own = bool(user_template) or review_file(config) is not None
        if choice == "auto":
            return own
        if choice and not own and not (config["user_recent_titles"] and config["item_text_fields"]):
            raise ConfigError(f"user_text is True but {config['dataset']} has no user text to read: no "
                              f"user_text_fields, no {review} (with user_reviews: True) and user_recent_titles "
                              "is False; set user_recent_titles: True to read the recent items' titles")
        return bool(choice)

    @staticmethod
    def _item_titles(config, dataset):
        """The first item text field, as the short name of an item in user text."""
        fields = config["item_text_fields"] or []
        if not fields or dataset.item_feat is None or fields[0] not in dataset.item_feat.columns:
            return None
        return field_strings(dataset, dataset.item_feat, fields[0])

    @property
    def item_labels(self):
        """Content labels (tags or text clusters) then behaviour clusters, per item."""
        if self.content_labels is None:
            self._make_labels()
        return torch.cat([self.content_labels, self.behavior_labels], dim=1)

    @property
    def text_seconds(self):
        """Encoding time of item and user texts (user texts have their own frozen encoder under full)."""
        user = self.user_texts.encoder if self.user_texts is not None else None
        encoders = {id(e): e for e in (self.encoder, user) if e is not None}
        return sum(e.seconds for e in encoders.values())
