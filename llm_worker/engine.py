"""Kept so existing imports (`bench`, tests' fixtures) still work: the llama.cpp engine lives in
`llm_worker/engines/llama_cpp.py`, the LLM seam in `llm_worker/interface.py`."""

from llm_worker.engines.llama_cpp import LlamaCppEngine
from llm_worker.interface import LLM

__all__ = ["LLM", "LlamaCppEngine"]
