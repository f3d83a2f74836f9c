"""Rendering RecBole item/user features as readable text for the language model.

A template is a mapping ``field -> format`` (e.g. ``{title: "{}", brand: "Brand: {}"}``);
parts are joined in order with a separator and a part whose field is empty is dropped,
so missing metadata never leaves "Brand: ." behind.
"""

import math

import numpy as np
import torch
from recbole.utils import FeatureSource, FeatureType

from recbole_llm_mtl.errors import ConfigError

PAD = "[PAD]"


def _missing(raw):
    try:
        return not math.isfinite(float(raw))
    except ValueError:
        return not raw


def raw_strings(dataset, feat, field):
    """The file's own strings of a float field, per row of ``feat``: RecBole fills missing
    floats with the mean and may normalise them, so text is never rendered from its values.
    A missing or NaN value is ``""`` (the part is left out)."""
    source = dataset.field2source[field]
    id_field = dataset.uid_field if source in (FeatureSource.USER, FeatureSource.USER_ID) else dataset.iid_field
    tokens = np.asarray(dataset.field2id_token[id_field], dtype=object)[feat[id_field].numpy()]
    raw = dataset.raw_values[field]
    values = (raw.get(t, "") for t in tokens)
    if dataset.field2type[field] == FeatureType.FLOAT:
        return ["" if _missing(v) else v for v in values]
    return list(values)


def field_strings(dataset, feat, field):
    """One string per row of ``feat`` (``dataset.item_feat``/``user_feat``) for ``field``."""
    ftype = dataset.field2type[field]
    if field in getattr(dataset, "raw_values", {}):
        return raw_strings(dataset, feat, field)
    values = feat[field]
    if ftype == FeatureType.TOKEN:
        vocab = np.asarray(dataset.field2id_token[field], dtype=object)
        out = vocab[values.numpy()]
        out[out == PAD] = ""
        return [str(v) for v in out]
    if ftype == FeatureType.TOKEN_SEQ:
        vocab = np.asarray(dataset.field2id_token[field], dtype=object)
        vocab[0] = ""
        words = vocab[values.numpy()]
        # RecBole splits text on spaces into tokens; joining them back restores it.
        return [" ".join(w for w in row if w) for row in words]
    if ftype == FeatureType.FLOAT:
        vals = values.numpy()
        return ["" if np.isnan(v) else f"{v:g}" for v in vals]
    if ftype == FeatureType.FLOAT_SEQ:
        return [" ".join(f"{v:g}" for v in row if v) for row in values.numpy()]
    raise ConfigError(f"field '{field}' has unsupported type {ftype} for text")


def render_texts(dataset, feat, template, separator, what):
    """Render every row of ``feat`` with ``template``; returns (texts, n_empty)."""
    if feat is None:
        raise ConfigError(
            f"{what} text fields {list(template)} are configured but dataset "
            f"'{dataset.dataset_name}' has no {what} feature file loaded: add "
            f"'{dataset.dataset_name}.{what}' or set {what}_text_fields: []")
    missing = [f for f in template if f not in feat.columns]
    if missing:
        raise ConfigError(
            f"{what} text field(s) {missing} not found in {dataset.dataset_name}.{what} "
            f"(loaded columns: {sorted(feat.columns)}); fix {what}_text_fields or "
            f"add the column to load_col")
    columns = [(fmt, field_strings(dataset, feat, field)) for field, fmt in template.items()]
    texts = []
    for row in zip(*(vals for _, vals in columns)):
        parts = [fmt.format(v) for (fmt, _), v in zip(columns, row) if v.strip()]
        texts.append(separator.join(parts))
    n_rows = len(feat)
    if not texts:
        texts = [""] * n_rows
    # Row 0 is RecBole's padding id: it has no text by construction.
    n_empty = sum(1 for t in texts[1:] if not t)
    return texts, n_empty


def template_from_config(fields, formats):
    """``item_text_fields`` + ``item_text_template`` -> ordered {field: format}.

    The fields list decides what is rendered; the template only formats (so a dataset's
    template can cover fields an ablation leaves out)."""
    formats = formats or {}
    for field in fields:
        fmt = formats.get(field, "{}")
        if "{}" not in fmt:
            raise ConfigError(f"text template for '{field}' must contain '{{}}', got {fmt!r}")
    return {field: formats.get(field, "{}") for field in fields}


def multi_hot(dataset, feat, fields, min_count, max_share):
    """Multi-hot tag matrix (rows of ``feat`` x tags) from token/token_seq ``fields``.

    Tags seen on fewer than ``min_count`` rows or on more than ``max_share`` of rows
    (the category root, "&") carry no signal and are dropped.
    """
    n = len(feat)
    blocks, names = [], []
    for field in fields:
        if field not in feat.columns:
            raise ConfigError(f"tag field '{field}' not found (loaded columns: "
                              f"{sorted(feat.columns)})")
        ftype = dataset.field2type[field]
        ids = feat[field]
        if ftype == FeatureType.TOKEN:
            ids = ids.unsqueeze(1)
        elif ftype != FeatureType.TOKEN_SEQ:
            raise ConfigError(f"tag field '{field}' must be token or token_seq, not {ftype}")
        vocab = len(dataset.field2id_token[field])
        onehot = torch.zeros(n, vocab)
        onehot.scatter_(1, ids.long(), 1.0)
        onehot[:, 0] = 0  # padding id is no tag
        onehot[0] = 0
        count = onehot.sum(0)
        keep = (count >= min_count) & (count <= max_share * max(n - 1, 1))
        blocks.append(onehot[:, keep])
        names += [f"{field}={dataset.field2id_token[field][i]}" for i in keep.nonzero().flatten().tolist()]
    if not blocks:
        return torch.zeros(n, 0), []
    return torch.cat(blocks, 1), names
