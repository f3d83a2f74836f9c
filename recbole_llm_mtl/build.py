"""config -> dataset -> loaders -> model: the one build path.

``run()`` (training), ``recommend`` (serving), ``benchmarks/speed.py`` and the tests all
build through :func:`build`, so a model is always constructed from the train split exactly
as training built it: construction-time facts (the training-item softmax, task targets,
text statistics) never see valid or test interactions.
"""

import warnings
from collections import namedtuple
from contextlib import contextmanager

from recbole.data import data_preparation
from recbole.utils import ModelType, init_seed

from recbole_llm_mtl.config import build_config, get_model_class
from recbole_llm_mtl.data.dataset import recbole_dataset_class, with_atomic_reader, with_cold_items
from recbole_llm_mtl.errors import ConfigError, DataError

Built = namedtuple("Built", "config dataset train valid test model")


@contextmanager
def recbole_warnings_filtered():
    """Hide the FutureWarnings RecBole 1.2.1 triggers in pandas and torch (``fillna(...,
    inplace=True)``, ``torch.cuda.amp.GradScaler``) on every run: the user can do nothing
    about them. Only FutureWarnings attributed to ``recbole.*`` modules are hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
        yield


def load_dataset(config, model_class):
    """The model's own dataset class if it declares one, else the one RecBole picks; with
    ``cold_item_ratio`` > 0 (sequential models), the cold-start protocol on top. Every class
    reads its files with our atomic-file reader (no pickled dataset is ever loaded)."""
    dataset_class = getattr(model_class, "dataset_class", None) or recbole_dataset_class(config)
    if config["cold_item_ratio"]:
        if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
            raise ConfigError("cold_item_ratio is implemented for sequential models only")
        dataset_class = with_cold_items(dataset_class)
    return with_atomic_reader(dataset_class)(config)


def build(config, log=None, serving=False):
    """Dataset, train/valid/test loaders and the model (on ``config["device"]``) for a ready
    ``config``. ``log`` (a logger), if given, records the dataset and the model. ``serving``:
    the model only scores, so user texts are encoded when a user is scored rather than for
    every training position up front (the same texts: one ``key()`` decides both)."""
    model_class = get_model_class(config["model"])
    init_seed(config["seed"], config["reproducibility"])
    with recbole_warnings_filtered():
        try:
            dataset = load_dataset(config, model_class)
        except ValueError as e:  # the files were checked: RecBole's filters left nothing
            if "feat is empty" not in str(e):
                raise
            filters = {k: config[k] for k in ("user_inter_num_interval", "item_inter_num_interval",
                                               "val_interval", "filter_inter_by_user_or_item") if config[k]}
            raise DataError(f"no rows of {config['dataset']} (interactions, or the users or items they "
                            f"name) are left after RecBole's filters ({filters}); loosen them") from None
        if log:
            log.info(dataset)
        try:
            train, valid, test = data_preparation(config, dataset)
        except ValueError as e:  # torch's sampler refuses an empty train split
            if "num_samples" not in str(e):
                raise
            raise DataError(f"the train split of {config['dataset']} is empty under eval_args split "
                            f"{config['eval_args']['split']}: nothing is left to train on once valid and test "
                            "are taken; users need more interactions, or change the split") from None
    if hasattr(type(train._dataset), "prepare_text_features"):
        # text vectors, user texts, task targets: from the train split
        train._dataset.prepare_text_features(user_texts_up_front=not serving)
    # each rank of a multi-process run draws its own dropout masks
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = model_class(config, train._dataset).to(config["device"])  # train split only
    if log:
        log.info(model)
    return Built(config, dataset, train, valid, test, model)


def build_from_args(model, dataset, config_file_list=None, config_dict=None, cmd_overrides=None):
    """:func:`build` from the arguments of :func:`recbole_llm_mtl.config.build_config`."""
    return build(build_config(model, dataset, config_file_list, config_dict, cmd_overrides))
