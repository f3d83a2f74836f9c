"""The one reader and validator of RecBole atomic files.

Atomic files are tab-separated text: a value is everything between two separators, quotes
included. RecBole reads them with pandas, which takes ``"`` as a quote (a title opened with
``"`` and closed lines later merges those rows into one value; an unclosed one is a
ParserError) and keeps a UTF-8 byte order mark in the first column's name. Every atomic file
is read here instead, by the config-time checks (:func:`check_dataset_files`) and by the
datasets themselves (:class:`recbole_llm_mtl.data.dataset.AtomicReaderMixin`), so both see the
same rows and a bad file gets one message naming the file, the line and the fix.
"""

import hashlib
import os
from collections import namedtuple

from recbole_llm_mtl.errors import DataError

TYPES = ("token", "token_seq", "float", "float_seq")
BOM = "\ufeff"


class AtomicFile(namedtuple("AtomicFile", "path names types rows lines")):
    """A parsed atomic file: column names and types, rows of raw strings (one per column,
    missing trailing values as ``""``) and each row's line number in the file."""

    def column(self, name):
        k = self.names.index(name)
        return [row[k] for row in self.rows]

    def fingerprint(self):
        """sha256 of the header and the sorted rows (``sha256``: the same for a file whose rows
        were only reordered, different as soon as one value changes) and of the rows in file
        order (``order_sha256``): RecBole numbers ids in order of appearance and breaks
        timestamp ties by row order, so a reordered file trains another model."""
        header = "\t".join(f"{n}:{t}" for n, t in zip(self.names, self.types)).encode()
        content, order = hashlib.sha256(header), hashlib.sha256(header)
        for h, rows in ((content, sorted("\t".join(r) for r in self.rows)), (order, ("\t".join(r) for r in self.rows))):
            for row in rows:
                h.update(b"\n" + row.encode())
        return {"sha256": content.hexdigest(), "rows": len(self.rows), "order_sha256": order.hexdigest()}


def fingerprint_changes(saved, current, order_matters=True):
    """What differs between two {file name: fingerprint} maps: the files a run or checkpoint
    read (``saved``) and the same folder's files now (``current``), one phrase per file.
    ``order_matters=False`` (a checkpoint, which maps ids by token) ignores reordered rows;
    a fingerprint recorded before ``order_sha256`` existed is compared on content alone."""
    changes = []
    for name in sorted(set(saved) | set(current)):
        was, now = saved.get(name), current.get(name)
        if was is None:
            changes.append(f"{name} is new since training")
        elif now is None:
            changes.append(f"{name} was read at training and is missing now")
        elif was["rows"] != now["rows"]:
            changes.append(f"{name} has {now['rows']} rows (was {was['rows']})")
        elif was["sha256"] != now["sha256"]:
            changes.append(f"{name} has other content (same number of rows)")
        elif order_matters and None not in (was.get("order_sha256"), now.get("order_sha256")) \
                and was["order_sha256"] != now["order_sha256"]:
            changes.append(f"{name} has the same rows in another order (ids and timestamp ties follow row order)")
    return changes


def _decode(path, raw, encoding):
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise DataError(f"encoding {encoding!r} (reading {path}) is not a known text encoding; "
                        "set encoding to e.g. utf-8 or latin-1") from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: bytes {raw[e.start:e.end]!r} are not valid {encoding}; "
                        f"re-save the file as {encoding} (or set encoding in the dataset YAML)") from None
    return text[1:] if text.startswith(BOM) else text  # editors on Windows write a BOM


def _header(path, line, separator):
    columns = line.split(separator)
    bad = [c for c in columns if ":" not in c or c.rsplit(":", 1)[1] not in TYPES]
    if bad:
        raise DataError(f"{path}: header columns {bad} lack a RecBole type suffix; write them as "
                        f"name:type with type one of {TYPES} (e.g. item_id:token, title:token_seq)")
    return [c.rsplit(":", 1)[0] for c in columns], [c.rsplit(":", 1)[1] for c in columns]


