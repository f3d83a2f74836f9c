"""RecBole datasets: our atomic-file reader for every dataset class, all-position training
rows for causal models, and the cold-start protocol."""

import importlib
import os

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import SequentialDataset
from recbole.utils import FeatureSource, FeatureType, ModelType

from recbole_llm_mtl.data.user_text import review_file
from recbole_llm_mtl.data.validate import read_atomic_file
from recbole_llm_mtl.errors import DataError


def all_position_rows(user_ids, times, window, stride=None):
    """Indices of the train rows to keep so each train target is predicted exactly once
    (``stride`` = ``window``, the default) or, with a smaller ``stride``, about
    ``window / stride`` times from overlapping windows.

    RecBole's augmentation makes one row per prefix (history of at most ``window`` items
    -> target). A causal model reads a row at every position, so the row of a user's last
    target already covers the ``window`` targets before it; keep that row, the one
    ``stride`` targets earlier, and so on. With disjoint windows the first positions of a
    window see few items of context although the user has a long history (evaluation
    always reads the last ``window`` items); overlapping windows train those targets with
    a long context too.
    """
    # user, newest first; rows with equal timestamps (76% of ml-100k's interactions share one
    # with another of the user's) keep the split's sequence order, so the last target is kept
    order = np.lexsort((-np.arange(len(times)), -np.asarray(times), np.asarray(user_ids)))
    users = np.asarray(user_ids)[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    rank = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    return np.sort(order[rank % (stride or window) == 0])


class AllPositionDataset(SequentialDataset):
    """SequentialDataset whose train split holds each user's sequence once (in windows of
    ``MAX_ITEM_LIST_LENGTH``), for causal models that learn from every position.
    Valid and test splits are RecBole's own, row for row.

    The train split carries the model's text features and task targets
    (:attr:`text_features`), built from that split alone."""

    def build(self):
        datasets = super().build()
        if self.config["train_all_positions"]:
            train = datasets[0]
            keep = all_position_rows(train.inter_feat[self.uid_field].numpy(),
                                     train.inter_feat[self.time_field].numpy(),
                                     self.config["MAX_ITEM_LIST_LENGTH"], self.config["train_window_stride"])
            datasets[0] = train.copy(train.inter_feat[keep])
        datasets[0].is_train_split = True
        return datasets

    @property
    def text_features(self):
        """:class:`~recbole_llm_mtl.data.text_features.TextFeatures` of this train split,
        built on first use (after every change to the split, e.g. cold-item removal)."""
        return self.prepare_text_features()

    def prepare_text_features(self, user_texts_up_front=True):
        """Build :attr:`text_features` now. ``user_texts_up_front=False`` (serving) leaves
        the user texts of training positions unencoded: only the texts scoring asks for are
        encoded, as it asks."""
        if not getattr(self, "is_train_split", False):
            raise RuntimeError("text features are built from the train split only")
        if getattr(self, "_text_features", None) is None:
            from recbole_llm_mtl.data.text_features import TextFeatures

            self._text_features = TextFeatures(self.config, self, user_texts_up_front)
        return self._text_features


def remove_items(train, items_mask, seq_field, len_field, item_field):
    """Drop every interaction with a masked item from train rows: rows whose target is
    masked go, masked items leave the histories (the rest is shifted left, order kept,
    and every other per-position list, e.g. timestamps, shifted with them)."""
    feat = train.inter_feat
    keep_row = ~items_mask[feat[item_field]]
    seq, lengths = feat[seq_field][keep_row], feat[len_field][keep_row]
    positions = torch.arange(seq.size(1)).unsqueeze(0)
    keep = (positions < lengths.unsqueeze(1)) & ~items_mask[seq]
    order = torch.argsort((~keep).int(), dim=1, stable=True)  # kept items first, in order
    kept = torch.gather(keep, 1, order)
    new_len = keep.sum(1)
    rows = torch.nonzero(keep_row).flatten()[new_len > 0]
    sub = train.copy(feat[rows])
    for field in feat.columns:
        values = feat[field]
        if field == len_field or values.dim() != 2 or values.shape[1] != seq.size(1):
            continue
        values = values[keep_row]
        shifted = torch.where(kept, torch.gather(values, 1, order), torch.zeros_like(values))
        sub.inter_feat[field] = shifted[new_len > 0]
    sub.inter_feat[len_field] = new_len[new_len > 0]
    return sub


class ColdItemMixin:
    """Cold-start protocol: a random ``cold_item_ratio`` of items (seeded) loses every
    interaction in the train split; valid/test rows stay as they are, and ``cold_items``
    tells which test targets are cold."""

    def build(self):
        datasets = super().build()
        rng = np.random.RandomState(self.config["seed"])
        n_items = self.item_num
        n_cold = int(round(self.config["cold_item_ratio"] * (n_items - 1)))
        self.cold_items = torch.zeros(n_items, dtype=torch.bool)
        self.cold_items[torch.as_tensor(rng.choice(np.arange(1, n_items), n_cold, replace=False))] = True
        datasets[0] = remove_items(datasets[0], self.cold_items, self.item_id_list_field,
                                   self.item_list_length_field, self.iid_field)
        for d in datasets:
            d.cold_items = self.cold_items
        return datasets


def with_cold_items(dataset_class):
    """``dataset_class`` with the cold-start protocol mixed in."""
    return type(f"Cold{dataset_class.__name__}", (ColdItemMixin, dataset_class), {})


def _float_array(table, field, values):
    """float64 values of a column; ``""`` is missing (NaN), anything else must parse."""
    try:
        return np.asarray([v if v.strip() else "nan" for v in values], dtype=np.float64)
    except ValueError:
        for lineno, v in zip(table.lines, values):
            try:
                float(v or "nan")
            except ValueError:
                raise DataError(f"{table.path}, line {lineno}: {field} value {v!r} is not a number "
                                "(the column is typed float in the header)") from None
        raise


def _column(table, field, ftype, seq_separator):
    """A DataFrame column as RecBole's own loader makes it (missing tokens are NaN)."""
    values = table.column(field)
    if ftype == FeatureType.FLOAT:
        return _float_array(table, field, values)
    if ftype == FeatureType.TOKEN:
        column = np.array(values, dtype=object)
        column[column == ""] = np.nan
        return column
    if ftype == FeatureType.TOKEN_SEQ:
        return [np.array([w for w in v.split(seq_separator) if w]) for v in values]
    return [_float_array(table, field, [w for w in v.split(seq_separator) if w]) for v in values]


class AtomicReaderMixin:
    """Loads every atomic file with :func:`recbole_llm_mtl.data.validate.read_atomic_file`
    instead of pandas (quotes are ordinary characters, a BOM is dropped, errors name the
    file and line), and makes RecBole's silent repairs explicit:

    * a missing or non-finite timestamp stops the run (RecBole fills it with the mean,
      which reorders the user's sequence);
    * interactions whose item (user) has no ``.item`` (``.user``) row are kept, as items
      (users) without features, and counted in the log (RecBole drops them);
    * float fields of ``.item``/``.user`` keep their raw strings in ``raw_values`` (RecBole
      fills missing floats with the mean and may normalise them): text is rendered from them;
    * ``data_fingerprint`` holds hashes of every file read (content, and content in row
      order), for checkpoints and the benchmark's staleness check.
    """

    def _load_feat(self, filepath, source):
        load_col, unload_col = self._get_load_and_unload_col(source)
        if load_col == set():
            return None
        table = read_atomic_file(filepath, self.config["encoding"] or "utf-8",
                                 self.config["field_separator"] or "\t")
        if not hasattr(self, "data_fingerprint"):
            self.data_fingerprint = {}
        self.data_fingerprint[os.path.basename(filepath)] = table.fingerprint()
        fields = [(n, FeatureType(t)) for n, t in zip(table.names, table.types)
                  if (load_col is None or n in load_col) and not (unload_col and n in unload_col)]
        if not fields:
            self.logger.warning(f"No columns has been loaded from [{source}]")
            return None
        sep = self.config["seq_separator"]
        for field, ftype in fields:
            self._set_properties(field, ftype, source)
        df = pd.DataFrame({field: _column(table, field, ftype, sep) for field, ftype in fields})
        if source == FeatureSource.INTERACTION:
            self._check_times(table, df)
        if source in (FeatureSource.ITEM, FeatureSource.USER):
            self._keep_raw_floats(table, fields, source)
        for field, ftype in fields:
            if ftype.value.endswith("seq"):
                self._limit_seq_len(df, field)
        return df

    def _set_properties(self, field, ftype, source):
        """Field type, source and length, as RecBole's loader records them."""
        if isinstance(source, FeatureSource) or source != "link":
            self.field2source[field] = source
            self.field2type[field] = ftype
            if not ftype.value.endswith("seq"):
                self.field2seqlen[field] = 1
            if "float" in ftype.value:
                self.field2bucketnum[field] = 2

    def _limit_seq_len(self, df, field):
        seq_len = (self.config["seq_len"] or {}).get(field)
        longest = max(map(len, df[field].values), default=0)
        if seq_len:
            df[field] = [seq[:seq_len] for seq in df[field].values]
        self.field2seqlen[field] = min(seq_len, longest) if seq_len else longest

    def _check_times(self, table, df):
        """Stop on missing/NaN/inf timestamps: the order of a sequence comes from them."""
        if self.time_field not in df:
            return
        bad = np.flatnonzero(~np.isfinite(df[self.time_field].to_numpy()))
        if len(bad):
            lines = ", ".join(str(table.lines[k]) for k in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise DataError(f"{table.path}: {len(bad)} row(s) have a missing or non-finite {self.time_field} "
                            f"(lines {lines}); every interaction needs a time to order the sequences: "
                            "fix or drop those rows")

    def _keep_raw_floats(self, table, fields, source):
        id_field = self.iid_field if source == FeatureSource.ITEM else self.uid_field
        if id_field not in table.names:
            return
        if not hasattr(self, "raw_values"):
            self.raw_values = {}
        ids = table.column(id_field)
        for field, ftype in fields:
            if ftype in (FeatureType.FLOAT, FeatureType.FLOAT_SEQ):
                self.raw_values[field] = dict(zip(ids, (v.strip() for v in table.column(field))))

    def _filter_inter_by_user_or_item(self):
        """Keep interactions whose item/user has no feature row, and say how many there are."""
        name = self.dataset_name
        for feat, field, suffix in ((self.item_feat, self.iid_field, "item"), (self.user_feat, self.uid_field, "user")):
            if feat is None or field is None:
                continue
            missing = ~self.inter_feat[field].isin(feat[field])
            if missing.any():
                n_ids = self.inter_feat.loc[missing, field].nunique()
                self.logger.warning(f"{n_ids} {suffix}s of {name}.inter ({int(missing.sum())} interactions) have no "
                                    f"row in {name}.{suffix}: they are kept, as {suffix}s without features")


_RECBOLE_CLASS = {ModelType.SEQUENTIAL: "SequentialDataset", ModelType.KNOWLEDGE: "KnowledgeBasedDataset"}


def recbole_dataset_class(config):
    """The dataset class RecBole's ``create_dataset`` would pick for ``config``."""
    module = importlib.import_module("recbole.data.dataset")
    name = config["model"] + "Dataset"
    if not hasattr(module, name):
        name = _RECBOLE_CLASS.get(config["MODEL_TYPE"], "Dataset")
    return getattr(module, name)


def with_atomic_reader(dataset_class):
    """``dataset_class`` reading its files with :class:`AtomicReaderMixin`."""
    return type(dataset_class.__name__, (AtomicReaderMixin, dataset_class), {"__module__": __name__})


def readable_files(config):
    """The dataset's atomic files in its folder that a run of ``config`` could read, sorted:
    RecBole's suffixes that its dataset class loads (``.kg``/``.link`` for knowledge-based
    models only) and ``additional_feat_suffix``, and ``.review`` where the model reads
    user reviews (LLMMTL). Recorded beside the fingerprints of what the run did read, so a
    file added later (new user text) shows; a README or a backup beside them does not."""
    suffixes = {"inter", "user", "item", *(config["additional_feat_suffix"] or [])}
    if config["MODEL_TYPE"] == ModelType.KNOWLEDGE:  # RecBole reads .kg and .link for these alone
        suffixes |= {"kg", "link"}
    paths = [os.path.join(config["data_path"], f"{config['dataset']}.{suffix}") for suffix in suffixes]
    paths.append(review_file(config))  # None unless the model reads user reviews
    return sorted(os.path.basename(p) for p in paths if p and os.path.isfile(p))
