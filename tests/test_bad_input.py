"""Bad input gives one clear error naming the file/field and the fix; nothing is lost."""

import os
import shutil

import pytest
import torch

from conftest import ALL_TASKS, build
from recbole_llm_mtl.config import build_config
from recbole_llm_mtl.errors import ConfigError, DataError, TrainingError
from recbole_llm_mtl.trainer import load_checkpoint


@pytest.fixture()
def copy_root(tiny_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(os.path.join(tiny_root, "amazon"), root / "amazon")
    return root


def _edit(path, fn):
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(fn(lines)))


def test_header_without_types(copy_root):
    _edit(copy_root / "amazon" / "amazon.item", lambda l: [b"item_id\ttitle\tcategories\tbrand"] + l[1:])
    with pytest.raises(DataError, match=r"amazon.item: header columns .*item_id.* lack a RecBole type suffix"):
        build_config("LLMMTL", "amazon", config_dict={"data_path": str(copy_root)})


def test_non_utf8_bytes_named_with_line(copy_root):
    _edit(copy_root / "amazon" / "amazon.item", lambda l: l[:3] + [l[3] + b" caf\xe9"] + l[4:])
    with pytest.raises(DataError, match=r"amazon.item, line 4: bytes .* not valid utf-8"):
        build_config("LLMMTL", "amazon", config_dict={"data_path": str(copy_root)})


def test_duplicate_item_ids(copy_root):
    _edit(copy_root / "amazon" / "amazon.item", lambda l: l[:5] + [l[2]] + l[5:])
    with pytest.raises(DataError, match=r"duplicate item_id values '.*' \(line 6\)"):
        build_config("LLMMTL", "amazon", config_dict={"data_path": str(copy_root)})


def test_items_without_item_row_and_empty_text_still_train(copy_root, cache_dir, caplog):
    # drop 5 item rows and blank the text of 3 others: those items get a zero text vector
    def fn(lines):
        kept = lines[:1] + lines[6:]
        for k in (1, 2, 3):
            kept[k] = kept[k].split(b"\t")[0] + b"\t\t\t"
        return kept
    _edit(copy_root / "amazon" / "amazon.item", fn)
    caplog.set_level("INFO")
    _, train, _, _, model = build("LLMMTL", str(copy_root), cache_dir)
    assert "items have no text" in caplog.text
    losses = model.calculate_loss(next(iter(train)))
    assert all(torch.isfinite(l) for l in losses)


def test_nan_loss_names_the_task(tiny_root, cache_dir):
    _, train, _, _, model = build("LLMMTL", tiny_root, cache_dir, task_weights=ALL_TASKS)
    with torch.no_grad():
        model.tasks["user_profile"].head.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="user_profile loss became nan at training step 1"):
        model.calculate_loss(next(iter(train)))


def test_unknown_key_warns_with_closest(tiny_root, caplog):
    caplog.set_level("WARNING")
    build_config("LLMMTL", "amazon", config_dict={"data_path": tiny_root}, cmd_overrides={"learnig_rate": "0.01"})
    assert "'learnig_rate'" in caplog.text and "did you mean 'learning_rate'" in caplog.text


def test_foreign_or_missing_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint(str(tmp_path / "none.pth"))
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="not written by recbole-llm-mtl"):
        load_checkpoint(str(tmp_path / "other.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a recbole-llm-mtl checkpoint or is corrupt"):
        load_checkpoint(str(tmp_path / "junk.pth"))
    # an empty file (a full disk) was an IndexError inside this very check; a folder was "not found"
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"empty.pth' is empty \(0 bytes\)"):
        load_checkpoint(str(tmp_path / "empty.pth"))
    with pytest.raises(ConfigError, match="is a folder: give a .pth file in it"):
        load_checkpoint(str(tmp_path))