def read_atomic_file(path, encoding="utf-8", separator="\t"):
    """Parse ``path``: every line is one row, split on ``separator`` only (quotes are
    ordinary characters); a row with fewer values has empty trailing values (editors strip
    trailing tabs), one with more is an error. Empty lines are skipped."""
    with open(path, "rb") as f:
        lines = _decode(path, f.read(), encoding).split("\n")
    if not lines[0].strip():
        raise DataError(f"{path} has no header line (an empty first line or an empty file); the first line "
                        "names the columns as name:type (e.g. user_id:token)")
    names, types = _header(path, lines[0].rstrip("\r"), separator)
    rows, numbers = [], []
    for lineno, line in enumerate(lines[1:], 2):
        line = line.rstrip("\r")
        if not line:
            continue
        values = line.split(separator)
        if len(values) > len(names):
            what = {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space"}.get(separator, repr(separator))
            raise DataError(f"{path}, line {lineno}: {len(values)} {what}-separated values but the header has "
                            f"{len(names)} columns; a value holds a {what}, or the row is malformed")
        rows.append(values + [""] * (len(names) - len(values)))
        numbers.append(lineno)
    return AtomicFile(path, names, types, rows, numbers)


def _check_unique(table, id_field):
    seen, dups = set(), []
    for lineno, value in zip(table.lines, table.column(id_field)):
        if value in seen:
            dups.append((lineno, value))
        seen.add(value)
    if dups:
        shown = ", ".join(f"'{v}' (line {n})" for n, v in dups[:5])
        raise DataError(f"{table.path}: duplicate {id_field} values {shown}{' ...' if len(dups) > 5 else ''}: "
                        f"each {id_field} must have one row; merge or drop the duplicates")


def check_atomic_file(path, id_field=None, encoding="utf-8", separator="\t"):
    """The file parses (header ``name:type``, text decodes, no row too long) and
    ``id_field`` values, if that column exists, are unique."""
    table = read_atomic_file(path, encoding, separator)
    if id_field and id_field in table.names:
        _check_unique(table, id_field)
    return table


def _check_columns(table, config, suffix, loaded_columns):
    """The columns RecBole needs from this file are there, with a type it can use, and every
    row has its ids: RecBole itself fails later with a bare ``KeyError: 'user_id'``, a
    ``ValueError: Some feat is empty`` or merges rows of an empty id into one user."""
    needs = {"inter": ["USER_ID_FIELD", "ITEM_ID_FIELD"], "item": ["ITEM_ID_FIELD"], "user": ["USER_ID_FIELD"]}[suffix]
    order = (config["eval_args"] or {}).get("order")
    if suffix == "inter" and order == "TO" and config["TIME_FIELD"]:
        needs.append("TIME_FIELD")  # ordering by time needs it
    for key in needs:
        field = config[key]
        if not field:
            continue
        if field not in table.names:
            raise DataError(f"{table.path} has no '{field}' column ({key}; columns: {table.names}); "
                            f"rename the column in the header or set {key} to the column's name")
        if loaded_columns is not None and field not in loaded_columns:
            raise DataError(f"load_col of '{suffix}' leaves out '{field}' ({key}), which RecBole needs; add it")
        kind = table.types[table.names.index(field)]
        wanted = "float" if key == "TIME_FIELD" else "token"
        if kind != wanted:
            raise DataError(f"{table.path}: column '{field}' ({key}) is typed {kind}; write it as {field}:{wanted}")
        if key != "TIME_FIELD":
            empty = [n for n, v in zip(table.lines, table.column(field)) if not v.strip()]
            if empty:
                lines = ", ".join(map(str, empty[:5])) + (" ..." if len(empty) > 5 else "")
                raise DataError(f"{table.path}: {len(empty)} row(s) have an empty {field} (lines {lines}); "
                                f"fill in the id or drop the row")
    if not table.rows:
        hint = "" if suffix == "inter" else f", or remove the file (or '{suffix}' from load_col)"
        raise DataError(f"{table.path} has a header but no rows; add rows{hint}")


def check_dataset_files(config):
    """Validate ``<name>.inter`` and the ``.item``/``.user`` files next to it: each parses,
    ids are unique, and the files RecBole will load hold the columns it needs."""
    path, name = config["data_path"], config["dataset"]
    encoding = config["encoding"] or "utf-8"
    sep = config["field_separator"] or "\t"
    load_col = config["load_col"]
    ids = {"inter": None, "item": config["ITEM_ID_FIELD"], "user": config["USER_ID_FIELD"]}
    for suffix, id_field in ids.items():
        f = os.path.join(path, f"{name}.{suffix}")
        if os.path.isfile(f):
            table = check_atomic_file(f, id_field, encoding, sep)
            if load_col is None or suffix in load_col:  # RecBole loads it
                columns = None if load_col is None or load_col[suffix] == "*" else load_col[suffix]  # '*': all
                _check_columns(table, config, suffix, columns)
