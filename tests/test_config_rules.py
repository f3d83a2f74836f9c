"""Every bad config value stops before any data is read or any model trains: one line
naming the key, the value and what is allowed (ConfigError; the CLI exits with code 2)."""

import math
import os
import re

import pytest
import yaml

from recbole_llm_mtl.config import PROPERTIES_DIR, build_config
from recbole_llm_mtl.config_rules import LLMMTL_RULES, PROTOCOL_RULES
from recbole_llm_mtl.errors import ConfigError
from recbole_llm_mtl.quick_start import main

UNIFORM_1 = {"distribution": "uniform", "sample_num": 1}

# (model, overrides, the start of the one-line message). Before the validator, each of these
# built a Config without complaint (or failed inside RecBole with a bare exception) and then
# failed in the model, after an epoch, or as a NaN loss blaming the learning rate.
BAD = [
    ("LLMMTL", {"metrics": ["Recal", "NDCG"]}, "metrics ['Recal', 'NDCG'] is not allowed: expected a RecBole metric"),
    ("LLMMTL", {"metrics": ["NDCG", "AUC"]}, "metrics ['NDCG', 'AUC'] is not allowed"),
    ("SASRec", {"topk": [10, 0]}, "topk [10, 0] is not allowed: expected a positive integer or a non-empty list"),
    ("SASRec", {"topk": "ten"}, "topk 'ten' is not allowed"),
    ("LLMMTL", {"valid_metric": "NDCG@20"}, "valid_metric 'NDCG@20' is not allowed: expected one of the computed "
                                            "metrics recall@10, recall@50, ndcg@10"),
    ("LLMMTL", {"valid_metric": "NDCG"}, "valid_metric 'NDCG' is not allowed"),
    ("SASRec", {"valid_metric": 10}, "valid_metric 10 is not allowed"),
    ("SASRec", {"learning_rate": 0}, "learning_rate 0 is not allowed: expected a number > 0"),
    ("LLMMTL", {"learning_rate": math.inf}, "learning_rate inf is not allowed"),
    ("LLMMTL", {"learning_rate": "fast"}, "learning_rate 'fast' is not allowed"),
    ("SASRec", {"weight_decay": -0.1}, "weight_decay -0.1 is not allowed: expected a number >= 0"),
    ("SASRec", {"learner": "adamm"}, "learner 'adamm' is not allowed: expected one of adam, adamw"),
    ("LLMMTL", {"train_batch_size": 0}, "train_batch_size 0 is not allowed: expected a positive integer"),
    ("SASRec", {"eval_batch_size": 25.5}, "eval_batch_size 25.5 is not allowed: expected a positive integer"),
    ("LLMMTL", {"epochs": 0}, "epochs 0 is not allowed: expected a positive integer"),
    ("LLMMTL", {"epochs": True}, "epochs True is not allowed"),
    ("LLMMTL", {"stopping_step": -1}, "stopping_step -1 is not allowed: expected an integer >= 0"),
    ("LLMMTL", {"MAX_ITEM_LIST_LENGTH": 0}, "MAX_ITEM_LIST_LENGTH 0 is not allowed: expected a positive integer"),
    ("SASRec", {"cold_item_ratio": 1.0}, "cold_item_ratio 1.0 is not allowed: expected a probability in [0, 1)"),
    ("SASRec", {"eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "uni0"}},
     "eval_args {'split': {'LS': 'valid_and_test'}, 'order': 'TO', 'mode': 'uni0'} is not allowed: expected a mapping"),
    ("LLMMTL", {"eval_args": {"split": {"LO": "valid_and_test"}, "order": "TO", "mode": "full"}},
     "eval_args {'split': {'LO': 'valid_and_test'}, 'order': 'TO', 'mode': 'full'} is not allowed"),
    ("SASRec", {"show_progress": "yes"}, "show_progress 'yes' is not allowed: expected True or False"),
    ("LLMMTL", {"temperature": 0}, "temperature 0 is not allowed: expected a number > 0"),
    ("LLMMTL", {"behavior_loss": "bce", "neg_samples": 0},
     "neg_samples 0 is not allowed: expected an integer, >= 1 with behavior_loss: bce"),
    ("LLMMTL", {"hidden_dropout_prob": 1.0}, "hidden_dropout_prob 1.0 is not allowed: expected a probability in [0, 1)"),
    ("LLMMTL", {"adaptor_dropout_prob": -0.1}, "adaptor_dropout_prob -0.1 is not allowed"),
    ("LLMMTL", {"lora_dropout": 1.5}, "lora_dropout 1.5 is not allowed"),
    ("LLMMTL", {"label_smoothing": 1.0}, "label_smoothing 1.0 is not allowed: expected a probability in [0, 1)"),
    ("LLMMTL", {"n_heads": 0}, "n_heads 0 is not allowed: expected a positive integer"),
    ("LLMMTL", {"hidden_size": 30, "n_heads": 4},
     "n_heads 4 is not allowed: expected a positive integer, and hidden_size (30) must be divisible by it"),
    ("LLMMTL", {"hidden_size": 0}, "hidden_size 0 is not allowed: expected a positive integer"),
    ("LLMMTL", {"n_layers": 0}, "n_layers 0 is not allowed"),
    ("LLMMTL", {"inner_size": -4}, "inner_size -4 is not allowed"),
    ("LLMMTL", {"n_experts": 0}, "n_experts 0 is not allowed"),
    ("LLMMTL", {"llm_max_length": 0}, "llm_max_length 0 is not allowed: expected a positive integer"),
    ("LLMMTL", {"llm_batch_tokens": 0}, "llm_batch_tokens 0 is not allowed"),
    ("LLMMTL", {"lora_r": 0}, "lora_r 0 is not allowed"),
    ("LLMMTL", {"lora_alpha": 0}, "lora_alpha 0 is not allowed: expected a number > 0"),
    ("LLMMTL", {"task_weights": {"behaviour": 1.0}},
     "task_weights {'behaviour': 1.0} is not allowed: expected a mapping of behavior, user_profile, item_semantics"),
    ("LLMMTL", {"task_weights": {"behavior": 0.0, "user_profile": 1.0}}, "task_weights {'behavior': 0.0"),
    ("LLMMTL", {"task_weights": {"behavior": 1.0, "user_profile": -1}}, "task_weights {'behavior': 1.0"),
    ("LLMMTL", {"task_weights": {"behavior": 1.0, "item_semantics": "0.1"}}, "task_weights {'behavior': 1.0"),
    ("LLMMTL", {"task_weights": [1.0, 0.1]}, "task_weights [1.0, 0.1] is not allowed"),
    ("LLMMTL", {"item_text_template": {"title": "{} and {}"}},
     "item_text_template {'title': '{} and {}'} is not allowed: expected ~ or a mapping field -> string with "
     "exactly one {} placeholder"),
    ("LLMMTL", {"item_text_template": {"brand": "Brand: {name}"}}, "item_text_template {'brand': 'Brand: {name}'}"),
    ("LLMMTL", {"item_text_template": {"brand": "Brand {"}}, "item_text_template {'brand': 'Brand {'}"),
    ("LLMMTL", {"user_text_template": {"age": "Age"}}, "user_text_template {'age': 'Age'} is not allowed"),
    ("LLMMTL", {"item_text_fields": []}, "item_text_fields [] is not allowed: expected ~ or a list of field names, "
                                         "non-empty when use_text is True"),
    ("LLMMTL", {"tag_fields": "categories"}, "tag_fields 'categories' is not allowed: expected ~ or a list"),
    ("LLMMTL", {"tag_min_count": -1}, "tag_min_count -1 is not allowed: expected an integer >= 0"),
    ("LLMMTL", {"tag_max_share": 0}, "tag_max_share 0 is not allowed: expected a number in (0, 1]"),
    ("LLMMTL", {"user_history_items": -1}, "user_history_items -1 is not allowed: expected an integer >= 0"),
    ("LLMMTL", {"user_recent_titles": "yes"}, "user_recent_titles 'yes' is not allowed: expected True or False"),
    ("LLMMTL", {"train_window_stride": 50}, "train_window_stride 50 is not allowed: expected ~ or a positive integer, "
                                            "at most MAX_ITEM_LIST_LENGTH (20)"),
    ("LLMMTL", {"user_text_max_length": 0}, "user_text_max_length 0 is not allowed: expected a positive integer"),
    ("LLMMTL", {"profile_horizon": 0}, "profile_horizon 0 is not allowed: expected a positive integer"),
    ("LLMMTL", {"text_clusters": [16, 0]}, "text_clusters [16, 0] is not allowed: expected ~ or a list of cluster "
                                           "counts"),
    ("LLMMTL", {"behavior_clusters": 16}, "behavior_clusters 16 is not allowed"),
    ("LLMMTL", {"user_reviews": "yes"}, "user_reviews 'yes' is not allowed: expected True or False"),
    ("LLMMTL", {"item_text_views": "field"}, "item_text_views 'field' is not allowed: expected ~ or one of joint, fields"),
    ("LLMMTL", {"llm_mode": "qlora"}, "llm_mode 'qlora' is not allowed: expected one of frozen, lora, full"),
    ("LLMMTL", {"llm_pooling": "meen"}, "llm_pooling 'meen' is not allowed: expected one of auto, mean, cls, last"),
    ("LLMMTL", {"llm_dtype": "fp16"}, "llm_dtype 'fp16' is not allowed: expected one of auto, float32"),
    ("LLMMTL", {"scorer": "cosine"}, "scorer 'cosine' is not allowed: expected one of mlp, dot"),
    ("LLMMTL", {"behavior_loss": "bpr"}, "behavior_loss 'bpr' is not allowed: expected one of ce, bce"),
    ("LLMMTL", {"behavior_items": "cold"}, "behavior_items 'cold' is not allowed: expected one of train, all"),
    ("LLMMTL", {"task_weighting": "learned"}, "task_weighting 'learned' is not allowed: expected one of fixed"),
    ("LLMMTL", {"use_text": "no"}, "use_text 'no' is not allowed: expected True or False"),
    ("LLMMTL", {"use_text": False, "item_id_embedding": False},
     "item_id_embedding False is not allowed: expected True or False, and True when use_text is False"),
    ("LLMMTL", {"normalize_scores": 1}, "normalize_scores 1 is not allowed"),
    ("LLMMTL", {"llm_path": ""}, "llm_path '' is not allowed"),
    # RecBole habits LLMMTL does not follow (they gave IndexError: Target -1 / were ignored)
    ("LLMMTL", {"train_neg_sample_args": UNIFORM_1},
     "train_neg_sample_args {'distribution': 'uniform', 'sample_num': 1} is not allowed: expected ~: "
     "LLMMTL draws its negatives itself (behavior_loss: bce, neg_samples)"),
    ("LLMMTL", {"loss_type": "BPR"}, "loss_type 'BPR' is not allowed: expected ~ or CE: LLMMTL's loss is set "
                                     "by behavior_loss"),
    ("SASRec", {"train_neg_sample_args": {"distribution": "uniform", "sample_num": 0}},
     "train_neg_sample_args {'distribution': 'uniform', 'sample_num': 0} is not allowed"),
    # each passed this table and failed later: RecBole's ValueError ("has to be 'TO'"), a
    # TypeError after a full epoch (no valid split), makedirs' FileExistsError / FileNotFoundError
    ("SASRec", {"eval_args": {"split": {"LS": "valid_and_test"}, "order": "RO", "mode": "full"}},
     "eval_args {'split': {'LS': 'valid_and_test'}, 'order': 'RO', 'mode': 'full'} is not allowed: expected "
     "a mapping with split {RS: [...]} or {LS: valid_and_test}"),
    ("BPR", {"eval_args": {"split": {"LS": "test_only"}, "order": "TO", "mode": "full"}},
     "eval_args {'split': {'LS': 'test_only'}, 'order': 'TO', 'mode': 'full'} is not allowed"),
    ("SASRec", {"checkpoint_dir": ""}, "checkpoint_dir '' is not allowed: expected a folder path (not empty"),
    ("SASRec", {"checkpoint_dir": __file__}, f"checkpoint_dir {__file__!r} is not allowed"),
    ("SASRec", {"state": "FOO"}, "state 'FOO' is not allowed: expected ~ or one of info, debug"),
    ("SASRec", {"use_gpu": "yes"}, "use_gpu 'yes' is not allowed: expected True or False"),
]


@pytest.mark.parametrize("model,overrides,message", BAD, ids=[f"{m}-{next(iter(o))}-{i}" for i, (m, o, _) in
                                                           enumerate(BAD)])
def test_bad_value_stops_with_one_line(model, overrides, message, tiny_root):
    with pytest.raises(ConfigError) as e:
        build_config(model, "amazon", config_dict={"data_path": tiny_root, **overrides})
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


GOOD = [
    {},
    {"state": None},                                  # RecBole's logger reads ~ as INFO
    {"valid_metric": "ndcg@50"},                      # RecBole compares metric names lowercased
    {"metrics": "NDCG", "topk": 10, "valid_metric": "NDCG@10"},  # RecBole's short forms
    {"metrics": ["Recall", "GAUC"], "valid_metric": "gauc"},     # a metric without @k
    {"neg_samples": 0},                               # only read by behavior_loss: bce
    {"hidden_dropout_prob": 0.0, "label_smoothing": 0.0, "cold_item_ratio": 0.0},
    {"item_text_template": {"title": "{{{}}}", "brand": "Brand: {}"}},  # literal braces
    {"use_text": False, "item_text_fields": []},
    {"task_weights": {"behavior": 2}},
    {"train_neg_sample_args": None, "loss_type": "CE"},
    {"eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": {"valid": "uni100", "test": "pop100"}}},
    {"lora_target_modules": ["query", "value"]},
]


