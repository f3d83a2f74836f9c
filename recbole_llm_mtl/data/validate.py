"""Checks on RecBole atomic files before RecBole reads them, so that bad input gets one
clear message naming the file, line and fix instead of a pandas/torch traceback."""

import os

from recbole_llm_mtl.errors import DataError

TYPES = ("token", "token_seq", "float", "float_seq")


def check_atomic_file(path, id_field=None, encoding="utf-8", separator="\t"):
    """Header has ``name:type`` columns, text decodes, and ``id_field`` values are unique."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: bytes {raw[e.start:e.end]!r} are not valid {encoding}; "
                        f"re-save the file as {encoding} (or set encoding in the dataset YAML)") from None
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split(separator)
    bad = [c for c in header if ":" not in c or c.rsplit(":", 1)[1] not in TYPES]
    if bad:
        raise DataError(f"{path}: header columns {bad} lack a RecBole type suffix; write them as "
                        f"name:type with type one of {TYPES} (e.g. item_id:token, title:token_seq)")
    if id_field:
        names = [c.rsplit(":", 1)[0] for c in header]
        if id_field in names:
            col = names.index(id_field)
            seen, dups = set(), []
            for lineno, line in enumerate(lines[1:], 2):
                if not line.strip():
                    continue
                value = line.split(separator)[col] if line.count(separator) >= col else ""
                if value in seen:
                    dups.append((lineno, value))
                seen.add(value)
            if dups:
                shown = ", ".join(f"'{v}' (line {n})" for n, v in dups[:5])
                raise DataError(f"{path}: duplicate {id_field} values {shown}{' ...' if len(dups) > 5 else ''}: "
                                f"each {id_field} must have one row; merge or drop the duplicates")


def check_dataset_files(config):
    """Validate ``<name>.inter`` and the feature files that ``load_col`` asks for."""
    path, name = config["data_path"], config["dataset"]
    encoding = config["encoding"] or "utf-8"
    sep = config["field_separator"] or "\t"
    ids = {"inter": None, "item": config["ITEM_ID_FIELD"], "user": config["USER_ID_FIELD"]}
    for suffix, id_field in ids.items():
        f = os.path.join(path, f"{name}.{suffix}")
        if os.path.isfile(f):
            check_atomic_file(f, id_field, encoding, sep)
