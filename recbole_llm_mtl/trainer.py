"""Trainer additions shared by LLMMTL and every RecBole baseline run through our CLI.

RecBole pickles its whole ``Config`` into checkpoints, which torch>=2.6 refuses to load
(``weights_only=True``). We write checkpoints whose config is a plain dict, so they load
with ``weights_only=True``: no pickle code runs, whoever wrote the file.
"""

import os
import tempfile
from enum import Enum

import torch
from recbole.utils import get_trainer, set_color

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


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by this project; anything else is refused clearly."""
    if not path or not os.path.isfile(path):
        raise ConfigError(f"checkpoint '{path}' not found (checkpoints are in saved/ by default)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for foreign/corrupt files
        raise ConfigError(f"checkpoint '{path}' is not a recbole-llm-mtl checkpoint or is corrupt "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint '{path}' was not written by recbole-llm-mtl "
                          f"(format {state.get('format') if isinstance(state, dict) else None!r})")
    return state


class CheckpointMixin:
    """Mixed in front of the RecBole trainer class chosen for the model."""

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        path = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": self.config["model"],
            "config": plain_config(self.config.final_config_dict),  # for reading
            # what the user set (YAML files + overrides): rebuilds the same Config on load
            "config_input": {"dataset": self.config["dataset"],
                             **plain_config(self.config.external_config_dict)},
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)  # a reader never sees a half-written checkpoint
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {path}")

    def _load_weights(self, path):
        state = load_checkpoint(path, self.device)
        if state["model"] != self.config["model"]:
            raise ConfigError(f"checkpoint '{path}' holds a {state['model']} model, "
                              f"not {self.config['model']}")
        self.model.load_state_dict(state["state_dict"])
        self.model.load_other_parameter(state.get("other_parameter"))
        return state

    def resume_checkpoint(self, resume_file):
        state = self._load_weights(str(resume_file))
        self.saved_model_file = str(resume_file)
        self.start_epoch = state["epoch"] + 1
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model:
            path = model_file or self.saved_model_file
            self._load_weights(path)
            self.logger.info(f"Loading model structure and parameters from {path}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

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
