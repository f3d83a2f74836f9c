"""Raw Amazon 2018/2023 converters: the real 2023 mini set and hand-made official-schema files."""

import csv
import gzip
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED_DATA
from recbole_llm_mtl.data.amazon_raw import clean_text, main

MINI = os.path.join(SHARED_DATA, "amazon-beauty-2023-mini")
needs_mini = pytest.mark.skipif(not os.path.isdir(MINI), reason="../shared/data not present")


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f][1:]


@pytest.fixture(scope="module")
def beauty(tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "beauty"  # data_path/<dataset name>/
    summary = main(["--release", "2023", "--splits", os.path.join(MINI, "All_Beauty"),
                    "--meta", os.path.join(MINI, "meta_items.csv"),
                    "--reviews", os.path.join(MINI, "user_reviews.json"), "--out", str(out), "--name", "beauty"])
    return out, summary


@needs_mini
def test_mini_counts_fields_and_no_held_out_reviews(beauty):
    out, summary = beauty
    assert (summary["users"], summary["items"], summary["interactions"]) == (253, 356, 2535)
    inter = _rows(out / "beauty.inter")
    assert all(1e9 < float(t) < 2e9 for *_, t in inter)  # seconds, milliseconds kept as decimals
    items = {r[0]: r for r in _rows(out / "beauty.item")}
    assert sum(1 for r in items.values() if r[2]) == 282  # brand from the details dict (74 have none)
    # the held-out (valid, test) items of each user come from the official split files
    held = {}
    for split in ("valid", "test"):
        with open(os.path.join(MINI, f"All_Beauty.{split}.csv")) as f:
            for rec in csv.DictReader(f):
                held.setdefault(rec["user_id"], set()).add(rec["parent_asin"])
    reviews = _rows(out / "beauty.review")
    assert len(reviews) > 1500
    assert not [r for r in reviews if r[1] in held[r[0]]], "a held-out item's review text was written"
    assert all("VIDEOID" not in r[3] and "<br" not in r[3] for r in reviews)
    # leave-one-out by time in RecBole reproduces the official split: valid/test are each user's last two
    last_two = {}
    for u, i, _, t in inter:
        last_two.setdefault(u, []).append((float(t), i))
    assert all({i for _, i in sorted(v)[-2:]} == held[u] for u, v in last_two.items())


@needs_mini
def test_converted_dataset_trains_naming_only_text_fields(beauty, tmp_path):
    out, _ = beauty
    args = [sys.executable, os.path.join(ROOT, "run_recbole_llm.py"), "--model=LLMMTL", "--dataset=beauty",
            f"--data_path={os.path.dirname(out)}", "--item_text_fields=['title','brand','categories']",
            "--epochs=1", "--show_progress=False", f"--text_cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test result: {'recall@10'" in proc.stdout


def test_official_2023_jsonl_with_malformed_lines(tmp_path):
    reviews = tmp_path / "reviews.jsonl.gz"
    lines = []
    for u in range(3):
        for k in range(4):
            lines.append(json.dumps({"rating": 4.0 + (k % 2), "title": f"t{u}{k}", "text": f"<b>great</b> &amp; item {k}",
                                     "asin": f"A{k}", "parent_asin": f"P{k}", "user_id": f"U{u}",
                                     "timestamp": 1600000000000 + 1000 * (10 * u + k), "helpful_vote": 0,
                                     "verified_purchase": True}))
    lines.insert(3, "{not json")
    with gzip.open(reviews, "wt") as f:
        f.write("\n".join(lines) + "\n")
    meta = tmp_path / "meta.jsonl"
    meta.write_text("\n".join(json.dumps({"parent_asin": f"P{k}", "title": f"Item {k}", "store": "Acme",
                                          "categories": ["Beauty", "Skin Care"], "description": ["<p>Soft</p>"],
                                          "price": "12.50", "details": {"Brand": "Acme"}}) for k in range(4))
                    + "\nbroken line\n")
    summary = main(["--release", "2023", "--reviews", str(reviews), "--meta", str(meta), "--out", str(tmp_path / "o"),
                    "--name", "x", "--min_rating", "4"])
    assert summary["malformed review lines"] == 1 and summary["malformed meta lines"] == 1
    assert (summary["users"], summary["items"], summary["interactions"]) == (3, 4, 12)
    item = _rows(tmp_path / "o" / "x.item")[0]
    assert item == ["P0", "Item 0", "Acme", "Beauty Skin Care", "Soft", "12.5"]
    reviews_out = _rows(tmp_path / "o" / "x.review")
    assert len(reviews_out) == 3 * 2 and reviews_out[0][3] == "t00 great & item 0"
    with pytest.raises(SystemExit) as e:
        main(["--release", "2023", "--reviews", str(reviews), "--out", str(tmp_path / "o"), "--name", "x"])
    assert e.value.code == 2


def test_official_2018_ratings_and_meta_with_python_literals(tmp_path):
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("".join(f"I{i},R{u},{1 + (u + i) % 5}.0,{1400000000 + 100 * u + i}\n"
                               for u in range(4) for i in range(3)) + "bad,row\n")
    meta = tmp_path / "meta.json"
    meta.write_text("\n".join(repr({"asin": f"I{i}", "title": f"Widget {i}", "brand": "Mr. Heater",
                                     "category": ["Tools", "Heaters"], "description": ["Warm"], "price": "$9.99"})
                              for i in range(3)) + "\n")
    summary = main(["--release", "2018", "--ratings", str(ratings), "--meta", str(meta), "--out", str(tmp_path / "o"),
                    "--name", "y", "--k_core", "2"])
    assert summary["malformed rating rows"] == 1
    assert (summary["users"], summary["items"], summary["interactions"]) == (4, 3, 12)
    assert _rows(tmp_path / "o" / "y.item")[0] == ["I0", "Widget 0", "Mr. Heater", "Tools Heaters", "Warm", "9.99"]
    assert not os.path.exists(tmp_path / "o" / "y.review")


def test_clean_text():
    assert clean_text(["<p>Hello&nbsp;world</p>", "Visit the Acme Store"]) == "Hello world"
    assert clean_text(None) == ""


def _ratings(path, rows, opener=open, prefix=""):
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(prefix + "".join(f"{i},{u},4.0,{t}\n" for i, u, t in rows))


def _convert_2018(tmp_path, ratings):
    return main(["--release", "2018", "--ratings", str(ratings), "--out", str(tmp_path / "o"), "--name", "z"])


def test_nan_and_inf_timestamps_are_dropped_and_counted(tmp_path):
    """They were written to .inter (the inf row became that user's test item)."""
    rows = [(f"I{i}", "U1", 1400000000 + i) for i in range(4)] + [("I9", "U1", "inf"), ("I8", "U1", "nan")]
    _ratings(tmp_path / "r.csv", rows)
    summary = _convert_2018(tmp_path, tmp_path / "r.csv")
    assert summary["rows with a nan/inf timestamp"] == 2 and summary["interactions"] == 4
    assert {r[1] for r in _rows(tmp_path / "o" / "z.inter")} == {"I0", "I1", "I2", "I3"}


def test_bom_is_read_as_text_start(tmp_path):
    """A BOM glued itself to the first item id."""
    _ratings(tmp_path / "r.csv", [("I0", "U1", 1400000000), ("I1", "U1", 1400000001)], prefix="\ufeff")
    _convert_2018(tmp_path, tmp_path / "r.csv")
    assert [r[1] for r in _rows(tmp_path / "o" / "z.inter")] == ["I0", "I1"]


@pytest.mark.parametrize("fault", ["truncated", "plain"])
def test_broken_gz_is_one_line_exit_2(tmp_path, capsys, fault):
    """A truncated .gz (EOFError) or a plain file named .gz (BadGzipFile) were tracebacks."""
    path = tmp_path / "r.csv.gz"
    _ratings(path, [(f"I{i}", f"U{i % 50}", 1400000000 + i) for i in range(5000)],
             opener=gzip.open if fault == "truncated" else open)
    if fault == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(SystemExit) as e:
        _convert_2018(tmp_path, path)
    err = capsys.readouterr().err.strip()
    line = err[err.index("error: "):]  # after the progress bar
    assert e.value.code == 2 and line.startswith(f"error: {path}") and "\n" not in line and "Traceback" not in err
    assert ("truncated" if fault == "truncated" else "not a valid gzip file") in line
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


def _reviews_2018(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"reviewerID": u, "asin": i, "overall": 4.0, "unixReviewTime": t,
                                    "reviewText": f"text of {i} by {u}"}) + "\n" for i, u, t in rows))


