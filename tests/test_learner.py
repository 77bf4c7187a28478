"""DeepSpeed learner groups on the real engine: data-parallel ranks over gloo and ZeRO stages."""

import os

import pytest
import ray
import torch
from tiny_config import save_tiny_model

from rlstack.learner.group import LearnerGroup
from rlstack.learner.worker import ModelSpec
from rlstack.model.build import load_causal_lm

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
    return save_tiny_model(tmp_path_factory.mktemp("init"))


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


def test_policy_step_reports_the_kl_of_the_policy_before_its_update(init_dir, ray_local):
    """With the KL as a loss term and one pass, the driver skips its own old-logprob pass: the
    update's first forward reports the KL to the reference (configured estimator and k3), per
    sequence, over micro-batches of unequal response lengths."""
    from rlstack.algorithms import kl_estimate

    spec = ModelSpec(
        kind="causal_lm",
        init_path=str(init_dir),
        optim=OPTIM,
        total_steps=4,
        micro_batch_size=3,
        grad_accum=2,
        threads=1,
    )
    group = LearnerGroup("policy", spec, cpus_per_worker=0.5, env_vars=ray_local).start()
    try:
        batch = pattern_batch(6)
        del batch["loss_mask"]
        mask = torch.zeros(6, 31)
        for i in range(6):
            mask[i, 10 : 12 + 3 * i] = 1.0  # response lengths 2, 5, ..., 17
        before = group.infer("logprobs", {**batch, "mask": mask}, 1.0)
        ref = before + 0.3 * torch.sin(torch.arange(31.0)) * mask
        algo = {
            "temperature": 1.0,
            "clip_low": 0.2,
            "clip_high": 0.2,
            "dual_clip": None,
            "is_cap": 2.0,
            "entropy_coef": 0.0,
            "loss_agg": "token_mean",
            "norm_const": 8.0,
            "kl_coef": 0.1,
            "kl_estimator": "k2",
            "kl_in_reward": False,
            "value_clip": 0.2,
        }
        out = group.train(
            "policy_step",
            {
                **batch,
                "mask": mask,
                "advantages": torch.randn(6, 31) * mask,
                "rollout_logprobs": before,
                "ref_logprobs": ref,
            },
            algo,
        )
        want_kl = (kl_estimate(before, ref, "k2") * mask).sum(-1).mean().item()
        want_k3 = (kl_estimate(before, ref, "k3") * mask).sum(-1).mean().item()
        assert want_kl > 0.01 and want_k3 > 0.01
        assert out["kl"] == pytest.approx(want_kl, rel=1e-4)
        assert out["kl_k3"] == pytest.approx(want_k3, rel=1e-4)
    finally:
        group.shutdown()
