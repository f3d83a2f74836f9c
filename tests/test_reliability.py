"""Faults: kill and --resume, kill mid-encoding, concurrent cache writers, determinism."""

import glob
import os
import signal
import subprocess
import sys
import time

import torch

from conftest import ROOT, tiny_overrides
from recbole_llm_mtl.quick_start import run
from recbole_llm_mtl.text.cache import VectorCache

ENV = dict(os.environ, PYTHONPATH=ROOT)


def _cli(args, cwd, **kw):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "run_recbole_llm.py")] + args, cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_same_seed_same_metrics(tiny_root, cache_dir, workdir):
    a = run("LLMMTL", "amazon", config_dict=tiny_overrides(tiny_root, cache_dir, epochs=2))
    b = run("LLMMTL", "amazon", config_dict=tiny_overrides(tiny_root, cache_dir, epochs=2))
    assert a["test_result"] == b["test_result"] and a["best_valid_result"] == b["best_valid_result"]


def test_kill_then_resume_matches_uninterrupted(tiny_root, cache_dir, workdir):
    over = tiny_overrides(tiny_root, cache_dir, epochs=6, stopping_step=100)
    full = run("LLMMTL", "amazon", config_dict=over)
    args = ["--model=LLMMTL", "--dataset=amazon"] + [f"--{k}={v}" for k, v in over.items()]
    killed = workdir / "killed"
    killed.mkdir()
    proc = _cli(args, killed)
    deadline = time.time() + 600
    while not glob.glob(str(killed / "saved" / "*-last.pth")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # mid-training, right after an epoch's resume state landed
    proc.wait()
    (last,) = glob.glob(str(killed / "saved" / "*-last.pth"))
    epoch = torch.load(last, weights_only=True)["epoch"]
    assert epoch < 5, "the run finished before it could be killed"
    resumed = _cli(args + [f"--resume={last}"], killed)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-2000:]
    assert f"at epoch {epoch + 1}" in out
    assert f"test result: {dict(full['test_result'])}" in out


def test_kill_mid_encoding_leaves_nothing_trusted(tiny_root, workdir):
    cache = workdir / "cache"
    code = ("from recbole_llm_mtl.text.cache import *; from recbole_llm_mtl.text.encoder import *;"
            "lm = SharedLanguageModel(); texts = [f'product number {i} ' * 20 for i in range(20000)];"
            f"cached_encode(VectorCache({str(cache)!r}), lm.identity, texts, lambda t: lm.encode(t, show_progress=False))")
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV)
    time.sleep(15)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not glob.glob(str(cache / "*.safetensors")), "a partial cache file appeared under a final name"
    from recbole_llm_mtl.text.cache import cached_encode
    from recbole_llm_mtl.text.encoder import SharedLanguageModel

    lm = SharedLanguageModel()
    texts = ["short text", "another one"]
    vec, hit = cached_encode(VectorCache(str(cache)), lm.identity, texts, lambda t: lm.encode(t, show_progress=False))
    assert not hit and vec.shape == (2, 384)
    assert cached_encode(VectorCache(str(cache)), lm.identity, texts, None)[1]


def test_two_writers_share_one_cache_dir(workdir):
    cache = workdir / "cache"
    code = ("from recbole_llm_mtl.text.cache import *; from recbole_llm_mtl.text.encoder import *;"
            "lm = SharedLanguageModel(); texts = [f'item {i} with a title' for i in range(300)];"
            f"v, _ = cached_encode(VectorCache({str(cache)!r}), lm.identity, texts, lambda t: lm.encode(t, show_progress=False));"
            "print(float(v.sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    files = glob.glob(str(cache / "*"))
    assert len(files) == 1 and files[0].endswith(".safetensors")  # no torn or temp files left
    key = os.path.basename(files[0])[: -len(".safetensors")]
    assert VectorCache(str(cache)).load(key) is not None
    assert abs(float(outs[0]) - float(outs[1])) < 1e-3
