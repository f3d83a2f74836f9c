"""Convert the UniSRec/VQ-Rec "Scientific" files (Amazon 2018 Industrial & Scientific)
into RecBole atomic files: ``<name>.inter`` and ``<name>.item``.

The published files hold per-user leave-one-out rows (history -> target) with integer
indices, and a single text column "<title>. <category path>. <brand>. ". We rebuild each
user's full chronological sequence and split the text into separate fields.

Run::

    python -m recbole_llm_mtl.data.amazon_scientific \
        --src ../shared/data/amazon-scientific --out dataset/amazon
"""

import argparse
import os
import re
import sys
from collections import defaultdict

from recbole_llm_mtl.data.atomic import DataError, write_atomic_files
from recbole_llm_mtl.errors import report

ROOT_CATEGORY = "Industrial & Scientific"
_WS = re.compile(r"\s+")


def clean(text):
    """Collapse runs of whitespace so RecBole's space-split ``token_seq`` round-trips."""
    return _WS.sub(" ", text).strip()


def split_text(text):
    """Split "<title>. <categories>. <brand>. " into (title, categories, brand).

    Brands contain ". " ("Mr. Heater") and so can titles, so we anchor on the category
    root instead of splitting on every ". ". Items without a category path read
    "<title>. . <brand>. ".
    """
    body = text.strip()
    if body.endswith("."):
        body = body[:-1]
    anchor = ". " + ROOT_CATEGORY
    if anchor in body:
        title, rest = body.split(anchor, 1)
        rest = ROOT_CATEGORY + rest
        cats, sep, brand = rest.partition(". ")
        if not sep:  # no brand part at all
            cats, brand = rest, ""
    elif ". . " in body:
        title, brand = body.split(". . ", 1)
        cats = ""
    elif body.endswith(". ."):
        title, cats, brand = body[:-3], "", ""
    else:
        raise DataError(f"cannot split item text into title/categories/brand: {text!r}")
    return clean(title), clean(cats), clean(brand)


def _read_index(path):
    """``raw_id TAB index`` -> list where position == index."""
    pairs = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise DataError(f"{path}:{lineno}: expected 'raw_id<TAB>index', got {line!r}")
            pairs[int(parts[1])] = parts[0]
    return [pairs[i] for i in range(len(pairs))]


def _read_rows(path):
    """Yield (user, history list, target) from a ``*.inter`` leave-one-out file."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header != ["user_id:token", "item_id_list:token_seq", "item_id:token"]:
            raise DataError(f"{path}: unexpected header {header}")
        for line in f:
            user, hist, target = line.rstrip("\n").split("\t")
            yield int(user), [int(x) for x in hist.split()], int(target)


def rebuild_sequences(src):
    """Each user's full item sequence, oldest first, from the train/valid/test files.

    The one item in the history of the user's shortest train row, then the train
    targets in order of history length, then the valid target, then the test target.
    """
    train = defaultdict(list)
    rows = _read_rows(os.path.join(src, "Scientific.train.inter"))
    for pos, (user, hist, target) in enumerate(rows):
        # Files list each user's rows longest history first; histories are capped at 50,
        # so ties in length are broken by that file order.
        train[user].append((len(hist), -pos, hist, target))
    tail = defaultdict(list)
    for split in ("valid", "test"):
        for user, hist, target in _read_rows(os.path.join(src, f"Scientific.{split}.inter")):
            tail[user].append((hist, target))
    seqs = {}
    for user, rows in train.items():
        rows.sort(key=lambda r: r[:2])
        seq = [rows[0][2][0]] + [r[3] for r in rows]
        for hist, target in tail[user]:
            if seq[-len(hist):] != hist[-len(seq):]:
                raise DataError(f"user {user}: valid/test history is not a suffix of the train sequence")
            seq.append(target)
        seqs[user] = seq
    return seqs


def convert(src, out, name="amazon", overwrite=False):
    """Write ``<out>/<name>.inter`` and ``<out>/<name>.item``; return counts."""
    for fname in ("Scientific.text", "Scientific.item2index", "Scientific.user2index",
                  "Scientific.train.inter", "Scientific.valid.inter", "Scientific.test.inter"):
        if not os.path.isfile(os.path.join(src, fname)):
            raise DataError(f"{os.path.join(src, fname)} not found: point --src at the "
                            "folder holding the Scientific.* files")
    items = _read_index(os.path.join(src, "Scientific.item2index"))
    users = _read_index(os.path.join(src, "Scientific.user2index"))
    seqs = rebuild_sequences(src)

    inter_rows = []
    for user in sorted(seqs):
        for pos, item in enumerate(seqs[user]):
            inter_rows.append((users[user], items[item], str(pos)))

    texts = {}
    with open(os.path.join(src, "Scientific.text"), encoding="utf-8") as f:
        f.readline()
        for line in f:
            asin, text = line.rstrip("\n").split("\t", 1)
            texts[asin] = split_text(text)
    item_rows = [(asin,) + texts.get(asin, ("", "", "")) for asin in items]

    write_atomic_files(
        out, name,
        inter=(["user_id:token", "item_id:token", "timestamp:float"], inter_rows),
        item=(["item_id:token", "title:token_seq", "categories:token_seq", "brand:token"], item_rows),
        overwrite=overwrite,
        drop=("review",),  # another conversion's reviews in this folder: other data, which LLMMTL reads
    )
    return {"users": len(seqs), "items": len(items), "interactions": len(inter_rows),
            "items_without_categories": sum(1 for r in item_rows if not r[2])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="folder with the Scientific.* files")
    parser.add_argument("--out", default="dataset/amazon", help="output dataset folder")
    parser.add_argument("--name", default="amazon", help="dataset name (file prefix)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    try:
        stats = convert(args.src, args.out, args.name, args.overwrite)
    except DataError as e:
        sys.exit(report(e))
    print(", ".join(f"{k}: {v:,}" for k, v in stats.items()))


if __name__ == "__main__":
    main()
