"""Train and evaluate LLMMTL (or any RecBole model) like RecBole's run_recbole.py.

    python run_recbole_llm.py --model=LLMMTL --dataset=amazon
    python run_recbole_llm.py --model=SASRec --dataset=amazon --epochs=5
"""

import sys

from recbole_llm_mtl.quick_start import main

if __name__ == "__main__":
    sys.exit(main())
