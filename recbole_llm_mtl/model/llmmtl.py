r"""LLMMTL: a shared language model with multi-task learning for sequential recommendation.

Idea
----
One shared pretrained language model (any HuggingFace model) reads item text (title,
brand, categories, ...) and user text (profile fields, the user's own reviews, and the
recent history as text, at every position; :mod:`recbole_llm_mtl.data.user_text`). Three
task-specific extractors give

* H_v, item semantics: a mixture-of-whitening-experts adaptor over the item's text vector
  (after UniSRec, Hou et al., KDD 2022), optionally plus a learned item-ID embedding;
* H_a, behaviour: a causal Transformer over the history's H_v, read at every position;
* H_u, user profile: the user-text vector at the position plus the running semantic
  summary of the items seen so far (never anything after the position being predicted).

A similarity-reasoning module f_r(H_u, H_v, H_a) followed by a sigmoid scores user-item
pairs. Training sums three weighted task losses (:mod:`recbole_llm_mtl.model.tasks`):
behaviour (next item), user profile (the semantic labels of the user's next few items) and
item semantics (each item's tags or text clusters and its behaviour clusters from H_v).

Text vectors, user texts and task labels are prepared on the dataset side from the train
split (:mod:`recbole_llm_mtl.data.text_features`). Every position of a training sequence
is a next-item example (causal attention), so the train split holds each user's sequence
once instead of once per prefix (:class:`recbole_llm_mtl.data.dataset.AllPositionDataset`);
evaluation is RecBole's.
"""

import logging
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from tqdm import tqdm

from recbole_llm_mtl.data.dataset import AllPositionDataset
from recbole_llm_mtl.errors import ConfigError, TrainingError
from recbole_llm_mtl.model.layers import (
    CausalTransformer,
    MoEAdaptor,
    SimilarityScorer,
    TaskWeighting,
    TokenizedTexts,
    UserProfileExtractor,
    causal_mean,
)
from recbole_llm_mtl.model.tasks import BehaviorTask, ItemSemanticsTask, Step, UserProfileTask, auxiliary_tasks

logger = logging.getLogger(__name__)


