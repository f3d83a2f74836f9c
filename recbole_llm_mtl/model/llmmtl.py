r"""LLMMTL: a shared language model with multi-task learning for sequential recommendation.

Idea
----
One shared pretrained language model (any HuggingFace model) reads item text (title,
brand, categories, ...) and user text (profile fields). Three task-specific extractors
give

* H_v, item semantics: a mixture-of-whitening-experts adaptor over the item's text vector
  (after UniSRec, Hou et al., KDD 2022), optionally plus a learned item-ID embedding;
* H_a, behaviour: a causal Transformer over the history's H_v, read at every position;
* H_u, user profile: the user's profile-text vector plus the running semantic summary of
  the items seen so far (never anything after the position being predicted).

A similarity-reasoning module f_r(H_u, H_v, H_a) followed by a sigmoid scores user-item
pairs. Training sums three weighted losses: behaviour (next item; softmax CE over the
items seen in training, or BCE with sampled negatives), user profile (multi-label BCE on
the interest tags the user reaches by the next item, plus profile attributes when the
dataset has them) and item semantics (multi-label BCE on each item's own category/brand
tags from H_v).

Every position of a training sequence is a next-item example (causal attention), so the
train split holds each user's sequence once instead of once per prefix
(:class:`recbole_llm_mtl.data.dataset.AllPositionDataset`); evaluation is RecBole's.
"""

import logging
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_llm_mtl.data.dataset import AllPositionDataset
from recbole_llm_mtl.distributed import is_distributed, sharded_cached_encode
from recbole_llm_mtl.errors import ConfigError, TrainingError
from recbole_llm_mtl.model.layers import (
    CausalTransformer,
    MoEAdaptor,
    SimilarityScorer,
    TaskWeighting,
    UserProfileExtractor,
    causal_mean,
)
from recbole_llm_mtl.text.cache import VectorCache, cached_encode
from recbole_llm_mtl.text.encoder import SharedLanguageModel
from recbole_llm_mtl.text.templates import multi_hot, render_texts, template_from_config

logger = logging.getLogger(__name__)

TASKS = ("behavior", "user_profile", "item_semantics")


def _choice(config, key, options):
    value = config[key]
    if value not in options:
        raise ConfigError(f"{key}: '{value}' is not one of {list(options)}")
    return value


