"""Does ``eval_batch_size`` change a full-ranking result, and what does it cost in memory?

The same weights (a checkpoint, rebuilt from the config it recorded) are evaluated on valid at
each batch size, smallest first, and every user's NDCG@10 is compared with the first size's.
The RSS column is the process's high-water mark after each evaluation (data and model
included; CPU memory only): with sizes in rising order, a size that needs more than the ones
before raises it.

    python benchmarks/eval_batch_probe.py --checkpoint=<best .pth> --sizes 1024 4096
"""

import argparse
import resource
import sys
import time

from recbole.data.utils import get_dataloader

from recbole_llm_mtl.build import build
from recbole_llm_mtl.config import build_config
from recbole_llm_mtl.errors import LLMMTLError
from recbole_llm_mtl.quick_start import parse_with_overrides
from recbole_llm_mtl.trainer import load_checkpoint, make_trainer, recorded_config_input


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a best-model checkpoint (.pth)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    args, overrides = parse_with_overrides(parser, argv)  # other --key=value (data_path...): on top
    try:
        state = load_checkpoint(args.checkpoint)
    except LLMMTLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = build_config(state["model"], state["config_input"]["dataset"], config_dict=recorded_config_input(state),
                          cmd_overrides={**overrides, "show_progress": False}, recorded=True)
    built = build(config)
    built.model.load_state_dict(state["state_dict"])
    trainer = make_trainer(config, built.model)
    first = None
    print("| eval_batch_size | valid NDCG@10 | seconds | peak RSS so far (GB) | users | per-user NDCG@10 as the first |")
    print("|---|---|---|---|---|---|")
    for size in sorted(args.sizes):
        config["eval_batch_size"] = size
        loader = get_dataloader(config, "valid")(config, built.valid._dataset, built.valid._sampler, shuffle=False)
        start = time.time()
        result = trainer.evaluate(loader, load_best_model=False)
        seconds = time.time() - start
        per_user = trainer.last_per_user()
        first = per_user if first is None else first
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print(f"| {size} | {result['ndcg@10']:.4f} | {seconds:.1f} | {peak:.1f} | {len(per_user)} | "
              f"{'yes' if per_user == first else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
