"""Writing RecBole atomic files safely: nothing existing is replaced unless asked, a killed
writer never leaves a half-written file under the final name, and the files of one dataset
are replaced together: a run that fails part-way replaces none of them."""

import os
import tempfile
from contextlib import ExitStack, contextmanager

from recbole_llm_mtl.errors import DataError

__all__ = ["DataError", "dataset_files", "output_folder", "render", "write_atomic_files", "write_user_slice"]


def render(header, rows):
    lines = ["\t".join(header)]
    for row in rows:
        if any("\t" in v or "\n" in v for v in row):
            raise DataError(f"value with a tab or newline in row {row!r}")
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def output_folder(out, name):
    """Create ``out``; a clear error when it is a file or ``name`` is not a plain file prefix."""
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise DataError(f"dataset name {name!r} is not allowed: give a file prefix without '/' "
                        "(the files are written as <out>/<name>.inter, ...)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"output folder '{out}' is a file: give a folder for --out")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the output folder '{out}': {e.strerror or e}") from None


@contextmanager
def dataset_files(out, name, suffixes, overwrite=False, drop=()):
    """Open ``<out>/<name>.<suffix>`` for writing, for every suffix, as temp files in ``out``;
    they are renamed into place together when the block ends without an error (and existing
    ``<name>.<suffix>`` files for the suffixes in ``drop``, left by an earlier run, are then
    removed), and removed otherwise, so a failed run replaces nothing. Yields
    ``{suffix: text file}``; refuses existing targets unless ``overwrite``."""
    if set(drop) & set(suffixes):
        raise ValueError(f"drop {sorted(set(drop) & set(suffixes))} names files this run writes")
    output_folder(out, name)
    targets = {suffix: os.path.join(out, f"{name}.{suffix}") for suffix in suffixes}
    stale = [os.path.join(out, f"{name}.{suffix}") for suffix in drop]
    folders = [p for p in list(targets.values()) + stale if os.path.isdir(p)]
    if folders:  # checked first, so the renames at the end cannot fail half-way on one
        raise DataError(f"{', '.join(folders)} is a folder where a dataset file goes; move it away")
    existing = [p for p in list(targets.values()) + stale if os.path.exists(p)]
    if existing and not overwrite:
        raise DataError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    temps = {}
    try:
        with ExitStack() as stack:
            handles = {}
            for suffix in suffixes:
                fd, temps[suffix] = tempfile.mkstemp(prefix=".tmp-", dir=out)
                handles[suffix] = stack.enter_context(os.fdopen(fd, "w", encoding="utf-8", newline="\n"))
            yield handles
        for suffix, tmp in temps.items():
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; atomic files are meant to be shared
            os.replace(tmp, targets[suffix])
        for path in stale:
            if os.path.exists(path):
                os.unlink(path)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_atomic_files(out, name, overwrite=False, drop=(), **files):
    """Write ``<out>/<name>.<suffix>`` for each ``suffix=(header, rows)`` given, all or none
    (``drop``: see :func:`dataset_files`)."""
    rendered = {suffix: render(*spec) for suffix, spec in files.items()}
    with dataset_files(out, name, list(files), overwrite=overwrite, drop=drop) as handles:
        for suffix, text in rendered.items():
            handles[suffix].write(text)
    return {suffix: os.path.join(out, f"{name}.{suffix}") for suffix in files}


def write_user_slice(src_dir, out_dir, n_users, name=None, overwrite=False):
    """A small real copy of a dataset: the first ``n_users`` users of ``<name>.inter`` (in file
    order) with all their interactions, and of every other ``<name>.*`` atomic file the rows of
    those users (files with a ``user_id`` column) or of their items (an ``item_id`` column);
    files with neither are copied whole. ``name`` defaults to the folder's name. Existing files
    in ``out_dir`` are not replaced unless ``overwrite``. Returns the number of interactions kept."""
    name = name or os.path.basename(os.path.normpath(src_dir))
    tables = {}
    for entry in sorted(os.listdir(src_dir)):
        stem, dot, suffix = entry.partition(".")
        if stem == name and dot and "." not in suffix:
            with open(os.path.join(src_dir, entry), encoding="utf-8") as f:
                header, *rows = f.read().splitlines()
            tables[suffix] = (header, [r.split("\t") for r in rows])
    if "inter" not in tables:
        raise DataError(f"{os.path.join(src_dir, name + '.inter')} not found: nothing to slice")

    def column(suffix, field):
        names = [h.split(":", 1)[0] for h in tables[suffix][0].split("\t")]
        return names.index(field) if field in names else None

    u, i = column("inter", "user_id"), column("inter", "item_id")
    if u is None or i is None:
        raise DataError(f"{name}.inter in {src_dir} has no user_id or item_id column")
    users = set(list(dict.fromkeys(r[u] for r in tables["inter"][1]))[:n_users])  # in file order
    inter = [r for r in tables["inter"][1] if r[u] in users]
    keep = {"user_id": users, "item_id": {r[i] for r in inter}}
    with dataset_files(out_dir, name, list(tables), overwrite=overwrite) as out:
        for suffix, (header, rows) in tables.items():
            if suffix == "inter":
                rows = inter
            else:
                by = next(((column(suffix, f), ids) for f, ids in keep.items() if column(suffix, f) is not None), None)
                rows = rows if by is None else [r for r in rows if r[by[0]] in by[1]]
            out[suffix].write("\n".join([header] + ["\t".join(r) for r in rows]) + "\n")
    return len(inter)
