"""Overrides that shrink the embedded default to a model small enough for end-to-end tests,
and a builder of such a model's checkpoint for tests that start learners directly."""

from pathlib import Path
from types import SimpleNamespace

TINY = [
    "model.hidden_size=64",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "model.ffn_size=128",
    "model.expert_size=64",
    "model.max_seq_len=128",
    "learner.threads=1",
    "rollout.threads=1",
]


def save_tiny_model(path: Path, num_layers: int = 2, max_seq_len: int = 128) -> Path:
    """Save a randomly initialised tiny Llama-4-style checkpoint (seed 0) at `path`."""
    from rlstack.model.build import new_causal_lm, save_model

    cfg = SimpleNamespace(
        arch="llama4",
        hidden_size=64,
        num_layers=num_layers,
        num_heads=2,
        num_kv_heads=1,
        ffn_size=128,
        expert_size=64,
        num_experts=4,
        experts_per_token=1,
        max_seq_len=max_seq_len,
        rope_theta=10000.0,
    )
    model, tokenizer = new_causal_lm(cfg, seed=0)
    save_model(model, tokenizer, path)
    return path
