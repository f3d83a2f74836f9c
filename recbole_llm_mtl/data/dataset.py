"""RecBole dataset for models trained on every position of a sequence at once."""

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset


def all_position_rows(user_ids, times, window):
    """Indices of the train rows to keep so each train target is predicted exactly once.

    RecBole's augmentation makes one row per prefix (history of at most ``window`` items
    -> target). A causal model reads a row at every position, so the row of a user's last
    target already covers the ``window`` targets before it; keep that row, the one
    ``window`` targets earlier, and so on.
    """
    order = np.lexsort((-np.asarray(times), np.asarray(user_ids)))  # user, newest first
    users = np.asarray(user_ids)[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    rank = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    return np.sort(order[rank % window == 0])


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
                                     self.config["MAX_ITEM_LIST_LENGTH"])
            datasets[0] = train.copy(train.inter_feat[keep])
        datasets[0].is_train_split = True
        return datasets

    @property
    def text_features(self):
        """:class:`~recbole_llm_mtl.data.text_features.TextFeatures` of this train split,
        built on first use (after every change to the split, e.g. cold-item removal)."""
        if not getattr(self, "is_train_split", False):
            raise RuntimeError("text features are built from the train split only")
        if getattr(self, "_text_features", None) is None:
            from recbole_llm_mtl.data.text_features import TextFeatures

            self._text_features = TextFeatures(self.config, self)
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
