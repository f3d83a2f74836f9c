"""Trainer additions shared by LLMMTL and every RecBole baseline run through our CLI.

RecBole pickles its whole ``Config`` into checkpoints, which torch>=2.6 refuses to load
(``weights_only=True``). We write checkpoints whose config is a plain dict, so they load
with ``weights_only=True``: no pickle code runs, whoever wrote the file.
"""

import glob
import os
import random
import tempfile
import time
import uuid
from enum import Enum

import numpy as np
import torch
from recbole.evaluator import Collector
from recbole.evaluator.metrics import NDCG
from recbole.utils import get_trainer, set_color

from recbole_llm_mtl.build import recbole_warnings_filtered
from recbole_llm_mtl.config_rules import architecture_keys
from recbole_llm_mtl.errors import ConfigError

CHECKPOINT_FORMAT = "recbole-llm-mtl/checkpoint/1"


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def plain_config(values):
    """The JSON-like part of a config dict (enums and devices are re-derived on load)."""
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in values.items() if _plain(v) and not isinstance(v, Enum)}


def latest_resume_file(checkpoint_dir):
    """The newest every-epoch resume state (``*-last.pth``) a killed run left in its own
    ``checkpoint_dir``, if any: runs that get a folder each can resume without a name."""
    found = glob.glob(os.path.join(checkpoint_dir, "*-last.pth"))
    return max(found, key=os.path.getmtime) if found else None


def load_checkpoint(path, map_location="cpu", mmap=False):
    """Load a checkpoint written by this project; anything else is refused clearly.
    ``mmap=True`` maps the tensors instead of reading them, for callers that want only the
    metadata (a fine-tuned language model's weights can be gigabytes)."""
    if path and os.path.isdir(path):
        raise ConfigError(f"checkpoint '{path}' is a folder: give a .pth file in it")
    if not path or not os.path.isfile(path):
        raise ConfigError(f"checkpoint '{path}' not found (checkpoints are in saved/ by default)")
    if os.path.getsize(path) == 0:  # what a full disk or a killed copy leaves
        raise ConfigError(f"checkpoint '{path}' is empty (0 bytes): it was not written completely")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many types for foreign/corrupt files, some without a message
        first_line = (str(e).splitlines() or [""])[0][:200]
        raise ConfigError(f"checkpoint '{path}' is not a recbole-llm-mtl checkpoint or is corrupt "
                          f"({type(e).__name__}: {first_line})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint '{path}' was not written by recbole-llm-mtl "
                          f"(format {state.get('format') if isinstance(state, dict) else None!r})")
    return state


def run_ended(cur_step, stopping_step, next_epoch, epochs):
    """Whether the epoch that wrote a resume state also ended its run: early stopping
    (RecBole stops once ``cur_step`` exceeds ``stopping_step``) or the last epoch."""
    return cur_step > stopping_step or next_epoch >= epochs


def recorded_config_input(state):
    """What the user set for the run that wrote checkpoint ``state``, dataset aside (a dataset
    is compared by name and fingerprint, not as a config key)."""
    return {k: v for k, v in state.get("config_input", {}).items() if k != "dataset"}


def recorded_results_version(record, now):
    """The model code's ``RESULTS_VERSION`` a checkpoint, resume state or run JSON was made
    under; ``now`` is the current one. Records from before versions were kept count as version
    1; a model without versions (RecBole's own) has None."""
    return record.get("results_version", 1 if now is not None else None)


def _loadable_other_parameter(model):
    """RecBole's ``other_parameter()`` minus what ``weights_only`` loading refuses.

    Submodules (FDSA's ``feature_embed_layer``) already have their weights in the state dict;
    non-tensor state (EASE's scipy matrices) is rebuilt from the dataset in ``__init__``.
    """
    return {k: v for k, v in model.other_parameter().items() if torch.is_tensor(v) or _plain(v)}


