"""Train and evaluate LLMMTL or any RecBole model: the library call and the CLI.

``python run_recbole_llm.py --model=LLMMTL --dataset=amazon [--config_files="a.yaml b.yaml"]
[--key=value ...]`` follows RecBole's ``run_recbole.py``.
"""

import argparse
import logging
import os
import sys
import time
from logging import getLogger

import torch
from recbole.data.utils import get_dataloader
from recbole.utils import init_logger, init_seed, set_color

from recbole_llm_mtl.build import build
from recbole_llm_mtl.config import build_config
from recbole_llm_mtl.data.dataset import readable_files
from recbole_llm_mtl.errors import ConfigError, LLMMTLError
from recbole_llm_mtl.trainer import kept_epoch, make_trainer, plain_config


def evaluate_cold_and_warm(trainer, config, eval_data, split, show_progress):
    """``split`` ("valid" or "test") metrics on the rows whose target is a cold item, and on
    the others, with the weights the trainer holds (the best model, loaded by the caller)."""
    data = eval_data._dataset
    cold = data.cold_items[data.inter_feat[data.iid_field]]
    out = {}
    for name, mask in ((f"{split}_cold", cold), (f"{split}_warm", ~cold)):
        subset = data.copy(data.inter_feat[torch.nonzero(mask).flatten()])
        loader = get_dataloader(config, split)(config, subset, eval_data._sampler, shuffle=False)
        out[name] = dict(trainer.evaluate(loader, load_best_model=False, show_progress=show_progress))
        out[name]["rows"] = int(mask.sum())
    return out


def evaluate_split(trainer, config, eval_data, split, load_best_model):
    """Metrics of the best model on ``split``, its per-user NDCG@10 keyed by external user
    id (so rows of different models pair up) and, under the cold-start protocol, the
    cold/warm breakdown. Returns (result, per_user, cold_warm)."""
    show = config["show_progress"]
    result = dict(trainer.evaluate(eval_data, load_best_model=load_best_model, show_progress=show))
    per_user = trainer.last_per_user()
    if per_user is not None:
        dataset = eval_data._dataset
        tokens = dataset.id2token(dataset.uid_field, list(per_user))
        per_user = dict(zip(map(str, tokens), per_user.values()))
    cold_warm = evaluate_cold_and_warm(trainer, config, eval_data, split, show) if config["cold_item_ratio"] else {}
    return result, per_user, cold_warm


def text_dtype(config):
    """The dtype LLMMTL's language model ran in (``llm_dtype: auto`` resolved on this
    machine), or None for models that read no text."""
    if "llm_dtype" not in config:
        return None
    from recbole_llm_mtl.text.encoder import resolve_dtype

    return resolve_dtype(config["llm_dtype"], config["device"], config["llm_mode"] != "frozen")


