from recbole_llm_mtl.model.llmmtl import LLMMTL

__all__ = ["LLMMTL"]