def _atomic_save(state, path):
    """torch.save through a temp file + rename: a reader never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def data_identity(dataset):
    """External user and item ids in internal-id order, and the fingerprint of the files
    read: a checkpoint's rows mean nothing without them (internal ids follow row order)."""
    ids = {f"{what}_tokens": dataset.field2id_token[field].tolist()
           for what, field in (("user", dataset.uid_field), ("item", dataset.iid_field)) if field}
    return {**ids, "fingerprint": getattr(dataset, "data_fingerprint", {})}


def kept_epoch(history, bigger=True):
    """The epoch whose model early stopping kept, from ``(epoch, valid score, ...)`` rows:
    RecBole's rule, under which a tie replaces the best (valid scores are rounded to 4
    places, so ties are common), not the first maximum."""
    kept, best = None, None
    for epoch, score, *_ in history:
        if best is None or (score >= best if bigger else score <= best):
            kept, best = epoch, score
    return kept


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


class PerUserCollector(Collector):
    """RecBole's collector that also keeps, for the last evaluation, each evaluated user's
    id and top-k hit row: RecBole drops them once the means are computed, but paired
    significance tests between models need every user's own score."""

    def __init__(self, config):
        super().__init__(config)
        self.uid_field = config["USER_ID_FIELD"]
        self._uids = []
        self.last_uids, self.last_topk = None, None

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        self._uids.append(interaction[self.uid_field].cpu())  # full ranking: one row per user

    def get_data_struct(self):
        topk = self.data_struct.get("rec.topk") if "rec.topk" in self.data_struct else None
        uids = torch.cat(self._uids) if self._uids else None
        self._uids = []
        # sampled-candidate evaluation has several rows per user: no per-user view then
        ok = topk is not None and uids is not None and len(uids) == len(topk)
        self.last_uids, self.last_topk = (uids, topk.cpu()) if ok else (None, None)
        return super().get_data_struct()


def per_user_ndcg(config, uids, topk, k=10):
    """{internal user id: NDCG@k} from a top-k hit matrix, computed by RecBole's own NDCG so
    the per-user values average to the reported metric."""
    metric = NDCG(config)
    pos_index, pos_len = metric.used_info({"rec.topk": topk})
    values = metric.metric_info(pos_index, pos_len)[:, k - 1]
    return dict(zip(uids.tolist(), values.tolist()))


def architecture_differences(saved_config, config):
    """``key saved (checkpoint) vs now`` for each key that shapes the model and differs."""
    now = plain_config(config.final_config_dict)
    return [f"{key} {saved_config[key]!r} (checkpoint) vs {now[key]!r} (now)"
            for key in architecture_keys(config["model"])
            if key in saved_config and key in now and saved_config[key] != now[key]]


def state_dict_differences(saved, model):
    """What keeps ``saved`` from loading into ``model``: missing, extra and resized tensors
    (e.g. another dataset's item count), named in one short line."""
    current = model.state_dict()
    out = [f"{k} missing" for k in current if k not in saved]
    out += [f"{k} unexpected" for k in saved if k not in current]
    out += [f"{k} {list(saved[k].shape)} (checkpoint) vs {list(v.shape)} (now)"
            for k, v in current.items() if k in saved and saved[k].shape != v.shape]
    return out[:3] + ([f"{len(out) - 3} more"] if len(out) > 3 else [])


