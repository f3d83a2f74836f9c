"""LLMMTL's three tasks, each a named head with its own targets and loss.

Every task reads one :class:`Step` (the representations a training batch produced) and
returns a scalar loss. Targets come from the train split (see
:mod:`recbole_llm_mtl.data.text_features`), never from valid or test interactions.
"""

from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# What one training batch produced: H_v of all items, per-position H_a, H_u and query,
# the scorer and its item side, the next item of every position, the real-position mask,
# the items the batch touches, and the histories.
Step = namedtuple("Step", "h_v h_a h_u query scorer items next_items valid batch_items item_seq")


class BehaviorTask(nn.Module):
    """Next-item prediction at every position: softmax CE over the competing items (``seen``),
    or BCE against ``neg_samples`` negatives sampled from them.

    By default (``behavior_items: train``) those are the items seen in training: items with
    no training interaction are unknown to the model, not negatives, and a softmax that
    pushes them down at every step would bury new (cold) items whose text resembles what
    users buy. ``all`` lets every item compete."""

    name = "behavior"

    def __init__(self, seen, loss, neg_samples, label_smoothing):
        super().__init__()
        self.loss_type = loss
        self.neg_samples, self.label_smoothing = neg_samples, label_smoothing
        column = torch.full((len(seen),), -1, dtype=torch.long)
        column[seen] = torch.arange(int(seen.sum()))
        self.register_buffer("train_items", seen.nonzero().squeeze(1), persistent=False)
        self.register_buffer("train_item_column", column, persistent=False)

    def forward(self, step):
        query, labels, scorer = step.query[step.valid], step.next_items[step.valid], step.scorer
        if self.loss_type == "ce":
            logits = scorer.logits(query, step.items[self.train_items])
            return F.cross_entropy(logits, self.train_item_column[labels], label_smoothing=self.label_smoothing)
        pos = scorer.pair_logits(query, step.items[labels])
        pick = torch.randint(0, self.train_items.numel(), (labels.size(0), self.neg_samples), device=labels.device)
        neg = scorer.pair_logits(query.unsqueeze(1), step.items[self.train_items[pick]])
        return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))


class UserProfileTask(nn.Module):
    """Forecast the user's coming interests from H_u: at each position, multi-label BCE on
    the semantic labels (tags or text clusters, and behaviour clusters) of the next
    ``horizon`` items of the sequence. The history is in H_u's input; what comes next is not,
    so the task teaches H_u where the user is heading rather than restating the past."""

    name = "user_profile"

    def __init__(self, hidden, item_labels, horizon):
        super().__init__()
        self.horizon = horizon
        self.register_buffer("item_labels", item_labels, persistent=False)
        self.head = nn.Linear(hidden, item_labels.size(1))

    def targets(self, next_items, valid):
        """Union of the labels of the items at positions t+1 .. t+horizon (those the row holds)."""
        length = next_items.size(1)
        target = torch.zeros(*next_items.shape, self.item_labels.size(1), device=next_items.device)
        for d in range(min(self.horizon, length)):
            ahead = F.pad(next_items[:, d:], (0, d))  # 0 (padding, no labels) past the row's end
            target = torch.maximum(target, self.item_labels[ahead])
        return target[valid]

    def forward(self, step):
        return F.binary_cross_entropy_with_logits(self.head(step.h_u[step.valid]),
                                                  self.targets(step.next_items, step.valid))


class ItemSemanticsTask(nn.Module):
    """Item semantics from H_v: multi-label BCE on each item's tags (or text clusters) and
    its behaviour clusters (how it is bought with others in training), for the items of the
    batch. The behaviour labels are what the text alone does not say."""

    name = "item_semantics"

    def __init__(self, hidden, item_labels):
        super().__init__()
        self.register_buffer("item_labels", item_labels, persistent=False)
        self.head = nn.Linear(hidden, item_labels.size(1))

    def forward(self, step):
        items = step.batch_items
        return F.binary_cross_entropy_with_logits(self.head(step.h_v[items]), self.item_labels[items])


TASKS = {t.name: t for t in (BehaviorTask, UserProfileTask, ItemSemanticsTask)}


def auxiliary_tasks(weights):
    """The auxiliary tasks a ``task_weights`` value trains (weight above 0), in ``TASKS`` order."""
    return [name for name in TASKS if name != "behavior" and float((weights or {}).get(name, 0)) > 0]
