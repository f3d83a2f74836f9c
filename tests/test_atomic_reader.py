"""The one atomic-file reader: quotes are text, a BOM is dropped, no row is silently lost or
repaired (real 300-user amazon slice, edited in tmp_path)."""

import os
import pathlib
import shutil
import warnings

import pytest

from conftest import tiny_overrides
from recbole_llm_mtl.build import load_dataset
from recbole_llm_mtl.config import build_config, get_model_class
from recbole_llm_mtl.errors import DataError
from recbole_llm_mtl.text.templates import render_texts, template_from_config


@pytest.fixture()
def root(tiny_root, tmp_path):
    shutil.copytree(os.path.join(tiny_root, "amazon"), tmp_path / "amazon")
    return tmp_path


def _lines(path):
    return path.read_text(encoding="utf-8").rstrip("\n").split("\n")


def _write(path, lines, prefix=""):
    path.write_text(prefix + "\n".join(lines) + "\n", encoding="utf-8")


def _dataset(root, model="LLMMTL", **extra):
    config = build_config(model, "amazon", config_dict={"data_path": str(root), "state": "ERROR", **extra})
    ds = load_dataset(config, get_model_class(model))
    ds.n_loaded = len(ds.inter_feat)  # interactions kept, before the split's augmentation
    ds.build()  # features become RecBole Interactions, as models see them
    return ds


def _title(ds, item):
    return " ".join(ds.field2id_token["title"][t] for t in ds.item_feat["title"][ds.token2id("item_id", item)] if t)


def test_quotes_are_ordinary_characters(root):
    """A title opened with `"` and closed two rows later: pandas merged the three rows
    into one title (3 items and their interactions vanished, exit 0)."""
    item = root / "amazon" / "amazon.item"
    lines = _lines(item)
    rows = [line.split("\t") for line in lines[1:]]
    rows[1][1] = '"Deluxe ' + rows[1][1]
    rows[3][1] = rows[3][1] + ' 12"'
    _write(item, lines[:1] + ["\t".join(r) for r in rows])
    ds = _dataset(root)
    assert ds.item_num - 1 == len(rows)
    assert _title(ds, rows[1][0]) == rows[1][1] and _title(ds, rows[3][0]) == rows[3][1]
    assert ds.n_loaded == len(_lines(root / "amazon" / "amazon.inter")) - 1


def test_unclosed_quote_is_read_as_text(root):
    """An unclosed `"` was a pandas ParserError traceback."""
    item = root / "amazon" / "amazon.item"
    lines = _lines(item)
    rows = [line.split("\t") for line in lines[1:]]
    rows[-1][1] = '"Ruler 12 steel'
    _write(item, lines[:1] + ["\t".join(r) for r in rows])
    assert _title(_dataset(root), rows[-1][0]) == '"Ruler 12 steel'


def test_utf8_bom_is_dropped(root):
    """A BOM before the header was `KeyError: 'user_id'` (for baselines too)."""
    for name in ("amazon.inter", "amazon.item"):
        path = root / "amazon" / name
        _write(path, _lines(path), prefix="\ufeff")
    for model in ("LLMMTL", "BPR"):
        ds = _dataset(root, model)
        assert ds.n_loaded == len(_lines(root / "amazon" / "amazon.inter")) - 1


@pytest.mark.parametrize("name, row, edit, message", [
    ("amazon.item", 4, lambda line: line + "\tstray value",
     r"amazon.item, line 5: 5 tab-separated values but the header has 4"),
    ("amazon.inter", 2, lambda line: line.rsplit("\t", 1)[0] + "\tyesterday",
     r"amazon.inter, line 3: timestamp value 'yesterday' is not a number"),
], ids=["too-many-values", "non-numeric-float"])
def test_malformed_row_names_file_and_line(root, name, row, edit, message):
    path = root / "amazon" / name
    lines = _lines(path)
    lines[row] = edit(lines[row])
    _write(path, lines)
    with pytest.raises(DataError, match=message):
        _dataset(root)


def test_missing_or_nan_timestamps_stop_with_the_lines(root):
    """RecBole filled them with the mean, silently reordering the user's sequence."""
    inter = root / "amazon" / "amazon.inter"
    lines = _lines(inter)
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t"
    lines[6] = lines[6].rsplit("\t", 1)[0] + "\tnan"
    lines[8] = lines[8].rsplit("\t", 1)[0] + "\tinf"
    _write(inter, lines)
    with pytest.raises(DataError, match=r"amazon.inter: 3 row\(s\) have a missing or non-finite timestamp "
                                        r"\(lines 4, 7, 9\)"):
        _dataset(root)


