"""Writing RecBole atomic files safely: nothing existing is replaced unless asked, and
a killed writer never leaves a half-written file under the final name."""

import os
import tempfile

from recbole_llm_mtl.errors import DataError

__all__ = ["DataError", "atomic_write_text", "write_atomic_files"]


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
