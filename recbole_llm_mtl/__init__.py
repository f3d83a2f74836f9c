"""recbole-llm-mtl: an LLM-based multi-task recommender (LLMMTL) as a RecBole plugin."""

__version__ = "0.1.0"