def test_unwritable_cache_dir_still_trains(tiny_root, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    caplog.set_level("WARNING")
    _, train, _, _, model = build("LLMMTL", tiny_root, str(blocker / "cache"), task_weights={"behavior": 1.0},
                                         user_text=False)
    assert "not writable" in caplog.text
    assert torch.isfinite(model.calculate_loss(next(iter(train)))[0])


def test_missing_inter_file(tmp_path):
    (tmp_path / "amazon").mkdir()
    with pytest.raises(ConfigError, match=r"amazon.inter' not found"):
        build_config("SASRec", "amazon", config_dict={"data_path": str(tmp_path)})


def test_single_interaction_users_are_dropped_by_recbole(copy_root, cache_dir):
    """A user with one interaction has no (history -> target) pair: RecBole's sequential
    augmentation makes no row for them, so they are in no split (stated in docs/reliability.md)."""
    with open(copy_root / "amazon" / "amazon.inter", "a") as f:
        f.write("LONELY_USER\tB00TNNWMXI\t0\n")
    _, train, valid, test, model = build("LLMMTL", str(copy_root), cache_dir)
    uid = train._dataset.token2id("user_id", "LONELY_USER")
    for split in (train, valid, test):
        assert uid not in split._dataset.inter_feat["user_id"].tolist()
    assert all(torch.isfinite(l) for l in model.calculate_loss(next(iter(train))))


def test_out_of_memory_while_encoding_retries_smaller(monkeypatch, caplog):
    """Fault injection: the first large batch raises CUDA OOM; the pass halves its token
    budget, logs it, and returns the same vectors as an undisturbed pass."""
    from recbole_llm_mtl.text.encoder import SharedLanguageModel

    lm = SharedLanguageModel()
    texts = [f"product {i} with a fairly long title for batching" for i in range(64)]
    expected = lm.encode(texts, batch_tokens=4096, show_progress=False)
    real_forward = type(lm).forward
    calls = {"n": 0}

    def flaky(self, input_ids, attention_mask):
        calls["n"] += 1
        if input_ids.numel() > 256 and calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_forward(self, input_ids, attention_mask)

    monkeypatch.setattr(type(lm), "forward", flaky)
    caplog.set_level("WARNING")
    got = lm.encode(texts, batch_tokens=4096, show_progress=False)
    assert "out of memory while encoding; retrying with llm_batch_tokens=2048" in caplog.text
    assert torch.allclose(got, expected, atol=1e-5)


def test_cache_of_another_model_setting_is_not_used(tiny_root, tmp_path):
    cache = str(tmp_path / "cache")
    one_text = {"item_text_views": "joint"}  # one cache file per setting
    _, _, _, _, a = build("LLMMTL", tiny_root, cache, task_weights={"behavior": 1.0}, user_text=False, **one_text)
    _, _, _, _, b = build("LLMMTL", tiny_root, cache, task_weights={"behavior": 1.0}, user_text=False,
                          llm_max_length=8, **one_text)
    assert len(os.listdir(cache)) == 2 and not torch.allclose(a.item_text, b.item_text)


def test_at_most_one_item_with_text_is_named_not_a_nan_loss(copy_root, cache_dir, workdir, capsys):
    """Text vectors are standardised over the items that have text: with one such item the
    spread is undefined (it used to end in a NaN loss blamed on the learning rate)."""
    def one_text(lines):
        return lines[:2] + [line.split(b"\t")[0] + b"\t\t\t" for line in lines[2:] if line]
    _edit(copy_root / "amazon" / "amazon.item", one_text)
    from recbole_llm_mtl.quick_start import main

    code = main(["--model=LLMMTL", "--dataset=amazon", f"--data_path={copy_root}", f"--text_cache_dir={cache_dir}",
                 "--epochs=1", "--show_progress=False", "--state=ERROR"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: only 1 item(s) have text") and "use_text: False" in err[-1]
    assert not list(workdir.glob("saved/**/*.pth")), "a checkpoint was written"


def test_field_view_with_text_on_one_item_is_named(copy_root, cache_dir):
    """``item_text_views: fields`` standardises each field over the items that have it: a
    field present on one item only is named, with the two ways out."""
    def one_brand(lines):
        rows = [line.split(b"\t") for line in lines[1:] if line]
        rows = [r[:3] + [r[3] if k == 0 else b""] for k, r in enumerate(rows)]
        return lines[:1] + [b"\t".join(r) for r in rows]
    _edit(copy_root / "amazon" / "amazon.item", one_brand)
    with pytest.raises(DataError, match=r"item text field 'brand' has text on 1 item\(s\): it cannot be a view "
                                        r"of its own .* or use item_text_views: joint"):
        build("LLMMTL", str(copy_root), cache_dir, item_text_views="fields")
