"""rlstack: post-training language models with RL on Ray, DeepSpeed and vLLM."""

__version__ = "0.1.0"