class LLMMTL(SequentialRecommender):
    input_type = InputType.POINTWISE
    dataset_class = AllPositionDataset  # one row per user sequence window, see module doc

    def __init__(self, config, dataset):
        started = time.perf_counter()
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.inner_size = config["inner_size"]
        self.dropout_prob = config["hidden_dropout_prob"]
        self.adaptor_dropout_prob = config["adaptor_dropout_prob"]
        self.n_experts = config["n_experts"]
        self.use_text = config["use_text"]
        self.item_id_embedding = config["item_id_embedding"]
        self.scorer_mode = _choice(config, "scorer", ("mlp", "dot"))
        self.behavior_loss = _choice(config, "behavior_loss", ("ce", "bce"))
        self.neg_samples = config["neg_samples"]
        self.label_smoothing = config["label_smoothing"]
        self.llm_mode = _choice(config, "llm_mode", ("frozen", "lora", "full"))
        self.task_weights = [float(config["task_weights"].get(t, 0.0)) for t in TASKS]
        self.task_weighting = _choice(config, "task_weighting", ("fixed", "uncertainty"))
        if self.hidden_size % self.n_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by n_heads ({self.n_heads})")
        if any(w < 0 for w in self.task_weights) or self.task_weights[0] <= 0:
            raise ConfigError(f"task_weights {config['task_weights']}: weights must be >= 0 and "
                              "the behavior weight > 0 (it is the ranking task)")
        if not (self.use_text or self.item_id_embedding):
            raise ConfigError("use_text and item_id_embedding are both off: items would have no representation")
        self.USER_ID = config["USER_ID_FIELD"]
        self.show_progress = config["show_progress"]

        # ---- text through the shared language model ----
        self.llm = None
        user_template = template_from_config(config["user_text_fields"] or [], config["user_text_template"])
        need_llm = self.use_text or bool(user_template)
        lm = SharedLanguageModel.from_config(config, self.llm_mode != "frozen") if need_llm else None
        text_dim = lm.hidden_size if lm is not None else 0
        if self.use_text:
            if not config["item_text_fields"]:
                raise ConfigError("item_text_fields is not set: list the item fields to read as text "
                                  "in the dataset YAML (or set use_text: False)")
            item_template = template_from_config(config["item_text_fields"], config["item_text_template"])
            texts, n_empty = render_texts(dataset, dataset.item_feat, item_template,
                                          config["text_separator"], "item")
            if n_empty:
                logger.info(f"{n_empty} of {len(texts) - 1} items have no text; they use a zero text vector")
            vectors = self._encode(config, lm, texts, "item")
            empty = torch.tensor([not t for t in texts])
            mean, std = vectors[~empty].mean(0), vectors[~empty].std(0).clamp(min=1e-6)
            vectors = ((vectors - mean) / std).masked_fill(empty.unsqueeze(1), 0.0)
            self.register_buffer("item_text", vectors)
            self.register_buffer("text_mean", mean)
            self.register_buffer("text_std", std)
            self.adaptor = MoEAdaptor(text_dim, self.hidden_size, self.n_experts, self.adaptor_dropout_prob)
            if self.llm_mode != "frozen":
                self._init_tuning(config, lm, texts, empty)
        if user_template:
            texts, n_empty = render_texts(dataset, dataset.user_feat, user_template,
                                          config["text_separator"], "user")
            vectors = self._encode(config, lm, texts, "user")
            vectors = F.normalize(vectors, dim=-1)
            vectors[0] = 0.0
            self.register_buffer("user_text", vectors)
        else:
            self.user_text = None
        if self.llm is None:
            del lm  # frozen: the language model never runs inside training

        # ---- item id embedding ----
        if self.item_id_embedding:
            self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.item_norm = nn.LayerNorm(self.hidden_size)

        # ---- extractors and scorer ----
        self.behavior = CausalTransformer(self.hidden_size, self.n_layers, self.n_heads,
                                          self.inner_size, self.dropout_prob, self.max_seq_length)
        self.profile = UserProfileExtractor(self.hidden_size, text_dim if self.user_text is not None else 0,
                                            self.hidden_size, self.dropout_prob)
        self.scorer = SimilarityScorer(self.hidden_size, self.scorer_mode, self.dropout_prob,
                                       config["temperature"], config["normalize_scores"])

        # ---- tags for the auxiliary tasks ----
        item_tags, self.item_tag_names = multi_hot(dataset, dataset.item_feat, config["tag_fields"] or [],
                                                   config["tag_min_count"], config["tag_max_share"])
        self.register_buffer("item_tags", item_tags)
        if config["user_tag_fields"]:
            user_tags, self.user_tag_names = multi_hot(dataset, dataset.user_feat, config["user_tag_fields"],
                                                       config["tag_min_count"], 1.0)
            self.register_buffer("user_tags", user_tags)
        else:
            self.user_tags, self.user_tag_names = None, []
        n_user_tags = item_tags.size(1) + len(self.user_tag_names)
        for k, (task, n_tags) in enumerate(zip(TASKS[1:], (n_user_tags, item_tags.size(1))), start=1):
            if self.task_weights[k] > 0 and n_tags == 0:
                logger.warning(f"no tags for the {task} task (tag_fields / user_tag_fields); task disabled")
                self.task_weights[k] = 0.0
        self.user_head = nn.Linear(self.hidden_size, n_user_tags) if self.task_weights[1] > 0 else None
        self.item_head = nn.Linear(self.hidden_size, item_tags.size(1)) if self.task_weights[2] > 0 else None
        # Items with no training interaction are unknown to the model, not negatives: a
        # softmax that pushes them down at every step would bury new (cold) items whose
        # text resembles what users buy. Only items seen in training compete in the loss.
        feat = dataset.inter_feat
        seen = torch.zeros(self.n_items, dtype=torch.bool)
        seen[feat[self.ITEM_ID]] = True
        seen[feat[self.ITEM_SEQ]] = True
        seen[0] = False
        column = torch.full((self.n_items,), -1, dtype=torch.long)
        column[seen] = torch.arange(int(seen.sum()))
        self.register_buffer("train_items", seen.nonzero().squeeze(1), persistent=False)
        self.register_buffer("train_item_column", column, persistent=False)
        self.active_tasks = [k for k, w in enumerate(self.task_weights) if w > 0]
        self.loss_names = [TASKS[k] for k in self.active_tasks]
        self.weighting = TaskWeighting([self.task_weights[k] for k in self.active_tasks], self.task_weighting)
        self._stale_text = False
        self._scoring_items = None  # H_v of all items, cached while not training
        self._step = 0  # training steps, for error messages
        self.apply(self._init_weights)
        self.init_seconds = time.perf_counter() - started

    # ------------------------------------------------------------------ set-up helpers
    def _encode(self, config, lm, texts, what):
        cache = VectorCache(config["text_cache_dir"]) if config["text_cache_dir"] else None
        encode = lambda t: lm.encode(t, config["llm_batch_tokens"], config["show_progress"],
                                     desc=f"Encoding {what} text")
        start = time.perf_counter()
        if is_distributed():
            vectors, _ = sharded_cached_encode(cache, lm.identity, texts, encode)
        else:
            vectors, _ = cached_encode(cache, lm.identity, texts, encode)
        self.text_seconds = getattr(self, "text_seconds", 0.0) + time.perf_counter() - start
        return vectors

    def _init_tuning(self, config, lm, texts, empty):
        """``lora``/``full``: keep the language model as a trained submodule."""
        lm.load()
        if self.llm_mode == "lora":
            from peft import LoraConfig, get_peft_model

            targets = config["lora_target_modules"] or "all-linear"
            peft_config = LoraConfig(r=config["lora_r"], lora_alpha=config["lora_alpha"],
                                     lora_dropout=config["lora_dropout"], target_modules=targets)
            lm.model = get_peft_model(lm.model, peft_config)
        lm.model.train()
        self.llm = lm
        ids = lm.tokenize(texts)
        input_ids, mask = lm.pad(ids)
        self.register_buffer("item_input_ids", input_ids, persistent=False)
        self.register_buffer("item_attention_mask", mask, persistent=False)
        self.register_buffer("item_text_empty", empty, persistent=False)

    def _init_weights(self, module):
        if module is self.llm:
            return
        if isinstance(module, nn.Embedding) and module.weight.requires_grad:
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def train(self, mode=True):
        if self.llm is not None and mode:
            self._stale_text = True  # fine-tuned text vectors are refreshed before scoring
        self._scoring_items = None  # weights may change: item representations are recomputed
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._scoring_items = None
        return super().load_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------ representations
    def _tuned_text(self, ids):
        out = self.llm(self.item_input_ids[ids], self.item_attention_mask[ids])
        out = (out - self.text_mean) / self.text_std
        return out.masked_fill(self.item_text_empty[ids].unsqueeze(-1), 0.0)

    @torch.no_grad()
    def refresh_text_vectors(self, batch_size=256):
        """Re-encode every item with the fine-tuned language model (lora/full modes); runs
        before the first scoring after training, i.e. once per evaluation (``eval_step``)."""
        starts = range(1, self.n_items, batch_size)
        for start in tqdm(starts, desc="Re-encoding item text", unit="batch", disable=not self.show_progress):
            ids = torch.arange(start, min(start + batch_size, self.n_items), device=self.item_text.device)
            self.item_text[ids] = self._tuned_text(ids)
        self._stale_text = False

    def text_table(self, fresh_ids=None):
        """Item text vectors; in lora/full training ``fresh_ids`` are re-encoded with grad."""
        if self.llm is None:
            return self.item_text
        if self.training and fresh_ids is not None:
            return self.item_text.index_put((fresh_ids,), self._tuned_text(fresh_ids))
        if self._stale_text:
            self.refresh_text_vectors()
        return self.item_text

    def item_representations(self, fresh_ids=None):
        """H_v for all items (row 0 is padding)."""
        h = 0
        if self.use_text:
            h = self.adaptor(self.text_table(fresh_ids))
        if self.item_id_embedding:
            h = h + self.item_embedding.weight
        return self.item_norm(h)

    def user_states(self, item_seq, user_ids, h_v):
        """Per-position (H_a, H_u, query) for a batch of histories."""
        h_seq = h_v[item_seq]
        h_a = self.behavior(h_seq)
        user_text = self.user_text[user_ids] if self.user_text is not None else None
        h_u = self.profile(causal_mean(h_seq), user_text)
        return h_a, h_u, self.scorer.query(h_a, h_u)

    def forward(self, item_seq, item_seq_len, user_ids):
        """Query vector at the last real position of each history, and all H_v.

        Out of training, H_v of all items is computed once and reused by every scoring call
        (evaluation batches, serving) until the model trains or loads new weights."""
        if self.training:
            h_v = self.item_representations()
        else:
            if self._scoring_items is None:
                self._scoring_items = self.item_representations()
            h_v = self._scoring_items
        _, _, query = self.user_states(item_seq, user_ids, h_v)
        return self.gather_indexes(query, item_seq_len - 1), h_v

    # ------------------------------------------------------------------ training
    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        seq_len = interaction[self.ITEM_SEQ_LEN]
        user_ids = interaction[self.USER_ID]
        rows = torch.arange(item_seq.size(0), device=item_seq.device)
        # label at position t is the item after t: the next history item, or the target
        labels = torch.cat([item_seq[:, 1:], torch.zeros_like(item_seq[:, :1])], dim=1)
        labels[rows, seq_len - 1] = interaction[self.POS_ITEM_ID]
        valid = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0) < seq_len.unsqueeze(1)

        batch_items = torch.unique(torch.cat([item_seq[valid], labels[valid]]))
        h_v = self.item_representations(batch_items if self.llm is not None else None)
        h_a, h_u, query = self.user_states(item_seq, user_ids, h_v)
        items = self.scorer.items(h_v)

        losses = []
        for task in self.active_tasks:
            if task == 0:
                losses.append(self._behavior_loss(query[valid], items, labels[valid]))
            elif task == 1:
                target = self.item_tags[item_seq].cumsum(1) + self.item_tags[labels]
                target = (target > 0).float()[valid]
                if self.user_tags is not None:
                    extra = self.user_tags[user_ids].unsqueeze(1).expand(-1, item_seq.size(1), -1)[valid]
                    target = torch.cat([target, extra], dim=1)
                losses.append(F.binary_cross_entropy_with_logits(self.user_head(h_u[valid]), target))
            else:
                losses.append(F.binary_cross_entropy_with_logits(self.item_head(h_v[batch_items]),
                                                                 self.item_tags[batch_items]))
        self._step += 1
        for name, loss in zip(self.loss_names, losses):
            if not torch.isfinite(loss):
                raise TrainingError(f"the {name} loss became {loss.item()} at training step {self._step}; "
                                    "lower learning_rate or check the input data")
        return tuple(self.weighting(losses))

    def _behavior_loss(self, query, items, labels):
        if self.behavior_loss == "ce":
            logits = self.scorer.logits(query, items[self.train_items])
            return F.cross_entropy(logits, self.train_item_column[labels], label_smoothing=self.label_smoothing)
        pos = self.scorer.pair_logits(query, items[labels])
        pick = torch.randint(0, self.train_items.numel(), (labels.size(0), self.neg_samples), device=labels.device)
        neg_ids = self.train_items[pick]
        neg = self.scorer.pair_logits(query.unsqueeze(1), items[neg_ids])
        return (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))

    # ------------------------------------------------------------------ scoring
    def predict(self, interaction):
        query, h_v = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                  interaction[self.USER_ID])
        items = self.scorer.items(h_v[interaction[self.ITEM_ID]])
        return torch.sigmoid(self.scorer.pair_logits(query, items).double())

    def full_sort_predict(self, interaction):
        query, h_v = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                  interaction[self.USER_ID])
        # float64: with a low temperature, float32 sigmoids of top items round to 1.0 and tie
        return torch.sigmoid(self.scorer.logits(query, self.scorer.items(h_v)).double())
