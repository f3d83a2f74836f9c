"""Convert raw Amazon review data (2018 or 2023 releases) into RecBole atomic files with text.

    python -m recbole_llm_mtl.data.amazon_raw --release 2023 \
        --splits ../shared/data/amazon-beauty-2023-mini/All_Beauty \
        --meta ../shared/data/amazon-beauty-2023-mini/meta_items.csv \
        --reviews ../shared/data/amazon-beauty-2023-mini/user_reviews.json \
        --out dataset/beauty --name beauty

Inputs (each read line by line, ``.gz`` or plain, so files larger than memory work):

* 2018: ``--ratings`` CSV ``item,user,rating,timestamp`` (no header) or ``--reviews`` JSON
  lines (``reviewerID, asin, overall, unixReviewTime, reviewText, summary``), and
  ``--meta`` ``meta_<Category>.json(.gz)`` (``asin, title, brand, category, description,
  price``; old dumps write Python literals, which are read too).
* 2023: ``--reviews`` JSON lines (``user_id, parent_asin, rating, timestamp`` in ms,
  ``title, text``) and/or ``--splits PREFIX`` for the official benchmark CSVs
  ``PREFIX.{train,valid,test}.csv`` (``user_id,parent_asin,rating,timestamp,history``), and
  ``--meta`` JSON lines (``parent_asin, title, store, categories, description, price,
  details``) or a CSV with those columns.

Outputs ``<name>.inter`` (user, item, rating, timestamp in seconds), ``<name>.item`` (title,
brand, categories, description, price; HTML and boilerplate stripped) and, with review
texts, ``<name>.review`` (user, item, timestamp, text). Review texts of a user's last two
interactions (valid and test under leave-one-out by time), and any review written at or
after the valid one, are never written, so they cannot reach the model. Review texts are
never held in memory: a second streaming pass writes them once the split is known.
Malformed lines are skipped and counted in the summary.
"""

import argparse
import ast
import csv
import gzip
import html
import json
import math
import os
import re
import sys
import zlib
from collections import Counter, defaultdict
from contextlib import contextmanager

from tqdm import tqdm

from recbole_llm_mtl.data.atomic import dataset_files, output_folder, render
from recbole_llm_mtl.errors import DataError, report

_TAG = re.compile(r"<[^>]+>")
_WS = re.compile(r"\s+")
_BOILERPLATE = re.compile(r"(?i)(\[\[VIDEOID:[^\]]*\]\]|visit the .{1,60} store|click here.*$|see more product details)")


def clean_text(value):
    """Plain one-line text: lists joined, HTML tags/entities removed, whitespace collapsed."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(v) for v in value)
    text = html.unescape(_TAG.sub(" ", str(value)))
    text = _BOILERPLATE.sub(" ", text)
    return _WS.sub(" ", text).strip()


def _unreadable(path, error):
    if isinstance(error, EOFError):
        return f"{path} ends before the end of its gzip stream (truncated download?); download it again"
    return f"{path} is not a valid gzip file ({error}); decompress it again, or drop the .gz from its name " \
           "if it is plain text"


@contextmanager
def _open(path):
    """A text file, ``.gz`` or plain, without the BOM some tools write; a truncated or
    fake ``.gz`` stops with the file's name whenever it is read."""
    if not os.path.isfile(path):
        raise DataError(f"input file '{path}' not found")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
            yield f
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(_unreadable(path, e)) from None


def _records(path, stats, what):
    """Yield dicts from JSON lines (or Python-literal lines of old dumps); count bad lines."""
    with _open(path) as f:
        first = f.read(1)
        f.seek(0)
        if first == "[":  # a whole-file JSON list (as in the mini set's user_reviews.json)
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON ({e})") from None
            yield from data
            return
        for line in tqdm(f, desc=f"reading {what}", unit=" lines", mininterval=1, leave=False):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                try:
                    rec = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    stats[f"malformed {what} lines"] += 1
                    continue
            if isinstance(rec, dict):
                yield rec
            else:
                stats[f"malformed {what} lines"] += 1


def _num(x):
    """A float without exponent or trailing zeros (timestamps keep their milliseconds)."""
    return ("%.3f" % x).rstrip("0").rstrip(".")


def _seconds(ts):
    """Seconds of a raw timestamp; None for nan/inf (such a row has no place in a sequence)."""
    ts = float(ts)
    if not math.isfinite(ts):
        return None
    return ts / 1000.0 if ts > 1e11 else ts  # 2023 uses milliseconds, 2018 seconds


