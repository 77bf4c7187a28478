"""Overrides that shrink the embedded default to a model small enough for end-to-end tests."""

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
