"""Two CPU processes (gloo) train LLMMTL through RecBole's DDP path on a tiny real slice."""

import argparse
import socket

import torch

from conftest import build, tiny_overrides
from recbole_llm_mtl.distributed import run_distributed


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_and_checkpoint_loads(tiny_root, tmp_path, workdir):
    cache = str(tmp_path / "cache")  # empty: the encoding pass is sharded over both ranks
    args = argparse.Namespace(model="LLMMTL", dataset="amazon", nproc=2, world_size=-1, ip="127.0.0.1",
                              port=_free_port(), group_offset=0, resume=None, valid_only=True)
    results = run_distributed(args, None, tiny_overrides(tiny_root, cache, epochs=2))
    assert len(results) == 2
    assert results[0]["best_valid_result"] == results[1]["best_valid_result"] and results[0]["best_valid_result"]
    assert results[0]["test_result"] == results[1]["test_result"] == {}  # --valid_only: test never read
    assert results[0]["checkpoint"] == results[1]["checkpoint"]  # one file, rank 0's
    _, _, valid, _, model = build("LLMMTL", tiny_root, cache)  # rank 0 wrote the cache: a hit
    state = torch.load(results[0]["checkpoint"], weights_only=True)
    model.load_state_dict(state["state_dict"])
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model.full_sort_predict(next(iter(valid))[0])).all()