def run(model, dataset, config_file_list=None, config_dict=None, cmd_overrides=None,
        saved=True, resume=None, evaluate_test=True, on_built=None, recorded=False):
    """Train on the train split with early stopping on valid, then test the best model.

    ``evaluate_test=False`` (tuning runs) never reads the test split: selection is made on
    valid alone. ``on_built(built, trainer)``, if given, sees the dataset, loaders, model
    and trainer before training (the leakage tests inspect what the model is built from).
    Returns a dict with best valid/test results (and cold/warm ones under the cold-start
    protocol, for valid as well, so protocol choices can be made on valid), per-user
    NDCG@10, the resolved config, the checkpoint path and timings. ``recorded``: see
    :func:`~recbole_llm_mtl.config.build_config` (re-making a run from its recorded config).
    """
    started = time.time()
    config = build_config(model, dataset, config_file_list, config_dict, cmd_overrides, recorded=recorded)
    init_seed(config["seed"], config["reproducibility"])
    # RecBole creates these with makedirs(exist_ok=False): ranks starting together race
    for folder in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
        os.makedirs(folder, exist_ok=True)
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    files = readable_files(config)  # before reading: a file added during the run is new to it
    built = build(config, log=logger)
    _, _, train_data, valid_data, test_data, net = built
    trainer = make_trainer(config, net)
    if resume:
        trainer.resume_checkpoint(resume)
    if on_built:
        on_built(built, trainer)

    earlier = trainer.seconds_before  # seconds of the parts before a resume
    trainer.seconds_before += time.time() - started  # this part's set-up (data, text encoding)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"])
    # (epoch, valid score, seconds since start) over all parts: for time-to-quality reports
    history = trainer.history
    eval_start = time.time()
    # valid again with the best model: per-user values and cold/warm (fit keeps only means)
    _, valid_users, cold_warm = evaluate_split(trainer, config, valid_data, "valid", saved)
    test_result, test_users = {}, None
    if evaluate_test:
        test_result, test_users, test_cold_warm = evaluate_split(trainer, config, test_data, "test", False)
        cold_warm.update(test_cold_warm)
    eval_seconds = time.time() - eval_start

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    best_epoch = kept_epoch(history, config["valid_metric_bigger"])
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": dict(best_valid_result or {}),
        "test_result": dict(test_result),
        "best_epoch": best_epoch,
        "epochs": trainer.epochs_trained,
        "fit_seconds": trainer.fit_seconds,
        "eval_seconds": eval_seconds,
        "total_seconds": earlier + time.time() - started,
        "history": history,
        "checkpoint": os.path.abspath(trainer.saved_model_file) if saved else None,
        "resumed_at_epoch": trainer.start_epoch if resume else None,
        # what the run was, as plain data: the resolved config and what the user set
        "config": plain_config(config.final_config_dict),
        "config_input": plain_config(config.external_config_dict),
        "text_dtype": text_dtype(config),
        # what the model used, where it says (LLMMTL: a part its config asks for may have no data)
        "parts": trainer.model.parts() if hasattr(trainer.model, "parts") else None,
        "results_version": getattr(trainer.model, "RESULTS_VERSION", None),
        # which data: a hash of every atomic file read (row order aside)
        "data_fingerprint": getattr(built.dataset, "data_fingerprint", {}),
        # ... and every file it could have read: a file added later may be read by a rerun
        "data_files": files,
        "per_user_ndcg@10": {"valid": valid_users, "test": test_users},
        **cold_warm,
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Train and evaluate LLMMTL or any RecBole model on a RecBole dataset.",
        epilog="Any other --key=value overrides that config key (values are parsed like RecBole's).")
    parser.add_argument("--model", "-m", default="LLMMTL", help="LLMMTL or a RecBole model name")
    parser.add_argument("--dataset", "-d", default="amazon", help="dataset name (folder under data_path)")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    parser.add_argument("--resume", default=None, help="checkpoint to resume training from")
    parser.add_argument("--valid_only", action="store_true",
                        help="train and select on valid; never read the test split (for tuning decisions)")
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine")
    parser.add_argument("--world_size", type=int, default=-1, help="total processes (several machines)")
    parser.add_argument("--ip", default="localhost", help="address of the rank-0 machine")
    parser.add_argument("--port", default="5678", help="port of the rank-0 machine")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank of this machine's first process")
    return parse_with_overrides(parser, argv)


def parse_with_overrides(parser, argv):
    """``parser``'s own arguments, plus every other ``--key=value`` as a config override."""
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for arg in rest:
        if not arg.startswith("--") or "=" not in arg:
            parser.error(f"unrecognized argument '{arg}': config overrides are written --key=value")
        key, value = arg[2:].split("=", 1)
        overrides[key] = value
    return args, overrides


def check_launch_args(args):
    """The arguments that are not config keys, before anything starts: a bad process-group
    value was a gloo error or a hang, ``--nproc=0`` and ``--resume=`` were silently ignored."""
    if args.resume == "":
        raise ConfigError("--resume needs a checkpoint path (saved/<model>-<time>-<id>-last.pth)")
    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc} is not allowed: expected a positive integer (processes on this machine)")
    if args.world_size != -1 and args.world_size < args.nproc:
        raise ConfigError(f"--world_size {args.world_size} is not allowed: expected -1 (the same as --nproc) or "
                          f"at least --nproc ({args.nproc}): the processes of all machines together")
    world = args.nproc if args.world_size == -1 else args.world_size
    if not 0 <= args.group_offset <= world - args.nproc:
        raise ConfigError(f"--group_offset {args.group_offset} is not allowed: expected 0 to {world - args.nproc} "
                          "(world_size - nproc): the global rank of this machine's first process")
    if not str(args.port).isdigit() or not 0 < int(args.port) < 65536:
        raise ConfigError(f"--port {args.port!r} is not allowed: expected a port number from 1 to 65535")


def _log_to_file(message):
    """The run's log file keeps the error; stderr shows it once, as the ``error:`` line."""
    root = logging.getLogger()
    record = root.makeRecord(root.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def main(argv=None):
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    files = args.config_files.split() if args.config_files else None
    try:
        check_launch_args(args)
        if args.nproc > 1 or args.world_size > 1:
            from recbole_llm_mtl.distributed import run_distributed

            # check config and data here: an error inside a spawned rank is a traceback
            build_config(args.model, args.dataset, files, cmd_overrides=overrides)
            result = run_distributed(args, files, overrides)[0]
            result["resumed_at_epoch"] = None
        else:
            result = run(args.model, args.dataset, files, cmd_overrides=overrides, resume=args.resume,
                         evaluate_test=not args.valid_only)
    except LLMMTLError as e:
        _log_to_file(str(e))
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result["resumed_at_epoch"] is not None:
        print(f"resumed from {args.resume} at epoch {result['resumed_at_epoch']}")
    print(f"best valid: {result['best_valid_result']}")
    print(f"test result: {result['test_result'] or '(not read: --valid_only)'}")
    if result["checkpoint"]:
        print(f"checkpoint: {result['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