class LLMMTL(SequentialRecommender):
    input_type = InputType.POINTWISE
    dataset_class = AllPositionDataset  # one row per user sequence window, see module doc
    # Bump when a fix changes what training computes under an unchanged config (as the
    # tied-timestamp fix did): the benchmark harness re-runs rows recorded under another value.
    RESULTS_VERSION = 1

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
        self.scorer_mode = config["scorer"]
        self.behavior_loss = config["behavior_loss"]
        self.behavior_items = config["behavior_items"]
        self.neg_samples = config["neg_samples"]
        self.label_smoothing = config["label_smoothing"]
        self.profile_horizon = config["profile_horizon"]
        self.llm_mode = config["llm_mode"]
        self.tuned_items_per_step = config["tuned_items_per_step"]
        weights = dict(config["task_weights"] or {})  # values checked up front (config_rules.py)
        self.task_weighting = config["task_weighting"]
        self.USER_ID = config["USER_ID_FIELD"]
        self.show_progress = config["show_progress"]

        # ---- what the dataset side prepared from the train split ----
        features = dataset.text_features
        self.text_seconds = features.text_seconds
        # plain objects, not modules: their vectors are data, not weights
        self.user_texts = features.user_texts
        self.text_encoder = features.encoder
        self.llm = None
        if self.use_text:
            self.register_buffer("item_text", features.item_text.clone())
            self.register_buffer("text_mean", features.text_mean)
            self.register_buffer("text_std", features.text_std)
            self.adaptor = MoEAdaptor(features.item_text.size(1), self.hidden_size, self.n_experts,
                                      self.adaptor_dropout_prob)
            if self.llm_mode != "frozen":
                self._init_tuning(config, features)

        # ---- item id embedding ----
        if self.item_id_embedding:
            self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.item_norm = nn.LayerNorm(self.hidden_size)

        # ---- extractors and scorer ----
        self.behavior = CausalTransformer(self.hidden_size, self.n_layers, self.n_heads,
                                          self.inner_size, self.dropout_prob, self.max_seq_length)
        user_dim = features.text_dim if self.user_texts is not None else 0
        self.profile = UserProfileExtractor(self.hidden_size, user_dim, self.hidden_size, self.dropout_prob)
        self.scorer = SimilarityScorer(self.hidden_size, self.scorer_mode, self.dropout_prob,
                                       config["temperature"], config["normalize_scores"])

        # ---- tasks: named heads, each with its targets and loss ----
        competing = features.seen if self.behavior_items == "train" else torch.arange(self.n_items) > 0
        tasks = {"behavior": BehaviorTask(competing, self.behavior_loss, self.neg_samples, self.label_smoothing)}
        makers = {"user_profile": lambda labels: UserProfileTask(self.hidden_size, labels, self.profile_horizon),
                  "item_semantics": lambda labels: ItemSemanticsTask(self.hidden_size, labels)}
        for name in auxiliary_tasks(weights):
            labels = features.item_labels  # made on first use: k-means costs seconds
            if labels.size(1) == 0:
                logger.warning(f"no semantic labels for the {name} task (no tags, text clusters or "
                               "behaviour clusters); task disabled")
                continue
            tasks[name] = makers[name](labels)
        self.tasks = nn.ModuleDict(tasks)
        self.loss_names = list(self.tasks)
        self.weighting = TaskWeighting([float(weights.get(n, 0)) for n in self.loss_names], self.task_weighting)
        self._stale_text = False
        self._scoring_items = None  # H_v of all items, cached while not training
        self._step = 0  # training steps, for error messages
        # the pretrained language model keeps its weights: only our own layers are initialised
        for name, child in self.named_children():
            if child is not self.llm:
                child.apply(self._init_weights)
        self.init_seconds = time.perf_counter() - started

    def parts(self):
        """What this model instance actually uses (a config key can ask for a part the dataset
        cannot feed, e.g. user text without profile fields or reviews): for reports."""
        return {"item_text": self.use_text, "item_id": self.item_id_embedding,
                "user_text": self.user_texts.sources() if self.user_texts is not None else [],
                "scorer": self.scorer_mode,
                "tasks": [n for n, w in zip(self.loss_names, self.weighting.weights.tolist()) if w > 0]}

    @property
    def train_items(self):
        return self.tasks["behavior"].train_items

    # ------------------------------------------------------------------ set-up helpers
    def _init_tuning(self, config, features):
        """``lora``/``full``: keep the language model as a trained submodule."""
        lm = features.lm
        lm.load()
        if self.llm_mode == "lora":
            from peft import LoraConfig, get_peft_model

            targets = config["lora_target_modules"] or "all-linear"
            peft_config = LoraConfig(r=config["lora_r"], lora_alpha=config["lora_alpha"],
                                     lora_dropout=config["lora_dropout"], target_modules=targets)
            lm.model = get_peft_model(lm.model, peft_config)
        lm.model.train()
        self.llm = lm
        # one per view of the item text (the joint text, or each field): a batch re-reads its items'
        self.item_tokens = nn.ModuleList(
            TokenizedTexts(*lm.pad(lm.tokenize(texts)), torch.tensor([not t for t in texts]))
            for texts in features.item_views.values())

    def _init_weights(self, module):
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
        return self._standardized([self.llm(view.input_ids[ids], view.attention_mask[ids]) for view in self.item_tokens],
                                  [view.empty[ids] for view in self.item_tokens])

    def _standardized(self, views, empties):
        """Vectors of each text view side by side, each standardised by its own block's
        statistics; an item without that view's text is zero there, as in ``item_text``."""
        blocks, start = [], 0
        for vectors, empty in zip(views, empties):
            block = slice(start, start + vectors.size(1))
            blocks.append(((vectors - self.text_mean[block]) / self.text_std[block]).masked_fill(empty.unsqueeze(-1), 0.0))
            start = block.stop
        return torch.cat(blocks, -1)

    @torch.no_grad()
    def encode_new_items(self, views):
        """Standardised text vectors of items the model has never seen, from the model's own
        language model (the fine-tuned one in lora/full mode). ``views``: one list of texts
        per view of the item text, in order (``data.text_features.item_text_views``); views
        left out (a free text is the first view alone) and empty texts stay zero, as for an
        item without that field."""
        if not self.use_text:
            raise ConfigError("this model was trained without text (use_text: False); it cannot read new items")
        device = self.item_text.device
        vectors = []
        for texts in views:
            if self.llm is not None:
                was = self.llm.training
                self.llm.eval()
                vectors.append(self.llm(*self.llm.pad(self.llm.tokenize(texts), device)))
                self.llm.train(was)
            else:
                vectors.append(self.text_encoder.lm.encode(list(texts), show_progress=False).to(device))
        out = self._standardized(vectors, [torch.tensor([not t for t in texts], device=device) for texts in views])
        return F.pad(out, (0, self.item_text.size(1) - out.size(1)))  # views left out: zero

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

    def user_text_vectors(self, interaction, last_only=False):
        """(B, L, d) user-text vectors at each position (zeros where none), or None."""
        if self.user_texts is None:
            return None
        index = self.user_texts.lookup(interaction, last_only)
        return self.user_texts.vectors[index].to(self.item_norm.weight.device)

    def user_states(self, interaction, h_v, last_only=False):
        """Per-position (H_a, H_u, query) for a batch of histories (a mapping with the user
        id, item sequence and length fields; and timestamps when reviews are read).
        ``last_only``: user text only where scoring reads it, the last position."""
        h_seq = h_v[interaction[self.ITEM_SEQ]]
        h_a = self.behavior(h_seq)
        h_u = self.profile(causal_mean(h_seq), self.user_text_vectors(interaction, last_only))
        return h_a, h_u, self.scorer.query(h_a, h_u)

    def forward(self, interaction):
        """Query vector at the last real position of each history, and all H_v.

        Out of training, H_v of all items is computed once and reused by every scoring call
        (evaluation batches, serving) until the model trains or loads new weights."""
        if self.training:
            h_v = self.item_representations()
        else:
            if self._scoring_items is None:
                self._scoring_items = self.item_representations()
            h_v = self._scoring_items
        _, _, query = self.user_states(interaction, h_v, last_only=True)
        return self.gather_indexes(query, interaction[self.ITEM_SEQ_LEN] - 1), h_v

    # ------------------------------------------------------------------ training
    def _items_to_tune(self, batch_items):
        """The batch items re-encoded with grad this step (lora/full): at most
        ``tuned_items_per_step``, drawn at random; the others read the table refreshed at
        the last evaluation. Backward keeps the language model's activations of every
        re-encoded text, so all of a 512-sequence batch (thousands of items) would not fit
        in memory."""
        cap = self.tuned_items_per_step
        if cap is None or batch_items.numel() <= cap:
            return batch_items
        return batch_items[torch.randperm(batch_items.numel(), device=batch_items.device)[:cap]]

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        seq_len = interaction[self.ITEM_SEQ_LEN]
        rows = torch.arange(item_seq.size(0), device=item_seq.device)
        # the item after position t: the next history item, or the row's target
        next_items = torch.cat([item_seq[:, 1:], torch.zeros_like(item_seq[:, :1])], dim=1)
        next_items[rows, seq_len - 1] = interaction[self.POS_ITEM_ID]
        valid = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0) < seq_len.unsqueeze(1)

        batch_items = torch.unique(torch.cat([item_seq[valid], next_items[valid]]))
        h_v = self.item_representations(self._items_to_tune(batch_items) if self.llm is not None else None)
        h_a, h_u, query = self.user_states(interaction, h_v)
        step = Step(h_v, h_a, h_u, query, self.scorer, self.scorer.items(h_v), next_items, valid, batch_items,
                    item_seq)
        losses = [task(step) for task in self.tasks.values()]
        self._step += 1
        for name, loss in zip(self.loss_names, losses):
            if not torch.isfinite(loss):
                raise TrainingError(f"the {name} loss became {loss.item()} at training step {self._step}; "
                                    "lower learning_rate or check the input data")
        return tuple(self.weighting(losses))

    # ------------------------------------------------------------------ scoring
    def predict(self, interaction):
        query, h_v = self.forward(interaction)
        items = self.scorer.items(h_v[interaction[self.ITEM_ID]])
        return self.scorer.pair_logits(query, items)  # logit: ranks as the sigmoid, without float32 ties near 1

    def full_sort_predict(self, interaction):
        query, h_v = self.forward(interaction)
        # float64: with a low temperature, float32 sigmoids of top items round to 1.0 and tie
        return torch.sigmoid(self.scorer.logits(query, self.scorer.items(h_v)).double())
