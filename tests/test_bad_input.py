"""Bad input gives one clear error naming the file/field and the fix; nothing is lost."""

import os
import shutil

import pytest
import torch

from conftest import build
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
    _, train, _, _, model = build("LLMMTL", tiny_root, cache_dir)
    with torch.no_grad():
        model.user_head.weight.fill_(float("nan"))
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


def test_unwritable_cache_dir_still_trains(tiny_root, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    caplog.set_level("WARNING")
    _, train, _, _, model = build("LLMMTL", tiny_root, str(blocker / "cache"), task_weights={"behavior": 1.0})
    assert "not writable" in caplog.text
    assert torch.isfinite(model.calculate_loss(next(iter(train)))[0])
