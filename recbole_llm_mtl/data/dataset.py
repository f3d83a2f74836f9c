"""RecBole dataset for models trained on every position of a sequence at once."""

import numpy as np
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
    Valid and test splits are RecBole's own, row for row."""

    def build(self):
        datasets = super().build()
        if self.config["train_all_positions"]:
            train = datasets[0]
            keep = all_position_rows(train.inter_feat[self.uid_field].numpy(),
                                     train.inter_feat[self.time_field].numpy(),
                                     self.config["MAX_ITEM_LIST_LENGTH"])
            datasets[0] = train.copy(train.inter_feat[keep])
        return datasets
