"""Weights trained in a DeepSpeed learner reach a running vLLM engine exactly.

Real engines throughout: a DeepSpeed learner actor trains a few steps, its weights go to a vLLM
engine actor that keeps running, and vLLM's greedy output must then equal transformers' greedy
output from the learner's own weights, token for token, for a dense and a mixture-of-experts
model. The engine's sampled-token logprobs must match the learner's to fp32 precision.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch

from rlstack.learner.group import LearnerGroup
from rlstack.learner.worker import ModelSpec
from rlstack.model.build import load_causal_lm, new_causal_lm, save_model
from rlstack.model.tokenizer import format_prompt
from rlstack.rollout.group import RolloutGroup
from rlstack.stages.batches import encode, rollout_batch

PROMPTS = ["12+7", "To be, or not to be", "a" * 40, "The quick brown fox jumps over the lazy dog"]
GREEDY = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 24}
ROLLOUT = {
    "num_engines": 1,
    "cpus_per_engine": 0.5,
    "gpus_per_engine": 0.0,
    "threads": 1,
    "kv_cache_gib": 1,
    "gpu_memory_utilization": 0.5,
    "max_num_seqs": 64,
    "dtype": "float32",
}


def model_cfg(arch: str) -> SimpleNamespace:
    return SimpleNamespace(
        arch=arch,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        ffn_size=128,
        expert_size=64,
        num_experts=4,
        experts_per_token=2 if arch == "qwen3_moe" else 1,
        max_seq_len=256,
        rope_theta=10000.0,
    )


def hf_greedy(model, prompt_ids: list[list[int]], eos: int, pad: int) -> list[list[int]]:
    out = []
    for ids in prompt_ids:
        x = torch.tensor([ids])
        gen = model.generate(
            x,
            max_new_tokens=GREEDY["max_tokens"],
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        out.append(gen[0, len(ids) :].tolist())
    return out


@pytest.mark.parametrize(
    "arch,eager",
    [("llama", True), ("llama4", True), ("qwen3_moe", True), ("llama4", False)],
    ids=["llama", "llama4", "qwen3_moe", "llama4-compiled"],
)
def test_synced_engine_matches_learner_greedy_and_logprobs(arch, eager, ray_local, tmp_path):
    init_dir, trained_dir = tmp_path / "init", tmp_path / "trained"
    model, tokenizer = new_causal_lm(model_cfg(arch), seed=0)
    save_model(model, tokenizer, init_dir)
    prompt_ids = [encode(tokenizer, format_prompt(tokenizer, p)) for p in PROMPTS]

    spec = ModelSpec(
        kind="causal_lm",
        init_path=str(init_dir),
        threads=1,
        micro_batch_size=8,
        optim={
            "lr": 1e-2,
            "betas": [0.9, 0.95],
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "warmup_steps": 0,
            "min_lr_ratio": 1.0,
        },
        total_steps=10,
    )
    learner = LearnerGroup("policy", spec, cpus_per_worker=0.5, env_vars=ray_local).start()
    rollout_cfg = {**ROLLOUT, "enforce_eager": eager}
    rollout = RolloutGroup(str(init_dir), rollout_cfg, 256, seed=0, env_vars=ray_local).start()
    try:
        before = rollout.generate(prompt_ids, 1, GREEDY, seed=0)["samples"]

        # Train on a fixed pattern so the weights (and greedy outputs) move far from init.
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(10, 100, (8, 64), generator=gen)
        batch = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "loss_mask": torch.ones_like(ids),
        }
        for _ in range(5):
            learner.train("lm_step", batch)
        rollout.update_weights(learner.weights_blob_ref())
        learner.save(str(trained_dir))

        after = rollout.generate(prompt_ids, 1, GREEDY, seed=0)["samples"]
        trained = load_causal_lm(trained_dir).eval()
        expected = hf_greedy(trained, prompt_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
        assert [s["response_ids"] for s in after] == expected
        # The check can fail: without the sync the engine would still answer as before.
        assert [s["response_ids"] for s in before] != expected

        sampled = rollout.generate(prompt_ids, 4, {**GREEDY, "temperature": 1.0}, seed=1)
        batch = rollout_batch(prompt_ids, sampled["samples"], tokenizer.pad_token_id)
        learner_logprobs = learner.infer("logprobs", batch, 1.0)
        diff = (learner_logprobs - batch["rollout_logprobs"]).abs() * batch["mask"]
        assert batch["mask"].sum() > 0
        assert diff.max().item() < 1e-4

        if arch == "llama":
            # Hundreds of long prompts at once: vLLM splits their prefill over several steps, and
            # seeded sampling must still work on CPU ("CPU Generator does not use offset").
            many = [
                encode(tokenizer, format_prompt(tokenizer, f"{i} " + "x" * 180)) for i in range(300)
            ]
            out = rollout.generate(many, 1, {**GREEDY, "temperature": 1.0, "max_tokens": 4}, seed=3)
            assert len(out["samples"]) == 300

        # vLLM's rendezvous file lands in the engine's own temporary directory, removed with it.
        scratch = Path(ray.get(rollout.engines[0].scratch_dir.remote()))
        assert any(p.name.startswith("vllm_dist_") for p in scratch.iterdir())
        rollout.shutdown()
        assert not scratch.exists()
    finally:
        rollout.shutdown()
        learner.shutdown()


def test_prefix_caching_is_off_only_where_it_can_share_nothing():
    from rlstack.rollout.engine import CPU_KV_BLOCK, use_prefix_caching

    # Explicit settings win.
    assert use_prefix_caching(True, on_gpu=False, longest_prompt=4) is True
    assert use_prefix_caching(False, on_gpu=True, longest_prompt=1000) is False
    # Automatic: off for CPU engines whose prompts all fit in less than one KV block.
    assert use_prefix_caching(None, on_gpu=False, longest_prompt=CPU_KV_BLOCK - 1) is False
    assert use_prefix_caching(None, on_gpu=False, longest_prompt=CPU_KV_BLOCK) is True
    assert use_prefix_caching(None, on_gpu=True, longest_prompt=4) is True
    assert use_prefix_caching(None, on_gpu=False, longest_prompt=None) is True
