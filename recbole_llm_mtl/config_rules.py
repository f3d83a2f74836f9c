"""One check of the whole resolved config, before any data is read or any model is built.

A bad value would otherwise surface deep inside RecBole or the model (a ZeroDivisionError,
a KeyError after an epoch has trained, or a NaN loss whose message blames the learning
rate). Every rule is a row: ``key -> Check(test, allowed)``. ``test(value, config)`` says
whether the value is fine (``config`` is the whole merged dict, for rules that depend on
another key); ``allowed`` says in words what is accepted (a string, or a function of the
config). The first failing row stops the run with one line naming the key, the value
and what is allowed (:class:`~recbole_llm_mtl.errors.ConfigError`, exit code 2).

``PROTOCOL_RULES`` hold for every model run through our entry points (RecBole's keys our
protocol relies on); ``MODEL_RULES[name]`` only for that model. Rows are checked in table
order, so a row that reads another key comes after that key's own row.
To cover a new key, add a row; ``tests/test_config_rules.py`` fails for any key of
``properties/model/LLMMTL.yaml`` without one.
"""

import functools
import math
import os
import re
import string
from collections import namedtuple
from numbers import Integral, Real

from recbole.evaluator.register import metric_information, metric_types

from recbole_llm_mtl.errors import ConfigError
from recbole_llm_mtl.model.tasks import TASKS  # LLMMTL's losses by name
from recbole_llm_mtl.text.encoder import DTYPES, POOLINGS  # the encoder's own lists, so the two cannot drift

Check = namedtuple("Check", "test allowed")

LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam")
EVAL_MODES = "full, labeled, uni<N> or pop<N> (N > 0 sampled negatives, e.g. uni100)"


# ---------------------------------------------------------------- building blocks
def is_int(value):
    """Python's bool is an int; ``epochs: True`` is a typo, not 1."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_number(value):
    """A finite real number (no bool, NaN or inf: each ends in a NaN loss or a crash)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(low):
    return Check(lambda v, c: is_int(v) and v >= low,
                 "a positive integer" if low == 1 else f"an integer >= {low}")


def number_in(low, high=math.inf, low_open=False, high_open=True):
    """A finite number in an interval, e.g. ``number_in(0, 1)`` is [0, 1)."""
    def test(v, c):
        return (is_number(v) and (v > low if low_open else v >= low)
                and (v < high if high_open else v <= high))

    if high == math.inf:
        words = f"a number {'>' if low_open else '>='} {low}"
    else:
        words = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return Check(test, words)


POSITIVE_INT = int_at_least(1)
NON_NEGATIVE_INT = int_at_least(0)
POSITIVE_NUMBER = number_in(0, low_open=True)
PROBABILITY = Check(number_in(0, 1).test, "a probability in [0, 1)")
BOOLEAN = Check(lambda v, c: isinstance(v, bool), "True or False")
TEXT = Check(lambda v, c: isinstance(v, str), "a string")


def one_of(*options, case_sensitive=True):
    def test(v, c):
        if not isinstance(v, str):
            return False
        return v in options if case_sensitive else v.lower() in options

    return Check(test, "one of " + ", ".join(options))


def optional(check):
    """``~`` (None) or a value passing ``check``."""
    return Check(lambda v, c: v is None or check.test(v, c), lambda c: f"~ or {_allowed(check, c)}")


def list_of(check, what, non_empty=False):
    return Check(lambda v, c: isinstance(v, list) and (bool(v) or not non_empty)
                 and all(check.test(x, c) for x in v), what)


def any_of(*checks):
    """A value passing one of ``checks`` (RecBole accepts ``topk: 10`` and ``topk: [10, 50]``)."""
    return Check(lambda v, c: any(check.test(v, c) for check in checks),
                 lambda c: " or ".join(_allowed(check, c) for check in checks))


def _cross(check, extra_test, extra_words):
    """``check`` plus a condition that reads other keys of the config."""
    def allowed(config):
        return f"{_allowed(check, config)}, {extra_words(config) if callable(extra_words) else extra_words}"

    return Check(lambda v, c: check.test(v, c) and extra_test(v, c), allowed)