@pytest.mark.parametrize("overrides", GOOD)
def test_good_values_pass(overrides, tiny_root):
    build_config("LLMMTL", "amazon", config_dict={"data_path": tiny_root, **overrides})


def test_model_keys_are_checked_for_their_model_only(tiny_root):
    """LLMMTL's keys mean nothing to SASRec; RecBole's sampled training args mean what
    RecBole says for its own models."""
    config = build_config("SASRec", "amazon", config_dict={
        "data_path": tiny_root, "temperature": 0, "scorer": "cosine", "loss_type": "BPR",
        "train_neg_sample_args": UNIFORM_1})
    assert config["train_neg_sample_args"]["sample_num"] == 1


def _yaml_keys(text):
    """Keys of a YAML file, the commented-out ``# key: value`` lines included."""
    commented = re.findall(r"^# ([a-z_]+): ", text, flags=re.MULTILINE)
    return set(yaml.safe_load(text) or {}) | set(commented)


def test_every_documented_key_has_a_rule():
    """A key added to properties/model/LLMMTL.yaml (or overall.yaml) needs a row in the
    rule table of recbole_llm_mtl/config_rules.py."""
    with open(os.path.join(PROPERTIES_DIR, "model", "LLMMTL.yaml"), encoding="utf-8") as f:
        model_keys = _yaml_keys(f.read())
    with open(os.path.join(PROPERTIES_DIR, "overall.yaml"), encoding="utf-8") as f:
        protocol_keys = set(yaml.safe_load(f))
    not_values = {"checkpoint_dir", "load_col", "valid_metric_bigger"}  # paths, RecBole-derived
    assert model_keys - set(LLMMTL_RULES) - set(PROTOCOL_RULES) == set()
    assert protocol_keys - set(PROTOCOL_RULES) - not_values == set()


