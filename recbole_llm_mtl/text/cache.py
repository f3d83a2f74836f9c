"""Persistent, content-keyed cache of text vectors.

The key hashes everything the vectors depend on (the language model's files, pooling,
max length, dtype and the exact texts), never file names or dates, so any change means a
new key. Files are safetensors (no pickle), written to a temp file and renamed into place,
and carry the key and a checksum of the tensor bytes: a truncated, corrupt or foreign file
is reported and rebuilt, never trusted.
"""

import hashlib
import json
import logging
import os
import tempfile

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "recbole-llm-mtl/text-cache/1"
logger = logging.getLogger(__name__)


def content_key(identity, texts):
    """sha256 over the encoder identity (a JSON-able dict) and the texts, in order."""
    h = hashlib.sha256()
    h.update(json.dumps(identity, sort_keys=True).encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _digest(tensor):
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


class VectorCache:
    """Directory of ``<key>.safetensors`` files; ``load`` returns None on any doubt."""

    def __init__(self, cache_dir):
        self.cache_dir = cache_dir

    def path(self, key):
        return os.path.join(self.cache_dir, f"{key}.safetensors")

    def load(self, key):
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                vectors = f.get_tensor("vectors")
            problem = None
            if meta.get("format") != FORMAT or meta.get("key") != key:
                problem = "written for other inputs (key mismatch)"
            elif _digest(vectors) != meta.get("sha256"):
                problem = "checksum mismatch (corrupt file)"
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
            problem = f"unreadable ({type(e).__name__}: {e})"
        if problem:
            logger.warning(f"text cache {path} is {problem}; ignoring it and re-encoding")
            return None
        return vectors

    def save(self, key, vectors, info=None):
        """Atomically write ``vectors``; a read-only cache dir only costs a warning."""
        vectors = vectors.detach().to("cpu").contiguous()
        meta = {"format": FORMAT, "key": key, "sha256": _digest(vectors)}
        meta.update({k: str(v) for k, v in (info or {}).items()})
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=self.cache_dir)
            os.close(fd)
        except OSError as e:
            logger.warning(f"text cache dir {self.cache_dir} is not writable ({e}); vectors "
                           "are used for this run but not cached (set text_cache_dir)")
            return None
        try:
            save_file({"vectors": vectors}, tmp, metadata=meta)
            os.replace(tmp, self.path(key))  # atomic: readers see the old file or the whole new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.path(key)


def cached_encode(cache, identity, texts, encode_fn):
    """Vectors for ``texts`` from ``cache`` when the key matches, else ``encode_fn(texts)``."""
    key = content_key(identity, texts)
    vectors = cache.load(key) if cache is not None else None
    if vectors is not None and vectors.shape[0] == len(texts):
        logger.info(f"text vectors loaded from cache {cache.path(key)}")
        return vectors, True
    vectors = encode_fn(texts)
    if cache is not None:
        where = cache.save(key, vectors, {"n_texts": len(texts), **identity})
        if where:
            logger.info(f"text vectors cached at {where}")
    return vectors, False
