"""The amazon converter: counts, field split, byte-identical regeneration, no overwrite."""

import filecmp
import os

import pytest

from conftest import ROOT, SHARED_DATA
from recbole_llm_mtl.data.amazon_scientific import convert, main, split_text
from recbole_llm_mtl.errors import DataError

SRC = os.path.join(SHARED_DATA, "amazon-scientific")
needs_src = pytest.mark.skipif(not os.path.isdir(SRC), reason="../shared/data not present")


def test_split_text_tricky_brands_and_empty_categories():
    assert split_text("Propane Kit 3/8. Industrial & Scientific Hydraulics Pipe Fittings. Mr. Heater. ") == (
        "Propane Kit 3/8", "Industrial & Scientific Hydraulics Pipe Fittings", "Mr. Heater")
    assert split_text("TPI Fan, 24 Diameter, 120 Volt. . TPI. ") == ("TPI Fan, 24 Diameter, 120 Volt", "", "TPI")
    assert split_text("St. John  Gloves. Industrial & Scientific Safety. Acme. ") == (
        "St. John Gloves", "Industrial & Scientific Safety", "Acme")


@needs_src
def test_convert_counts_fields_and_byte_identical(tmp_path):
    stats = convert(SRC, str(tmp_path), "amazon")
    assert stats == {"users": 8442, "items": 4385, "interactions": 59427, "items_without_categories": 134}
    for suffix in ("inter", "item"):
        assert filecmp.cmp(tmp_path / f"amazon.{suffix}", os.path.join(ROOT, "dataset", "amazon", f"amazon.{suffix}"),
                           shallow=False), f"committed amazon.{suffix} differs from a fresh conversion"
    rows = [line.split("\t") for line in (tmp_path / "amazon.item").read_text("utf-8").splitlines()]
    assert rows[0] == ["item_id:token", "title:token_seq", "categories:token_seq", "brand:token"]
    by_brand = [r for r in rows[1:] if r[3] == "Mr. Heater"]
    assert by_brand and all(r[2].startswith("Industrial & Scientific") for r in by_brand)
    empty = [r for r in rows[1:] if r[2] == ""]
    assert len(empty) == 134 and all(r[1] and ". ." not in r[1] for r in empty)
    # per-user positions are 0..n-1 in order, so leave-one-out by time follows the sequence
    inter = [line.split("\t") for line in (tmp_path / "amazon.inter").read_text("utf-8").splitlines()[1:]]
    first = [r for r in inter if r[0] == inter[0][0]]
    assert [int(r[2]) for r in first] == list(range(len(first)))


@needs_src
def test_convert_refuses_to_overwrite(tmp_path):
    (tmp_path / "amazon.inter").write_text("keep me")
    with pytest.raises(DataError, match="already exist"):
        convert(SRC, str(tmp_path), "amazon")
    assert (tmp_path / "amazon.inter").read_text() == "keep me"


def test_convert_missing_source_is_clear(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Scientific.text" in err and "--src" in err
    assert not (tmp_path / "out").exists()