# ---------------------------------------------------------------- RecBole protocol keys
def metric_names(value):
    """``metrics`` as RecBole reads it: a name or a list of names."""
    return [value] if isinstance(value, str) else value


def _metrics_ok(value, config):
    names = metric_names(value)
    if not isinstance(names, list) or not names or not all(isinstance(m, str) for m in names):
        return False
    kinds = {metric_types.get(m.lower()) for m in names}
    return None not in kinds and len(kinds) == 1  # RecBole refuses ranking + value metrics


def _topk_values(config):
    topk = config.get("topk")
    return [topk] if is_int(topk) else topk


def computed_metrics(config):
    """The result keys RecBole will compute: ``ndcg@10`` for top-k metrics, ``auc`` else."""
    out = []
    for name in metric_names(config["metrics"]):
        name = name.lower()
        if {"rec.topk", "rec.items"} & set(metric_information[name]):
            out += [f"{name}@{k}" for k in _topk_values(config)]
        else:
            out.append(name)
    return out


def _eval_mode_ok(mode):
    if mode in ("full", "labeled"):
        return True
    return (isinstance(mode, str) and mode[:3] in ("uni", "pop") and mode[3:].isdigit()
            and int(mode[3:]) > 0)


def eval_modes(eval_args):
    """``eval_args.mode`` as RecBole reads it: one mode, or a {valid, test} mapping."""
    mode = eval_args.get("mode", "full")
    return list(mode.values()) if isinstance(mode, dict) else [mode]


def _eval_args_ok(value, config):
    if not isinstance(value, dict):
        return False
    mode, split = value.get("mode", "full"), value.get("split", {"RS": None})
    if isinstance(mode, dict) and not set(mode) <= {"valid", "test"}:
        return False
    if not isinstance(split, dict) or len(split) != 1 or not set(split) <= {"RS", "LS"}:
        return False
    if "LS" in split and split["LS"] != "valid_and_test":  # runs select on valid, then test
        return False
    sequential = getattr(config.get("MODEL_TYPE"), "name", None) == "SEQUENTIAL"
    value_metrics = metric_types.get(metric_names(config["metrics"])[0].lower()).name == "VALUE"
    return (all(_eval_mode_ok(m) for m in eval_modes(value))
            and value.get("order", "RO") in (("TO",) if sequential else ("RO", "TO"))
            and value.get("group_by", "user") in ("user", "none", None)
            and (not value_metrics or "full" not in eval_modes(value)))


def _neg_sample_args_ok(value, config):
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    distribution = value.get("distribution", "uniform")
    if distribution in (None, "none", "None"):
        return True
    return distribution in ("uniform", "popularity") and is_int(value.get("sample_num", 1)) \
        and value.get("sample_num", 1) >= 1


PROTOCOL_RULES = {
    "metrics": Check(_metrics_ok, "a RecBole metric name or a list of them, all ranking metrics ("
                     + ", ".join(sorted(m for m, t in metric_types.items() if t.name == "RANKING"))
                     + ") or all value metrics (" + ", ".join(sorted(
                         m for m, t in metric_types.items() if t.name == "VALUE")) + "); any case"),
    "topk": any_of(POSITIVE_INT, list_of(POSITIVE_INT, "a non-empty list of positive integers", non_empty=True)),
    "valid_metric": Check(
        lambda v, c: isinstance(v, str) and v.lower() in computed_metrics(c),
        lambda c: "one of the computed metrics " + ", ".join(computed_metrics(c))
                  + " (any case; set metrics and topk to compute others)"),
    "eval_args": Check(_eval_args_ok, "a mapping with split {RS: [...]} or {LS: valid_and_test}, mode " + EVAL_MODES
                       + " (or {valid: ..., test: ...}), order RO or TO (TO for sequential models), group_by "
                       "user or none; value metrics need mode labeled"),
    "learning_rate": POSITIVE_NUMBER,
    "weight_decay": number_in(0),
    "learner": one_of(*LEARNERS, case_sensitive=False),
    "train_batch_size": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "epochs": POSITIVE_INT,
    "stopping_step": NON_NEGATIVE_INT,
    "eval_step": NON_NEGATIVE_INT,
    "MAX_ITEM_LIST_LENGTH": POSITIVE_INT,
    "seed": Check(lambda v, c: is_int(v), "an integer"),
    "cold_item_ratio": PROBABILITY,
    "train_neg_sample_args": Check(_neg_sample_args_ok, "~ or {distribution: uniform or popularity, "
                                   "sample_num: a positive integer}"),
    "reproducibility": BOOLEAN,
    "show_progress": BOOLEAN,
    "repeatable": BOOLEAN,
    "log_wandb": BOOLEAN,
    "use_gpu": BOOLEAN,
    "state": optional(one_of("info", "debug", "warning", "error", "critical", case_sensitive=False)),  # ~: INFO
    # RecBole makes it with makedirs: an empty path or a file there was an OS traceback
    "checkpoint_dir": Check(lambda v, c: isinstance(v, str) and v.strip() != "" and not os.path.isfile(v),
                            "a folder path (not empty, not an existing file)"),
}


