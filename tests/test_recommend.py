"""recommend: top items with reasons, new-item ranking, clear errors (real tiny slice)."""

import json
import os

import pytest

from conftest import tiny_overrides
from recbole_llm_mtl.quick_start import run
from recbole_llm_mtl.recommend import Recommender, main


@pytest.fixture(scope="module")
def checkpoint(tiny_root, cache_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("rec")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        result = run("LLMMTL", "amazon", config_dict=tiny_overrides(tiny_root, cache_dir))
    finally:
        os.chdir(cwd)
    return result["checkpoint"]


def _first_user(tiny_root):
    with open(os.path.join(tiny_root, "amazon", "amazon.inter")) as f:
        next(f)
        return next(f).split("\t")[0]


def test_recommend_with_reasons(checkpoint, tiny_root):
    rec = Recommender(checkpoint)
    user = _first_user(tiny_root)
    (out,) = rec.recommend([user], topk=5)
    recs = out["recommendations"]
    assert len(recs) == 5
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    history = {rec.titles[i] for i in rec.seq[rec.user_row(user), : rec.lens[rec.user_row(user)]].tolist()}
    for r in recs:
        assert r["because_you_bought"] in history       # the reason is one of the user's own items
        assert r["main_signal"] in ("behaviour", "profile", "reasoning")


def test_new_item_ranks_users(checkpoint):
    rec = Recommender(checkpoint)
    users = rec.users_for_new_item("3D printer PLA filament 1.75mm, Brand: eSUN", topk=3)
    assert len(users) == 3 and users[0]["score"] >= users[-1]["score"]


def test_cli_json_and_unknown_user(checkpoint, tiny_root, capsys):
    assert main(["--checkpoint", checkpoint, "--user", _first_user(tiny_root), "--topk", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data[0]["recommendations"]) == 3
    assert main(["--checkpoint", checkpoint, "--user", "NO_SUCH_USER"]) == 2
    assert "unknown user 'NO_SUCH_USER'" in capsys.readouterr().err
    assert main(["--checkpoint", checkpoint, "--item-text", "Nitrile gloves", "--item-text", "Filament",
                 "--topk", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["item_text"] for d in data] == ["Nitrile gloves", "Filament"] and len(data[0]["users"]) == 2