def _review_fields(rec, r):
    """(user, item, seconds, rating, text) of one review record (2018 or 2023 schema)."""
    user = rec.get("user_id") or r.get("user_id") or r.get("reviewerID")
    item = r.get("parent_asin") or r.get("asin")
    ts = r.get("timestamp") or r.get("unixReviewTime")
    text = clean_text(" ".join(str(x) for x in (r.get("title") or r.get("summary") or "",
                                                r.get("text") or r.get("reviewText") or "") if x))
    try:
        seconds = _seconds(ts) if ts is not None else None
    except (TypeError, ValueError):
        seconds = None
    return user, item, seconds, r.get("rating", r.get("overall")), text


def _reviews(path, stats):
    """Yield review fields; the mini set nests reviews per user, official files have one a line."""
    for rec in _records(path, stats, "review"):
        for r in rec.get("reviews", [rec]):
            fields = _review_fields(rec, r)
            if not fields[0] or not fields[1] or fields[2] is None:
                stats["reviews without user/item/time"] += 1
                continue
            yield fields


def _csv_rows(path, what):
    with _open(path) as f:
        yield from tqdm(csv.DictReader(f), desc=f"reading {what}", unit=" rows", mininterval=1, leave=False)


def _add_row(rows, stats, user, item, rating, seconds):
    if seconds is None:
        stats["rows with a nan/inf timestamp"] += 1
    else:
        rows.append((user, item, rating, seconds))


def read_interactions(args, stats):
    """(user, item, rating, seconds) tuples from the given inputs; review texts are not
    kept here (they are streamed to the output later, see :func:`write_reviews`)."""
    rows = []
    if args.splits:
        for split in ("train", "valid", "test"):
            for rec in _csv_rows(f"{args.splits}.{split}.csv", f"{split} split"):
                try:
                    _add_row(rows, stats, rec["user_id"], rec["parent_asin"], float(rec["rating"]),
                             _seconds(rec["timestamp"]))
                except (KeyError, ValueError, TypeError):
                    stats["malformed split rows"] += 1
    elif args.ratings:
        with _open(args.ratings) as f:
            for row in tqdm(csv.reader(f), desc="reading ratings", unit=" rows", mininterval=1, leave=False):
                try:
                    item, user, rating, ts = row[:4]
                    _add_row(rows, stats, user, item, float(rating), _seconds(ts))
                except ValueError:
                    stats["malformed rating rows"] += 1
    elif args.reviews:
        for user, item, ts, rating, _ in _reviews(args.reviews, stats):
            try:
                rows.append((user, item, float(rating), ts))
            except (TypeError, ValueError):
                stats["reviews without a rating"] += 1
    if not rows:
        raise DataError("no interactions read: give --splits, --ratings or --reviews")
    return rows


def write_reviews(path, f, allowed, split_time, stats, count_bad_lines):
    """Second streaming pass over the reviews: write the texts of train interactions only
    (``allowed`` (user, item) pairs, written before the user's split time) to the text file
    ``f``. Returns the number written."""
    written = 0
    f.write("user_id:token\titem_id:token\ttimestamp:float\ttext:token_seq\n")
    for user, item, ts, _, text in _reviews(path, stats if count_bad_lines else Counter()):
        if (user, item) not in allowed or ts >= split_time.get(user, float("inf")):
            if user in split_time:
                stats["held-out reviews not written"] += 1
            continue
        if text:
            f.write(f"{user}\t{item}\t{_num(ts)}\t{text}\n")
            written += 1
    return written


def read_meta(path, stats):
    """item id -> dict(title, brand, categories, description, price)."""
    items = {}
    if path.endswith(".csv") or path.endswith(".csv.gz"):
        with _open(path) as f:
            records = list(csv.DictReader(f))
    else:
        records = _records(path, stats, "meta")
    for rec in records:
        item = rec.get("parent_asin") or rec.get("asin")
        if not item:
            stats["meta without an item id"] += 1
            continue
        details = rec.get("details") or {}
        if isinstance(details, str):
            try:
                details = ast.literal_eval(details) if details.strip() else {}
            except (ValueError, SyntaxError):
                details = {}
        brand = rec.get("brand") or rec.get("store") or (details.get("Brand") if isinstance(details, dict) else "")
        cats = rec.get("categories") or rec.get("category") or []
        price = clean_text(rec.get("price")).replace("$", "").replace(",", "")
        try:
            price = f"{float(price):g}" if price else ""
        except ValueError:
            price = ""
        items[item] = {"title": clean_text(rec.get("title")), "brand": clean_text(brand),
                       "categories": clean_text(cats), "description": clean_text(rec.get("description"))[:2000],
                       "price": price}
    return items