def test_items_without_item_row_keep_their_interactions(root, caplog):
    """RecBole dropped every interaction of an item missing from .item; they are kept as
    items without text, and counted."""
    item = root / "amazon" / "amazon.item"
    lines = _lines(item)
    dropped = {line.split("\t")[0] for line in lines[1:6]}
    _write(item, lines[:1] + lines[6:])
    inter = [line.split("\t") for line in _lines(root / "amazon" / "amazon.inter")[1:]]
    n_inter = sum(1 for r in inter if r[1] in dropped)
    caplog.set_level("WARNING")
    ds = _dataset(root)
    assert ds.n_loaded == len(inter)
    assert f"5 items of amazon.inter ({n_inter} interactions) have no row in amazon.item" in caplog.text
    config = build_config("LLMMTL", "amazon", config_dict={"data_path": str(root)})
    texts, n_empty = render_texts(ds, ds.item_feat, template_from_config(config["item_text_fields"], None),
                                  " ", "item")
    assert n_empty >= 5 and all(texts[ds.token2id("item_id", i)] == "" for i in dropped)


@pytest.mark.parametrize("normalize", [False, True])
def test_numeric_text_is_the_raw_value(root, normalize):
    """A missing price became the mean ("Price: 226.5"), and with normalize_all "Price: 0.5"."""
    item = root / "amazon" / "amazon.item"
    lines = _lines(item)
    prices = ["19.99", "", "433", "nan"]
    body = [line + "\t" + (prices[k] if k < len(prices) else "5") for k, line in enumerate(lines[1:])]
    _write(item, [lines[0] + "\tprice:float"] + body)
    extra = {"load_col": {"inter": ["user_id", "item_id", "timestamp"],
                          "item": ["item_id", "title", "categories", "brand", "price"]},
             "normalize_all": normalize}
    ds = _dataset(root, **extra)
    texts, _ = render_texts(ds, ds.item_feat, {"title": "{}", "price": "Price: {}"}, ". ", "item")
    ids = [ds.token2id("item_id", line.split("\t")[0]) for line in body[:4]]
    assert texts[ids[0]].endswith(". Price: 19.99") and texts[ids[2]].endswith(". Price: 433")
    assert "Price" not in texts[ids[1]] and "Price" not in texts[ids[3]]


def test_recbole_future_warnings_do_not_reach_the_user(tiny_root, cache_dir, workdir):
    """pandas/torch FutureWarnings raised inside RecBole (fillna(inplace=True), GradScaler)
    reached the terminal on every run and recommend call; they are filtered where we call
    RecBole, and a FutureWarning of our own still shows."""
    from recbole_llm_mtl.build import recbole_warnings_filtered
    from recbole_llm_mtl.quick_start import run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run("BPR", "amazon", config_dict=tiny_overrides(tiny_root, cache_dir))
        with recbole_warnings_filtered():
            warnings.warn("ours", FutureWarning)
    future = [str(w.message)[:80] for w in caught if issubclass(w.category, FutureWarning)]
    assert future == ["ours"]


def test_user_slice_keeps_whole_users_and_only_their_rows(tmp_path):
    """write_user_slice on RecBole's own ml-100k (.inter, .item, .user): the first users in file
    order with every interaction of theirs, their .user rows and the items they touched."""
    import recbole

    from recbole_llm_mtl.data.atomic import write_user_slice

    src = os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")
    kept = write_user_slice(src, str(tmp_path / "ml-100k"), 25)
    inter = [r.split("\t") for r in _lines(tmp_path / "ml-100k" / "ml-100k.inter")[1:]]
    full = [r.split("\t") for r in _lines(pathlib.Path(src) / "ml-100k.inter")[1:]]
    first = list(dict.fromkeys(r[0] for r in full))[:25]
    assert kept == len(inter) and {r[0] for r in inter} == set(first)
    assert sorted(map(tuple, inter)) == sorted(tuple(r) for r in full if r[0] in set(first))
    users = [r.split("\t")[0] for r in _lines(tmp_path / "ml-100k" / "ml-100k.user")[1:]]
    assert sorted(users) == sorted(first)
    items = {r.split("\t")[0] for r in _lines(tmp_path / "ml-100k" / "ml-100k.item")[1:]}
    assert items == {r[1] for r in inter}
    before = (tmp_path / "ml-100k" / "ml-100k.inter").read_text()
    with pytest.raises(DataError, match="ml-100k.inter.* already exist"):
        write_user_slice(src, str(tmp_path / "ml-100k"), 5)
    assert (tmp_path / "ml-100k" / "ml-100k.inter").read_text() == before
    with pytest.raises(DataError, match="nothing to slice"):
        write_user_slice(str(tmp_path), str(tmp_path / "out"), 5, name="missing")