# ---------------------------------------------------------------- LLMMTL's keys
def _template_ok(value, config):
    """Each part has exactly one ``{}`` (literal braces are written ``{{``/``}}``): the field's
    value goes in it; ``{0}``/``{name}`` or a second ``{}`` would fail or repeat at render time."""
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    for fmt in value.values():
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None] \
                if isinstance(fmt, str) else None
        except ValueError:  # a lone "{" or "}"
            return False
        if fields != [""]:
            return False
    return True


def _task_weights_ok(value, config):
    if not isinstance(value, dict) or not set(value) <= set(TASKS):
        return False
    if not all(is_number(w) for w in value.values()):
        return False
    return value.get("behavior", 0) > 0 and all(w >= 0 for w in value.values())


def _neg_samples_ok(value, config):
    """``neg_samples`` is only read by ``behavior_loss: bce``, where 0 means an empty
    negative set: its loss is a NaN (the mean of nothing)."""
    return is_int(value) and (value >= 1 or config.get("behavior_loss") != "bce")


def _loss_type_ok(value, config):
    return value in (None, "CE")


FIELD_LIST = optional(list_of(TEXT, "a list of field names"))
CLUSTER_SIZES = optional(list_of(POSITIVE_INT, "a list of cluster counts (positive integers); [] = none"))
TEMPLATE = Check(_template_ok, "~ or a mapping field -> string with exactly one {} placeholder "
                 "(write {{ and }} for literal braces), e.g. {brand: 'Brand: {}'}")