class CheckpointMixin:
    """Mixed in front of the RecBole trainer class chosen for the model."""

    def __init__(self, config, model):
        # RecBole wraps DDP with device_ids=[rank], which only exists on GPUs
        cpu_ddp = not config["single_spec"] and config["device"].type == "cpu"
        if cpu_ddp:
            config["single_spec"] = True
        super().__init__(config, model)
        # RecBole names the file after the second it started: two runs started together in
        # one folder (a parallel sweep) would share, and overwrite, one checkpoint
        self.saved_model_file = f"{self.saved_model_file[: -len('.pth')]}-{uuid.uuid4().hex[:6]}.pth"
        # progress over all parts of a run (a resumed run continues these)
        self.history = []        # (epoch, valid score, seconds since the run started)
        self.fit_seconds = 0.0   # seconds spent in fit()
        self.seconds_before = 0.0  # run seconds before this part's fit(): set-up, earlier parts
        self._finished = False   # resumed from a run whose training had already stopped
        self.eval_collector = PerUserCollector(config)
        if cpu_ddp:
            from torch.nn.parallel import DistributedDataParallel

            config["single_spec"] = False
            self.distributed_model = DistributedDataParallel(self.model)
        if not config["single_spec"]:
            from recbole_llm_mtl.distributed import broadcast_object

            # every rank must name (and later load) rank 0's checkpoint file
            self.saved_model_file = broadcast_object(self.saved_model_file)

    def _state(self, epoch):
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.config["model"],
            "config": plain_config(self.config.final_config_dict),  # for reading
            # what the user set (YAML files + overrides): rebuilds the same Config on load
            "config_input": {"dataset": self.config["dataset"],
                             **plain_config(self.config.external_config_dict)},
            # which code computed it: resuming under another version would mix two models
            "results_version": getattr(self.model, "RESULTS_VERSION", None),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": _loadable_other_parameter(self.model),
            "optimizer": self.optimizer.state_dict(),
            # ids and data fingerprint (a trainer used without fit() has no data to record)
            "data": data_identity(self._train_data._dataset) if hasattr(self, "_train_data") else None,
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        _atomic_save(self._state(epoch), path)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    @property
    def resume_file(self):
        """Written after every epoch: ``--resume`` from it continues exactly where a killed
        run stopped (weights, optimizer, early-stopping state and every RNG)."""
        return self.saved_model_file[: -len(".pth")] + "-last.pth"

    def _save_resume_state(self, epoch):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        state = self._state(epoch)
        np_state = np.random.get_state()
        state.update({
            "best_file": self.saved_model_file,
            "best_valid_result": {k: float(v) for k, v in (self.best_valid_result or {}).items()},
            "history": [list(h) for h in self.history],
            "fit_seconds": self.fit_seconds,
            # slows training, not the numbers; a run that adopts this state reports its timing by it
            "autograd_anomaly": torch.is_anomaly_enabled(),
            "rng": {"torch": torch.get_rng_state(), "loader": self._train_data.generator.get_state(),
                    "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                    "python": _to_lists(random.getstate())},
        })
        _atomic_save(state, self.resume_file)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._train_data = train_data
        rng = getattr(self, "_resume_rng", None)
        if rng is not None:  # continue the random streams of the killed run
            torch.set_rng_state(rng["torch"])
            train_data.generator.set_state(rng["loader"])
            np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))
            random.setstate(_to_tuples(rng["python"]))
        if self._finished:
            # RecBole would train again (or overwrite the best checkpoint with the last weights)
            self.logger.info(f"training had stopped at epoch {self.start_epoch - 1}; "
                             "nothing left to train, its best model is tested")
            return self.best_valid_score, self.best_valid_result
        if saved:
            self.logger.info(f"resume state is saved after every epoch to {self.resume_file}")
        fit_start, fit_before = time.time(), self.fit_seconds

        def after_epoch(epoch_idx, valid_score):
            now = time.time() - fit_start
            self.history.append((epoch_idx, float(valid_score), self.seconds_before + now))
            self.fit_seconds = fit_before + now
            if saved:
                self._save_resume_state(epoch_idx)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        with recbole_warnings_filtered():  # RecBole's torch.cuda.amp.GradScaler, every epoch
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, after_epoch)
        self.fit_seconds = fit_before + time.time() - fit_start
        return result

    @property
    def epochs_trained(self):
        """Epochs over all parts of the run."""
        return max(self.train_loss_dict, default=self.start_epoch - 1) + 1

    def _load_weights(self, path, state=None):
        state = state or load_checkpoint(path, self.device)
        if state["model"] != self.config["model"]:
            raise ConfigError(f"checkpoint '{path}' holds a {state['model']} model, "
                              f"not {self.config['model']}")
        differences = architecture_differences(state.get("config", {}), self.config)
        if differences:
            raise ConfigError(f"checkpoint '{path}' has another architecture: {'; '.join(differences)}. "
                              "Use the checkpoint's values to resume it, or start a new run")
        try:
            self.model.load_state_dict(state["state_dict"])
        except RuntimeError as e:  # torch's message spans many lines: name the tensors instead
            details = state_dict_differences(state["state_dict"], self.model) or [str(e).splitlines()[0]]
            raise ConfigError(f"checkpoint '{path}' does not fit this model: {'; '.join(details)}. "
                              "Was it trained on other data or with another config?") from e
        self.model.load_other_parameter(state.get("other_parameter"))
        return state

    def resume_checkpoint(self, resume_file):
        state = load_checkpoint(str(resume_file), self.device)
        # checked before the weights load: a fix that also changed a shape would otherwise read
        # as "does not fit"; one that changed none would load and mix two models
        now = getattr(self.model, "RESULTS_VERSION", None)
        was = recorded_results_version(state, now)
        if was != now:
            raise ConfigError(f"checkpoint '{resume_file}' was trained by {self.config['model']} code of results "
                              f"version {was}; this code computes version {now} (a fix changed what training "
                              "computes). Start a new run instead of resuming it")
        self._load_weights(str(resume_file), state)
        self.start_epoch = state["epoch"] + 1
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.optimizer.load_state_dict(state["optimizer"])
        if "rng" in state:  # an every-epoch resume state: keep writing the same files
            self.saved_model_file = state["best_file"]
            self.best_valid_result = state["best_valid_result"]
            self._resume_rng = state["rng"]
            self.history = [tuple(h) for h in state.get("history", [])]
            self.fit_seconds = state.get("fit_seconds", 0.0)
            self.seconds_before = self.history[-1][2] if self.history else 0.0
            # the epoch that wrote it also ended training: early stop, or the last epoch
            self._finished = run_ended(self.cur_step, self.stopping_step, self.start_epoch, self.epochs)
        else:  # a best-model checkpoint: continue from it (RecBole's behaviour)
            self.saved_model_file = str(resume_file)
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and not self.config["single_spec"]:
            from recbole_llm_mtl.distributed import barrier

            barrier()  # rank 0 may still be writing the best checkpoint
        if load_best_model:
            path = model_file or self.saved_model_file
            self._load_weights(path)
            self.logger.info(f"Loading model structure and parameters from {path}")
        with recbole_warnings_filtered():
            return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def last_per_user(self, k=10):
        """{internal user id: NDCG@k} of the last :meth:`evaluate` (None where unavailable)."""
        c = self.eval_collector
        return per_user_ndcg(self.config, c.last_uids, c.last_topk, k) if c.last_topk is not None else None

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        names = getattr(self.model, "loss_names", None)
        if not isinstance(losses, tuple) or not names or len(names) != len(losses):
            return super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        parts = ", ".join(f"{set_color(n, 'blue')}: {l:.4f}" for n, l in zip(names, losses))
        return (set_color("epoch %d training", "green") + " [" + set_color("time", "blue")
                + ": %.2fs, " + set_color("train_loss", "blue") + ": %.4f, %s]") % (
                    epoch_idx, e_time - s_time, sum(losses), parts)


def make_trainer(config, model):
    """RecBole's trainer for this model type, with our checkpointing mixed in."""
    base = get_trainer(config["MODEL_TYPE"], config["model"])
    cls = type(base.__name__, (CheckpointMixin, base), {"__module__": __name__})
    return cls(config, model)
