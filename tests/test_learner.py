"""DeepSpeed learner groups on the real engine: data-parallel ranks over gloo and ZeRO stages."""

import os
from types import SimpleNamespace

import pytest
import ray
import torch

from rlstack.learner.group import LearnerGroup
from rlstack.learner.worker import ModelSpec
from rlstack.model.build import load_causal_lm, new_causal_lm, save_model

OPTIM = {
    "lr": 3e-3,
    "betas": [0.9, 0.95],
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "warmup_steps": 0,
    "min_lr_ratio": 1.0,
}


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    cfg = SimpleNamespace(
        arch="llama4",
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        ffn_size=128,
        expert_size=64,
        num_experts=4,
        experts_per_token=1,
        max_seq_len=128,
        rope_theta=10000.0,
    )
    model, tokenizer = new_causal_lm(cfg, seed=0)
    path = tmp_path_factory.mktemp("init")
    save_model(model, tokenizer, path)
    return path


def pattern_batch(n: int = 8) -> dict[str, torch.Tensor]:
    ids = torch.arange(32).repeat(n, 1) % 7 + 10  # a repeating pattern the model can fit
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "loss_mask": torch.ones_like(ids),
    }


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_ranks_train_in_step_and_save_one_checkpoint(zero_stage, init_dir, ray_local, tmp_path):
    spec = ModelSpec(
        kind="causal_lm",
        init_path=str(init_dir),
        optim=OPTIM,
        total_steps=10,
        zero_stage=zero_stage,
        micro_batch_size=4,
        threads=1,
    )
    group = LearnerGroup(
        "policy", spec, num_workers=2, cpus_per_worker=0.5, env_vars=ray_local
    ).start()
    try:
        losses = [group.train("lm_step", pattern_batch())["loss"] for _ in range(8)]
        assert losses[-1] < 0.7 * losses[0]
        # Both ranks hold the same weights: the same batch gives the same loss on each.
        evals = ray.get([w.lm_eval.remote(pattern_batch(2)) for w in group.workers])
        assert evals[0]["loss_sum"] == pytest.approx(evals[1]["loss_sum"], rel=1e-6)
        group.save(str(tmp_path / "ckpt"))
        rendezvous_dir = os.path.dirname(group._store)
        assert os.path.isdir(rendezvous_dir)
    finally:
        group.shutdown()
    assert not os.path.exists(rendezvous_dir)  # the file store does not outlive the group
    saved = load_causal_lm(tmp_path / "ckpt").eval()
    batch = pattern_batch(2)
    with torch.no_grad():
        logits = saved(input_ids=batch["input_ids"]).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), batch["input_ids"][:, 1:], reduction="sum"
    )
    assert nll.item() == pytest.approx(evals[0]["loss_sum"], rel=1e-4)