LLMMTL_RULES = {
    # shared language model
    "llm_path": Check(lambda v, c: isinstance(v, str) and v.strip() != "",
                      "'default' or a HuggingFace model folder or hub name"),
    "llm_mode": one_of("frozen", "lora", "full"),
    "llm_pooling": one_of(*POOLINGS),
    "llm_max_length": POSITIVE_INT,
    "llm_dtype": one_of("auto", *DTYPES),
    "llm_batch_tokens": POSITIVE_INT,
    "text_cache_dir": optional(TEXT),
    "lora_r": POSITIVE_INT,
    "lora_alpha": POSITIVE_NUMBER,
    "lora_dropout": PROBABILITY,
    "lora_target_modules": optional(any_of(TEXT, list_of(TEXT, "a list of module names"))),
    "tuned_items_per_step": optional(POSITIVE_INT),
    # text and tags
    "use_text": BOOLEAN,
    "item_text_fields": _cross(FIELD_LIST, lambda v, c: bool(v) or not c.get("use_text"),
                               "non-empty when use_text is True: the item fields read as text "
                               "(set it in the dataset YAML, or use_text: False)"),
    "item_text_template": TEMPLATE,
    "item_text_views": optional(one_of("joint", "fields")),
    "user_text_fields": FIELD_LIST,
    "user_text_template": TEMPLATE,
    "tag_fields": FIELD_LIST,
    "text_separator": TEXT,
    "tag_min_count": NON_NEGATIVE_INT,
    "tag_max_share": number_in(0, 1, low_open=True, high_open=False),
    # user text and auxiliary-task targets
    "user_text": any_of(BOOLEAN, one_of("auto")),
    "user_history_items": NON_NEGATIVE_INT,
    "user_recent_titles": BOOLEAN,
    "user_text_max_length": POSITIVE_INT,
    "user_reviews": BOOLEAN,
    "profile_horizon": POSITIVE_INT,
    "text_clusters": CLUSTER_SIZES,
    "behavior_clusters": CLUSTER_SIZES,
    # architecture
    "hidden_size": POSITIVE_INT,
    "n_layers": POSITIVE_INT,
    "n_heads": _cross(POSITIVE_INT, lambda v, c: c.get("hidden_size", 0) % v == 0,
                      lambda c: f"and hidden_size ({c.get('hidden_size')}) must be divisible by it"),
    "inner_size": POSITIVE_INT,
    "hidden_dropout_prob": PROBABILITY,
    "adaptor_dropout_prob": PROBABILITY,
    "n_experts": POSITIVE_INT,
    "item_id_embedding": _cross(BOOLEAN, lambda v, c: v or c.get("use_text"),
                                "and True when use_text is False (items need text or an ID vector)"),
    "scorer": one_of("mlp", "dot"),
    "normalize_scores": BOOLEAN,
    "temperature": POSITIVE_NUMBER,
    # losses
    "behavior_loss": one_of("ce", "bce"),
    "behavior_items": one_of("train", "all"),
    "neg_samples": Check(_neg_samples_ok, "an integer, >= 1 with behavior_loss: bce"),
    "label_smoothing": PROBABILITY,
    "task_weights": Check(_task_weights_ok, "a mapping of " + ", ".join(TASKS) + " to numbers, "
                          "behavior > 0 (the ranking task), the others >= 0 (0 or absent removes a task)"),
    "task_weighting": one_of("fixed", "uncertainty"),
    "train_all_positions": BOOLEAN,
    "train_window_stride": optional(_cross(POSITIVE_INT, lambda v, c: v <= c.get("MAX_ITEM_LIST_LENGTH", v),
                                           lambda c: f"at most MAX_ITEM_LIST_LENGTH ({c.get('MAX_ITEM_LIST_LENGTH')})")),
    "warm_up_step": NON_NEGATIVE_INT,
    # RecBole habits that LLMMTL does not follow
    "train_neg_sample_args": Check(lambda v, c: v is None or (
        isinstance(v, dict) and v.get("distribution") in (None, "none", "None")),
        "~: LLMMTL draws its negatives itself (behavior_loss: bce, neg_samples)"),
    "loss_type": Check(_loss_type_ok, "~ or CE: LLMMTL's loss is set by behavior_loss "
                       "(ce: softmax over items; bce: sampled negatives, neg_samples)"),
}

MODEL_RULES = {"LLMMTL": LLMMTL_RULES}

