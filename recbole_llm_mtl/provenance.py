"""Where a result came from: code version, packages and machine, recorded with every
benchmark run so a reader can tell which rows are comparable and re-make any of them."""

import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata

PACKAGES = ("torch", "recbole", "transformers", "numpy", "pandas", "scipy")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the harness rewrites its own reports there while it runs: not a change to the code
RESULTS_DIR = os.path.join("benchmarks", "results")
PARTS = "parts.jsonl"  # in a run's checkpoint folder: one line per process that trained or tested it


def _git(*args, repo=REPO):
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=repo)
    except OSError:
        return None
    # trailing whitespace only: a porcelain line starts with a meaningful space (" M path")
    return out.stdout.rstrip() if out.returncode == 0 else None


def changed_files(porcelain):
    """Paths of ``git status --porcelain`` lines (``XY path``: two status columns, a space)."""
    return [line[3:] for line in porcelain.splitlines()]


def git_state(repo=REPO):
    """Short commit and whether tracked files (outside the results folder) differ from it:
    a dirty tree means the run's code is not exactly the commit."""
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){RESULTS_DIR}", repo=repo)
    files = changed_files(changed or "")
    return {"commit": _git("rev-parse", "--short", "HEAD", repo=repo) or "unknown",
            "dirty": bool(files) if changed is not None else None, "dirty_files": files[:20]}


def includes_commit(commit, ancestor, repo=REPO):
    """True where ``commit`` is ``ancestor`` or descends from it; None where git cannot say so
    (not a descendant, an unknown commit, no repository): the caller then knows nothing."""
    if not commit or commit == "unknown":
        return None
    return True if _git("merge-base", "--is-ancestor", ancestor, commit, repo=repo) is not None else None


def package_versions():
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def machine():
    """CPU model and cores, GPU (if torch sees one), OS and Python."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_model() or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "gpu": gpu, "os": platform.platform(), "python": platform.python_version()}


def file_sha1(path):
    """sha1 of a file's bytes, read in blocks (checkpoints are large)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance():
    return {**git_state(), "packages": package_versions(), "machine": machine()}


def record_part(folder, from_epoch):
    """Append this process's provenance to the run checkpointed in ``folder`` as a part that
    starts at ``from_epoch`` (a killed run resumes, maybe at a later commit, and one adopted by
    the harness is tested elsewhere); read before the part runs, as the tree may move on
    during hours of training. Returns the part."""
    part = {**provenance(), "from_epoch": from_epoch}
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, PARTS)
    with open(path, "a+b") as f:  # after a line cut by a kill, start a fresh one
        cut = False
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        f.write((b"\n" if cut else b"") + (json.dumps(part) + "\n").encode("utf-8"))
    return part


def read_jsonl(path, cut_lines_ok=True):
    """The records of a JSON-lines file ([] if absent). An append-only log written during long
    runs (``cut_lines_ok``) skips a line cut by a kill, so a finished run never loses its result
    to it; a hand-written file names its first bad line instead."""
    from recbole_llm_mtl.errors import LLMMTLError

    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if not cut_lines_ok:
                    raise LLMMTLError(f"{path}, line {number}: not a JSON record ({e.msg})") from None
    return records


def read_parts(folder):
    """Commit, dirty flag and first epoch of each recorded part of the run in ``folder``."""
    parts = read_jsonl(os.path.join(folder, PARTS))
    return [{k: p.get(k) for k in ("commit", "dirty", "from_epoch")} for p in parts]


def parts_commits(parts, epochs=None):
    """The commits a run's parts ran at, in order: ``abc1234``, ``abc1234 (dirty)``, ``a -> b`` for
    a run resumed at another commit, ``b (from epoch 61)`` where its earlier parts were not
    recorded, ``b (tested)`` for a part that trained nothing (it started at the run's last
    epoch, ``epochs``: an adopted run tested by the harness); ``-`` when none were recorded."""
    names = []
    for p in parts:
        name = f"{p.get('commit')}{' (dirty)' if p.get('dirty') else ''}"
        if epochs is not None and (p.get("from_epoch") or 0) >= epochs:
            name += " (tested)"
        if not names or names[-1] != name:
            names.append(name)
    if parts and 0 < (parts[0].get("from_epoch") or 0) and (epochs is None or parts[0]["from_epoch"] < epochs):
        names[0] += f" (from epoch {parts[0]['from_epoch']})"
    return " -> ".join(names) or "-"