@pytest.mark.parametrize("args,message", [
    (["--temperature=0"], "error: temperature 0 is not allowed: expected a number > 0"),
    (["--behavior_loss=bce", "--neg_samples=0"], "error: neg_samples 0 is not allowed"),
    (["--valid_metric=NDCG@20"], "error: valid_metric 'NDCG@20' is not allowed"),
    (["--metrics=['Recal']"], "error: metrics ['Recal'] is not allowed"),
    (["--train_neg_sample_args={'distribution':'uniform','sample_num':1}"],
     "error: train_neg_sample_args {'distribution': 'uniform', 'sample_num': 1} is not allowed: expected ~: "
     "LLMMTL draws its negatives itself"),
    (["--loss_type=BPR"], "error: loss_type 'BPR' is not allowed"),
    (["--task_weights={'behaviour':1.0}"], "error: task_weights {'behaviour': 1.0} is not allowed"),
    (["--nproc=2", "--learning_rate=-1"], "error: learning_rate -1 is not allowed"),  # before spawning ranks
])
def test_cli_exits_2_with_one_line(args, message, tiny_root, workdir, capsys):
    code = main(["--model=LLMMTL", "--dataset=amazon", f"--data_path={tiny_root}", "--epochs=1",
                 "--show_progress=False"] + args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith(message), err[-2000:]
    assert "Traceback" not in err
    assert not os.path.exists(workdir / "saved")  # stopped before anything was written