@functools.lru_cache(maxsize=None)
def plugin_only_keys():
    """Keys of our models' rules that no RecBole YAML defines (``item_text_views``,
    ``task_weights``...): RecBole's models never read them, so a change in one leaves a
    RecBole model's run as it was. A key RecBole defines too (``hidden_size``) is not here."""
    import recbole

    recbole_keys = set()
    for folder, _, files in os.walk(os.path.join(os.path.dirname(recbole.__file__), "properties")):
        for name in files:
            if name.endswith(".yaml"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    recbole_keys.update(re.findall(r"^(\w+)\s*:", f.read(), flags=re.M))
    return frozenset(k for rules in MODEL_RULES.values() for k in rules) - recbole_keys


def keys_not_read_by(model_name):
    """Config keys that ``model_name`` never reads: none for our models, ours for RecBole's."""
    return frozenset() if model_name in MODEL_RULES else plugin_only_keys()


# Keys that change nothing under some settings of another key: LLMMTL reads the fine-tuning
# keys only when its language model is fine-tuned.
FINE_TUNING_KEYS = frozenset({"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "tuned_items_per_step"})


# Keys that set what a run costs (time, memory), not what it computes, where inert_keys says so:
# a changed one does not make a run stale, but the configurations table shows it beside the
# cost columns.
COST_KEYS = frozenset({"eval_batch_size"})
# RecBole models whose full ranking draws random numbers per batch (Random; DiffRec's noise)
BATCH_RANDOM_MODELS = frozenset({"Random", "DiffRec", "LDiffRec"})


def full_ranking(config):
    """Whether valid and test rank all items (RecBole's ``eval_args.mode`` ``full``, its default)."""
    mode = (config.get("eval_args") or {}).get("mode", "full")
    return all(m == "full" for m in (mode.values() if isinstance(mode, dict) else [mode]))


def inert_keys(model_name, config):
    """Keys that ``model_name`` reads but that change nothing under ``config`` (a mapping)."""
    inert = set()
    # "frozen", not the YAML's default: a config recorded before llm_mode existed ran a frozen model
    if model_name == "LLMMTL" and config.get("llm_mode", "frozen") == "frozen":
        inert |= FINE_TUNING_KEYS
    # full ranking scores each user on its own: how many users share an evaluation batch sets
    # memory and speed, not a metric (sampled ranking not checked, so it counts there)
    if full_ranking(config) and model_name not in BATCH_RANDOM_MODELS:
        inert |= COST_KEYS
    return frozenset(inert)


# Keys added after runs were recorded, each with the value that reproduces what those runs did:
# a recorded config input without the key ran that way, so it is neither stale nor rebuilt
# as something else (a missing key would otherwise read as None).
ADDED_KEYS = {"LLMMTL": {"behavior_items": "train"}}


def with_added_keys(model_name, config_input):
    """A recorded ``config_input`` (a mapping) with each key added since at the value it ran with."""
    return {**ADDED_KEYS.get(model_name, {}), **config_input}


def keys_without_effect(model_name, *configs):
    """Keys on which ``configs`` (mappings) may differ without ``model_name`` computing
    anything different: keys it never reads, and keys inert under every one of them."""
    inert = frozenset.intersection(*(inert_keys(model_name, c) for c in configs)) if configs else frozenset()
    return keys_not_read_by(model_name) | inert


# Keys that decide a model's weights (their shapes, or how they are read): a checkpoint
# resumed under other values either fails to load or, worse, loads and means something
# else (n_heads 2 -> 4 keeps every shape). RecBole's models share these names.
ARCHITECTURE_KEYS = ("MAX_ITEM_LIST_LENGTH", "embedding_size", "hidden_size", "inner_size", "n_layers",
                     "num_layers", "n_heads", "hidden_act", "selected_features", "pooling_mode")
MODEL_ARCHITECTURE_KEYS = {
    "LLMMTL": ("n_experts", "use_text", "item_id_embedding", "scorer", "llm_path", "llm_mode",
               "llm_pooling", "llm_max_length", "lora_r", "lora_target_modules", "item_text_fields",
               "item_text_template", "item_text_views", "user_text_fields", "user_text_template", "text_separator",
               "tag_fields", "tag_min_count", "tag_max_share", "task_weighting", "user_text",
               "user_recent_titles", "user_reviews", "user_history_items", "user_text_max_length",
               "profile_horizon", "text_clusters", "behavior_clusters"),
}


def architecture_keys(model_name):
    return ARCHITECTURE_KEYS + MODEL_ARCHITECTURE_KEYS.get(model_name, ())


def rules_for(model_name):
    """Protocol rows, then the model's own (a model row for a key replaces the protocol's)."""
    return {**PROTOCOL_RULES, **MODEL_RULES.get(model_name, {})}


def _allowed(check, config):
    return check.allowed(config) if callable(check.allowed) else check.allowed


def validate_config(config, model_name):
    """Raise :class:`ConfigError` for the first key of ``config`` (a merged dict) that breaks
    its rule. A key the config does not hold is checked as ``~`` (RecBole reads it as None)."""
    for key, check in rules_for(model_name).items():
        value = config.get(key)
        if not check.test(value, config):
            raise ConfigError(f"{key} {value!r} is not allowed: expected {_allowed(check, config)}")