def k_core(rows, k, stats):
    """Drop users and items with fewer than ``k`` interactions until none is left."""
    while k > 1:
        users = Counter(r[0] for r in rows)
        items = Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(rows):
            break
        stats[f"rows dropped by {k}-core"] += len(rows) - len(kept)
        rows = kept
    return rows


def convert(args):
    stats = Counter()
    out_files = [os.path.join(args.out, f"{args.name}.{x}") for x in ("inter", "item", "review")]
    existing = [p for p in out_files if os.path.exists(p)]
    if existing and not args.overwrite:
        raise DataError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    output_folder(args.out, args.name)  # before the long read: --out a file, --name a path
    rows = read_interactions(args, stats)
    if args.min_rating is not None:
        before = len(rows)
        rows = [r for r in rows if r[2] >= args.min_rating]
        stats[f"rows below rating {args.min_rating}"] += before - len(rows)
    dedup = {}
    for r in rows:  # one row per (user, item, time)
        dedup[(r[0], r[1], r[3])] = r
    stats["duplicate rows"] += len(rows) - len(dedup)
    rows = k_core(sorted(dedup.values(), key=lambda r: (r[0], r[3])), args.k_core, stats)
    meta = read_meta(args.meta, stats) if args.meta else {}
    items = sorted({r[1] for r in rows})
    stats["items without metadata"] += sum(1 for i in items if i not in meta)
    if not rows:
        raise DataError("no interactions are left after --min_rating/--k_core (" + ", ".join(
            f"{k}: {v:,}" for k, v in stats.items()) + "): nothing is written; lower --k_core or --min_rating")

    # leave-one-out: a user's last two interactions are valid/test; no review text at or
    # after the user's valid interaction is ever written
    by_user = defaultdict(list)
    for r in rows:
        by_user[r[0]].append(r)
    split_time = {u: ur[-2][3] for u, ur in by_user.items() if len(ur) >= 2}
    allowed = {(r[0], r[1]) for ur in by_user.values() for r in ur[:-2]}
    held = {(r[0], r[1]) for ur in by_user.values() for r in ur[-2:]}
    allowed -= held  # an item bought again as a held-out item keeps no review either

    # one dataset: all files replace the old ones together, or none does; without --reviews an
    # earlier conversion's <name>.review (other data) is removed, since LLMMTL would read it
    suffixes = ("inter", "item", "review") if args.reviews else ("inter", "item")
    with dataset_files(args.out, args.name, suffixes, overwrite=True, drop=() if args.reviews else ("review",)) as out:
        out["inter"].write(render(["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
                                  [(u, i, _num(rt), _num(t)) for u, i, rt, t in rows]))
        out["item"].write(render(["item_id:token", "title:token_seq", "brand:token", "categories:token_seq",
                                  "description:token_seq", "price:float"],
                                 [(i,) + tuple(meta.get(i, {}).get(f, "") for f in ("title", "brand", "categories", "description", "price"))
                                  for i in items]))
        # bad review lines were counted in the first pass when the reviews were the interactions
        count_bad = bool(args.splits or args.ratings)
        reviews = write_reviews(args.reviews, out["review"], allowed, split_time, stats, count_bad) if args.reviews else 0
    summary = {"users": len(by_user), "items": len(items), "interactions": len(rows), "reviews": reviews}
    summary.update(stats)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--release", choices=("2018", "2023"), required=True)
    parser.add_argument("--ratings", help="2018 ratings-only CSV (item,user,rating,timestamp)")
    parser.add_argument("--reviews", help="reviews JSON lines (2018 or 2023), .gz allowed")
    parser.add_argument("--splits", help="2023 benchmark split prefix: PREFIX.{train,valid,test}.csv")
    parser.add_argument("--meta", help="item metadata JSON lines (or CSV), .gz allowed")
    parser.add_argument("--out", required=True, help="output dataset folder")
    parser.add_argument("--name", required=True, help="dataset name (file prefix)")
    parser.add_argument("--k_core", type=int, default=0, help="keep users/items with >= k interactions")
    parser.add_argument("--min_rating", type=float, default=None, help="drop interactions rated below this")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    if args.release == "2018" and args.splits:
        parser.error("--splits is for the 2023 benchmark files")
    try:
        summary = convert(args)
    except DataError as e:
        sys.exit(report(e))
    for key, value in summary.items():
        print(f"{key}: {value:,}")
    return summary


if __name__ == "__main__":
    main()