def _rename(old, new):
    return lambda lines: [lines[0].replace(old, new, 1)] + lines[1:]


def _blank_users(lines):  # lines 3 and 5 of the file lose their user id
    return [("\t" + line.split("\t", 1)[1]) if k in (2, 4) else line for k, line in enumerate(lines)]


@pytest.mark.parametrize("suffix, edit, extra, message", [
    ("inter", lambda lines: lines[:1], {}, r"amazon.inter has a header but no rows; add rows$"),
    ("item", lambda lines: lines[:1], {}, r"amazon.item has a header but no rows; add rows, or remove the file"),
    ("inter", _rename("user_id:", "uid:"), {}, r"amazon.inter has no 'user_id' column \(USER_ID_FIELD; columns: "
                                                r"\['uid', 'item_id', 'timestamp'\]\); rename"),
    ("item", _rename("item_id:", "iid:"), {}, r"amazon.item has no 'item_id' column \(ITEM_ID_FIELD"),
    ("inter", lambda lines: lines, {"TIME_FIELD": "ts"}, r"has no 'ts' column \(TIME_FIELD"),
    ("inter", lambda lines: lines, {"load_col": {"inter": ["user_id", "item_id"]}},
     r"load_col of 'inter' leaves out 'timestamp' \(TIME_FIELD\), which RecBole needs"),
    ("inter", _rename("timestamp:float", "timestamp:token"), {},
     r"column 'timestamp' \(TIME_FIELD\) is typed token; write it as timestamp:float"),
    ("inter", _blank_users, {}, r"amazon.inter: 2 row\(s\) have an empty user_id \(lines 3, 5\)"),
    ("inter", lambda lines: lines, {"encoding": "foo"}, r"encoding 'foo' \(reading .*amazon.inter\) is not a known"),
])
def test_files_without_what_recbole_needs_are_named(root, suffix, edit, extra, message):
    """Each was a bare RecBole/pandas error (KeyError: 'user_id', ValueError: Some feat is empty,
    uid_field must be loaded ..., LookupError), or, for empty ids, one fake user of every such row."""
    path = root / "amazon" / f"amazon.{suffix}"
    _write(path, edit(_lines(path)))
    with pytest.raises(DataError, match=message):
        build_config("SASRec", "amazon", config_dict={"data_path": str(root), "state": "ERROR", **extra})


def test_load_all_columns_passes_the_column_checks(root):
    """RecBole's load_col '*' (every column of the file) was read as a list without user_id."""
    config = build_config("SASRec", "amazon", config_dict={"data_path": str(root), "state": "ERROR",
                                                           "load_col": {"inter": "*", "item": "*"}})
    assert config["load_col"] == {"inter": "*", "item": "*"}


def test_empty_file_and_other_separator_are_named(root):
    """A 0-byte .inter reported "header columns ['']"; --field_separator=, said "tab-separated"."""
    inter = root / "amazon" / "amazon.inter"
    lines = _lines(inter)
    inter.write_text("")
    with pytest.raises(DataError, match=r"amazon.inter has no header line \(an empty first line or an empty file\)"):
        build_config("SASRec", "amazon", config_dict={"data_path": str(root), "state": "ERROR"})
    _write(inter, [line.replace("\t", ",") for line in lines[:3]] + ["U,I,1,extra"])
    with pytest.raises(DataError, match=r"amazon.inter, line 4: 4 comma-separated values but the header has 3 "
                                        r"columns; a value holds a comma"):
        build_config("SASRec", "amazon", config_dict={"data_path": str(root), "state": "ERROR", "field_separator": ","})


def test_nothing_left_to_train_on_is_one_error(root):
    """RecBole's filters leaving no interaction (ValueError: Some feat is empty) and a train split
    without rows (torch's num_samples=0) were tracebacks."""
    from recbole_llm_mtl.build import build_from_args

    config = {"data_path": str(root), "state": "ERROR"}
    with pytest.raises(DataError, match=r"no rows of amazon \(interactions, or the users or items they name\) are left after RecBole's filters \(.*"
                                        r"'user_inter_num_interval': '\[1000,inf\)'.*\); loosen them"):
        build_from_args("SASRec", "amazon", config_dict={**config, "user_inter_num_interval": "[1000,inf)"})
    path = root / "amazon" / "amazon.inter"
    lines, seen = _lines(path), set()
    firsts = [lines[0]] + [line for line in lines[1:] if not (line.split("\t")[0] in seen or seen.add(line.split("\t")[0]))]
    _write(path, firsts)  # one interaction per user: no (history -> target) row at all
    with pytest.raises(DataError, match=r"the train split of amazon is empty under eval_args split \{'LS'"):
        build_from_args("SASRec", "amazon", config_dict=config)
