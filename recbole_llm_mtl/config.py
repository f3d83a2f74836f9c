"""Building RecBole ``Config`` objects for LLMMTL and any RecBole model.

Precedence, lowest first: RecBole's defaults < ``properties/overall.yaml`` < the dataset
YAML < the model YAML < the model's YAML for this dataset (``properties/model/<model>-<dataset>.yaml``:
values tuned on that dataset's valid split) < ``--config_files`` < command-line ``--key=value``.
"""

import difflib
import glob
import importlib
import inspect
import logging
import os
import re

import torch
import yaml
from recbole.config import Config
from recbole.model.abstract_recommender import AbstractRecommender

from recbole_llm_mtl.config_rules import validate_config, with_added_keys
from recbole_llm_mtl.data.validate import check_dataset_files
from recbole_llm_mtl.errors import ConfigError

logger = logging.getLogger(__name__)

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_RECBOLE_MODEL_MODULES = ("general_recommender", "sequential_recommender",
                          "context_aware_recommender", "knowledge_aware_recommender")


def _shipped_dir(name):
    """``properties``/``dataset`` inside an installed wheel, else in the source tree."""
    for base in (PACKAGE_DIR, os.path.dirname(PACKAGE_DIR)):
        path = os.path.join(base, name)
        if os.path.isdir(path):
            return path
    return os.path.join(os.path.dirname(PACKAGE_DIR), name)


PROPERTIES_DIR = _shipped_dir("properties")
DATASET_DIR = _shipped_dir("dataset")


def plugin_models():
    from recbole_llm_mtl.model import LLMMTL

    return {"LLMMTL": LLMMTL}


def _import_keeping_autograd_state(module_name):
    """Import a RecBole module without its side effect on autograd: RecBole 1.2.1's
    ``sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)`` at
    import, which turns anomaly detection on for the whole process, for every model (a NaN
    check after each backward op and a stack trace per forward op: FDSA's training step on
    amazon takes 1.5x as long, ``benchmarks/anomaly_probe.py``). Numbers are the same either way; a user who turned it on
    keeps it on, with its ``check_nan`` setting."""
    anomaly, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    try:
        return importlib.import_module(module_name)
    finally:
        torch.set_anomaly_enabled(anomaly, check_nan)


def recbole_models():
    """Name -> class for RecBole's built-in models (the optional lightgbm/xgboost ones
    are skipped: importing them fails when those libraries are absent)."""
    models = {}
    for sub in _RECBOLE_MODEL_MODULES:
        module = _import_keeping_autograd_state(f"recbole.model.{sub}")
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, AbstractRecommender) and not name.startswith("_"):
                models[name] = obj
    return models


def get_model_class(name):
    """Our models first, then RecBole's; a clear error lists what exists."""
    if not isinstance(name, str):
        return name
    plugins = plugin_models()
    if name in plugins:
        return plugins[name]
    builtin = recbole_models()
    if name in builtin:
        return builtin[name]
    names = list(plugins) + list(builtin)
    same_letters = [n for n in names if n.lower() == name.lower()]  # model names are case-sensitive
    close = same_letters or difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown model '{name}'.{hint} Available: {', '.join(plugins)} (ours) and "
                      f"RecBole's {', '.join(sorted(builtin))}")


def model_code_keys(model_class):
    """The ``config["key"]`` names the model's own code reads (RecBole reads some keys, e.g.
    AutoInt's ``has_residual``, that no YAML file declares): its class and base classes."""
    keys = set()
    for cls in inspect.getmro(model_class):
        try:
            source = inspect.getsource(inspect.getmodule(cls))
        except (TypeError, OSError):  # built-ins, or no source file
            continue
        keys.update(re.findall(r"config\[\s*[\"'](\w+)[\"']\s*\]", source))
    return keys


def known_config_keys():
    """Every key documented in RecBole's YAML files and ours (for typo warnings)."""
    import recbole

    keys = set()
    roots = [os.path.join(os.path.dirname(recbole.__file__), "properties"), PROPERTIES_DIR]
    for root in roots:
        for path in glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True):
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
            if isinstance(data, dict):
                keys.update(data)
    # keys RecBole sets in code rather than in YAML
    keys.update({"model", "dataset", "config_files", "data_path", "nproc", "world_size", "ip",
                 "port", "group_offset", "offset", "local_rank", "gpu_id", "use_gpu",
                 "benchmark_filename", "MODEL_TYPE", "MODEL_INPUT_TYPE", "device", "single_spec",
                 "train_neg_sample_args", "valid_neg_sample_args", "test_neg_sample_args",
                 "eval_type", "is_multi_label", "warm_up_step", "save_dataset", "save_dataloaders", "encoding"})
    return keys


def warn_unknown_keys(config_dict, source):
    known = known_config_keys()
    for key in config_dict:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            logger.warning(f"config key '{key}' from {source} is not a known RecBole/LLMMTL key "
                           f"and is probably ignored{hint}")