def test_a_reconversion_replaces_the_dataset_whole_or_not_at_all(tmp_path, capsys):
    """A re-conversion that failed in its review pass had already replaced .inter and .item; one
    without --reviews kept the earlier .review (other data, which LLMMTL reads); one that kept
    no rows wrote header-only files and exited 0; --out a file or --name a path were tracebacks."""
    rows = [(f"I{k}", f"U{u}", 1400000000 + 10 * u + k) for u in range(3) for k in range(4)]
    _ratings(tmp_path / "r.csv", rows)
    _ratings(tmp_path / "fewer.csv", rows[:-1])
    # reviews are read in a second pass, after the interactions: many lines, so that a cut
    # file ends inside its compressed stream
    _reviews_2018(tmp_path / "rev.json.gz", rows + [(f"J{k}", "V", 1400000000 + k) for k in range(3000)])
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes((tmp_path / "rev.json.gz").read_bytes()[:-300])
    out = tmp_path / "o"
    base = ["--release", "2018", "--out", str(out), "--name", "z"]
    main(base + ["--ratings", str(tmp_path / "r.csv"), "--reviews", str(tmp_path / "rev.json.gz")])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"z.inter", "z.item", "z.review"} and _rows(out / "z.review")

    fewer = ["--ratings", str(tmp_path / "fewer.csv"), "--overwrite"]
    for bad, message in ((fewer + ["--reviews", str(broken)], "ends before the end of its gzip stream"),
                         (fewer + ["--k_core", "1000"], "no interactions are left"),
                         (fewer + ["--min_rating", "nan"], "no interactions are left"),
                         (fewer + ["--out", str(tmp_path / "r.csv")], "is a file"),
                         (fewer + ["--name", "sub/z"], "without '/'")):
        with pytest.raises(SystemExit) as e:
            main(base + bad)
        err = capsys.readouterr().err
        line = err[err.index("error: "):]  # after any progress bar
        assert e.value.code == 2 and message in line and "\n" not in line.strip() and "Traceback" not in err, bad
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, bad  # nothing replaced, no temp file

    main(base + ["--ratings", str(tmp_path / "fewer.csv"), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["z.inter", "z.item"]  # the other data's reviews are gone
    assert len(_rows(out / "z.inter")) == len(rows) - 1


def test_a_folder_where_a_dataset_file_goes_replaces_nothing(tmp_path):
    """The renames at the end replaced .inter, then failed on a folder named like .item."""
    from recbole_llm_mtl.data.atomic import write_atomic_files
    from recbole_llm_mtl.errors import DataError

    (tmp_path / "x.inter").write_text("old\n")
    (tmp_path / "x.item").mkdir()
    with pytest.raises(DataError, match=r"x.item is a folder where a dataset file goes"):
        write_atomic_files(str(tmp_path), "x", overwrite=True, inter=(["user_id:token"], [("U",)]),
                           item=(["item_id:token"], [("I",)]))
    assert (tmp_path / "x.inter").read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["x.inter", "x.item"]
