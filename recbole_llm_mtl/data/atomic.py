"""Writing RecBole atomic files safely: nothing existing is replaced unless asked, and
a killed writer never leaves a half-written file under the final name."""

import os
import tempfile

from recbole_llm_mtl.errors import DataError

__all__ = ["DataError", "atomic_write_text", "write_atomic_files", "write_user_slice"]


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` through a temp file in the same folder + rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; atomic files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _render(header, rows):
    lines = ["\t".join(header)]
    for row in rows:
        if any("\t" in v or "\n" in v for v in row):
            raise DataError(f"value with a tab or newline in row {row!r}")
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def write_atomic_files(out, name, overwrite=False, **files):
    """Write ``<out>/<name>.<suffix>`` for each ``suffix=(header, rows)`` given."""
    os.makedirs(out, exist_ok=True)
    targets = {suffix: os.path.join(out, f"{name}.{suffix}") for suffix in files}
    existing = [p for p in targets.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise DataError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    rendered = {suffix: _render(*spec) for suffix, spec in files.items()}
    for suffix, text in rendered.items():
        atomic_write_text(targets[suffix], text)
    return targets


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
    targets = {suffix: os.path.join(out_dir, f"{name}.{suffix}") for suffix in tables}
    existing = [path for path in targets.values() if os.path.exists(path)]
    if existing and not overwrite:
        raise DataError(f"{', '.join(existing)} already exist(s); pass overwrite=True to replace")
    os.makedirs(out_dir, exist_ok=True)
    for suffix, (header, rows) in tables.items():
        if suffix == "inter":
            rows = inter
        else:
            by = next(((column(suffix, f), ids) for f, ids in keep.items() if column(suffix, f) is not None), None)
            rows = rows if by is None else [r for r in rows if r[by[0]] in by[1]]
        atomic_write_text(targets[suffix], "\n".join([header] + ["\t".join(r) for r in rows]) + "\n")
    return len(inter)