class LLMConfig(Config):
    """RecBole ``Config`` that takes command-line overrides as an argument instead of
    reading ``sys.argv`` (so library calls and tests are not affected by the host's argv)."""

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 cmd_overrides=None):
        self._cmd_overrides = dict(cmd_overrides or {})
        super().__init__(model, dataset, config_file_list, config_dict)

    def _load_cmd_line(self):
        return self._convert_config_dict(dict(self._cmd_overrides))

    def _load_config_files(self, file_list):
        """As RecBole reads them (its YAML loader), through :func:`read_yaml`: a file of
        comments only is empty, not a crash inside RecBole."""
        merged = {}
        for path in file_list or []:
            merged.update(read_yaml(path, self.yaml_loader))
        return merged

    def _init_device(self):
        """RecBole hard-codes NCCL for multi-process runs; CPUs need gloo."""
        if "local_rank" not in self.final_config_dict:
            return super()._init_device()
        from recbole_llm_mtl.distributed import init_process_group

        cfg = self.final_config_dict
        cfg["gpu_id"] = ",".join(map(str, cfg["gpu_id"])) if isinstance(cfg["gpu_id"], tuple) else str(cfg["gpu_id"])
        os.environ["CUDA_VISIBLE_DEVICES"] = cfg["gpu_id"]
        cfg["device"] = init_process_group(cfg)
        cfg["single_spec"] = False
        if cfg["local_rank"] != 0:  # one rank talks
            cfg.update({"state": "error", "show_progress": False, "verbose": False})

    def _set_default_parameters(self):
        # RecBole's own checks, which follow, raise bare ValueError/NotImplementedError (or
        # AttributeError on a non-string valid_metric): check the merged values first
        cfg = self.final_config_dict
        if "data_path" not in self.external_config_dict:  # RecBole's own default, 'dataset/', is relative
            # default: ./dataset/<name> when present, else the datasets shipped with us
            local = os.path.join("dataset", self.dataset)
            cfg["data_path"] = "dataset" if os.path.isdir(local) else DATASET_DIR
        elif not isinstance(cfg["data_path"], str):
            raise ConfigError(f"data_path {cfg['data_path']!r} is not allowed: expected the folder that holds "
                              f"'{self.dataset}/'")
        # before the values: a misspelt dataset would otherwise surface as a missing dataset-YAML key.
        # (RecBole reads its own copy of ml-100k, whatever data_path says.)
        if self.dataset != "ml-100k":
            _check_dataset_folder(os.path.join(cfg["data_path"], self.dataset), self.dataset)
        validate_config(cfg, self.model)
        super()._set_default_parameters()


def read_yaml(path, loader=yaml.SafeLoader):
    """One config file as a dict: empty (or comments only) is {}; a syntax error, a missing
    file or a file that is not ``key: value`` lines is one ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f.read(), Loader=loader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder: give the YAML files in it") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (bytes {e.object[e.start:e.start + 4]!r} at "
                          f"byte {e.start}); re-save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML syntax error in {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__}; a config file holds `key: value` lines")
    return data


def yaml_files(model_name, dataset):
    """Our YAML files for a run, lowest precedence first."""
    files = [os.path.join(PROPERTIES_DIR, "overall.yaml"),
             os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml"),
             os.path.join(PROPERTIES_DIR, "model", f"{model_name}.yaml"),
             os.path.join(PROPERTIES_DIR, "model", f"{model_name}-{dataset}.yaml")]
    return [f for f in files if os.path.isfile(f)]


def _check_dataset_folder(folder, name):
    """A missing dataset folder is one error naming it, with the closest dataset beside it."""
    if os.path.isdir(folder):
        return
    parent = os.path.dirname(folder) or "."
    try:
        entries = os.listdir(parent) if os.path.isdir(parent) else []
    except OSError:  # an unreadable parent costs only the hint, never the error itself
        entries = []
    found = sorted(d for d in entries if os.path.isfile(os.path.join(parent, d, f"{d}.inter")))
    close = difflib.get_close_matches(name, found, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else (f" (datasets there: {', '.join(found)})" if found else "")
    raise ConfigError(f"dataset folder '{folder}' not found. Put {name}.inter (and {name}.item) "
                      f"there, or set data_path to the folder that contains '{name}/'{hint}")


def check_dataset(config):
    """Fail early, with the path, when the dataset files are missing."""
    path, name = config["data_path"], config["dataset"]
    _check_dataset_folder(path, name)
    inter = os.path.join(path, f"{name}.inter")
    if not os.path.isfile(inter) and not config["benchmark_filename"]:
        raise ConfigError(f"'{inter}' not found: a RecBole dataset needs <name>.inter "
                          "(see README: Bring your own data)")
    load_col = config["load_col"] or {}
    for suffix in load_col:
        if suffix in ("item", "user") and not os.path.isfile(os.path.join(path, f"{name}.{suffix}")):
            raise ConfigError(f"'{os.path.join(path, f'{name}.{suffix}')}' not found but load_col "
                              f"asks for it; add the file or drop '{suffix}' from load_col")
    check_dataset_files(config)


def build_config(model, dataset, config_file_list=None, config_dict=None, cmd_overrides=None, recorded=False):
    """A ready ``Config`` for ``model`` (name or class) on ``dataset``.

    ``recorded=True``: ``config_dict`` is a run's recorded config input (what our YAML files
    said then, plus its overrides), so today's YAML files are not read: a key added to them
    since (amazon's ``item_text_views``, a tuned ``<model>-<dataset>.yaml``) would rebuild
    another model than the one that ran; a key our code added since reads as the value the
    run had (``config_rules.ADDED_KEYS``)."""
    model_class = get_model_class(model)
    if recorded:
        config_dict = with_added_keys(model_class.__name__, config_dict or {})
    user_files = list(config_file_list or [])
    for f in user_files:
        warn_unknown_keys(read_yaml(f), f)
    warn_unknown_keys(cmd_overrides or {}, "the command line")
    files = ([] if recorded else yaml_files(model_class.__name__, dataset)) + user_files
    config = LLMConfig(model=model_class, dataset=dataset, config_file_list=files,
                       config_dict=config_dict, cmd_overrides=cmd_overrides)
    check_dataset(config)
    return config
