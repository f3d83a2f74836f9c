"""Item/user text rendering on real data, and the shared language model."""

import pytest
import torch

from recbole_llm_mtl.config import build_config
from recbole_llm_mtl.errors import ConfigError
from recbole_llm_mtl.text.encoder import SharedLanguageModel, resolve_dtype
from recbole_llm_mtl.text.templates import render_texts, template_from_config


@pytest.fixture(scope="module")
def ml100k():
    from recbole.data import create_dataset

    config = build_config("LLMMTL", "ml-100k", config_dict={"show_progress": False})
    ds = create_dataset(config)
    ds.build()  # features become RecBole Interactions, as the model sees them
    return config, ds


def test_ml100k_user_and_item_text(ml100k):
    config, ds = ml100k
    users, _ = render_texts(ds, ds.user_feat, template_from_config(config["user_text_fields"], config["user_text_template"]),
                            config["text_separator"], "user")
    u1 = ds.token2id("user_id", "1")
    assert users[u1] == "Age 24. gender M. occupation: technician"
    items, n_empty = render_texts(ds, ds.item_feat, template_from_config(config["item_text_fields"], config["item_text_template"]),
                                  config["text_separator"], "item")
    toy = items[ds.token2id("item_id", "1")]
    assert toy == "Toy Story. (1995). Genres: Animation Children's Comedy"
    assert users[0] == "" and items[0] == ""


def test_empty_fields_are_skipped(tiny_root):
    from recbole.data import create_dataset

    config = build_config("LLMMTL", "amazon", config_dict={"data_path": tiny_root})
    ds = create_dataset(config)
    ds.build()
    template = template_from_config(config["item_text_fields"], config["item_text_template"])
    texts, n_empty = render_texts(ds, ds.item_feat, template, ". ", "item")
    no_cat = [t for t in texts[1:] if "Category:" not in t]
    assert no_cat and all(t and not t.endswith(". ") and "Category: ." not in t for t in no_cat)
    assert n_empty == 0


def test_encoder_length_sorted_batches_match_plain_loop():
    lm = SharedLanguageModel()
    texts = ["a short one", "", "a much longer product title with brand and category words " * 3, "mid length text here"]
    fast = lm.encode(texts, batch_tokens=64, show_progress=False)
    with torch.no_grad():
        for i, t in enumerate(texts):
            ids, mask = lm.pad(lm.tokenize([t]))
            assert torch.allclose(fast[i], lm(ids, mask)[0], atol=1e-5)
    assert lm.pooling == "mean" and fast.shape == (4, 384)


def test_long_text_is_truncated():
    lm = SharedLanguageModel(max_length=16)
    out = lm.encode(["word " * 5000], show_progress=False)
    assert out.shape == (1, 384) and torch.isfinite(out).all()


def test_bad_llm_path_and_offline_name():
    with pytest.raises(ConfigError, match="does not exist"):
        SharedLanguageModel("/definitely/not/here")
    with pytest.raises(ConfigError, match="offline"):
        SharedLanguageModel("some-org/not-a-cached-model-xyz")


def test_bfloat16_encoding_matches_float32_and_auto_dtype_rules():
    texts = ["Mr. Heater portable propane heater. Brand: Mr. Heater", "digital caliper 6 inch", "nitrile gloves, large"]
    exact = SharedLanguageModel(dtype="float32").encode(texts, show_progress=False)
    fast = SharedLanguageModel(dtype="bfloat16").encode(texts, show_progress=False)
    assert fast.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(exact, fast).min() > 0.999
    # a trained language model keeps float32 weights whatever the hardware
    assert resolve_dtype("auto", "cpu", trainable=True) == "float32"
    assert resolve_dtype("auto", "cpu") in ("float32", "bfloat16")
    assert resolve_dtype("float16", "cpu") == "float16"
    with pytest.raises(ConfigError, match="llm_dtype 'fp8'"):
        resolve_dtype("fp8")
