"""Hyperparameter tuning with RecBole's HyperTuning and a `.hyper` search space.

    python run_hyper_llm.py --model=LLMMTL --dataset=amazon --params_file=properties/hyper/LLMMTL-quick.hyper
"""

import sys

from recbole_llm_mtl.hyper import main

if __name__ == "__main__":
    sys.exit(main())
