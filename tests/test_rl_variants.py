"""Every on-policy algorithm and DPO runs end to end on the real engines (short runs), and the
policy-gradient estimators (GRPO, RLOO, REINFORCE++, PPO with GAE) each raise a reward that a
tiny policy can learn in a few dozen steps.

A tiny policy is pretrained and fine-tuned once; each variant then runs a few steps of its stage
from that checkpoint through the same driver and RL loop, on Ray with DeepSpeed and vLLM.
"""

import math

import pytest
from tiny_config import TINY

from rlstack.config import load_config
from rlstack.driver import run_pipeline
from rlstack.metrics import read_metrics

RL = [
    "grpo.steps=3",
    "grpo.prompts_per_step=4",
    "grpo.samples_per_prompt=4",
    "grpo.eval_prompts=8",
    "grpo.sampling.max_tokens=8",
]


@pytest.fixture(scope="module")
def sft_checkpoint(ray_local, tmp_path_factory):
    run = tmp_path_factory.mktemp("base")
    cfg = load_config(
        None,
        [
            *TINY,
            "stages=[pretrain,sft]",
            "pretrain.steps=30",
            "pretrain.seq_len=64",
            "sft.steps=60",
            "sft.batch_size=16",
        ],
    )
    run_pipeline(cfg, run)
    return str(run / "checkpoints" / "sft")


def run_stage(tmp_path, ckpt, *overrides):
    cfg = load_config(None, [*TINY, f"model.init={ckpt}", *overrides])
    run_dir = run_pipeline(cfg, tmp_path / "run")
    return read_metrics(run_dir), run_dir


def step_rows(rows, stage, key="policy_loss"):
    return [r for r in rows if r["stage"] == stage and key in r]


VARIANTS = {
    "grpo": [],
    "dr_grpo": [
        "grpo.normalize_group_std=false",
        "grpo.loss_agg=seq_mean_token_sum_norm",
        "grpo.max_staleness=0",
    ],
    "rloo": ["grpo.advantage=rloo"],
    "reinforce_pp_baseline": [
        "grpo.advantage=reinforce_pp",
        "grpo.reinforce_baseline=true",
        "grpo.kl_coef=0.01",
        "grpo.kl_estimator=k2",
    ],
    "reinforce_pp_kl_loss_adaptive": [
        "grpo.advantage=reinforce_pp",
        "grpo.samples_per_prompt=1",
        "grpo.kl_coef=0.05",
        "grpo.kl_in_reward=false",
        "grpo.kl_target=0.01",
        "grpo.kl_horizon=100",
        "grpo.dual_clip=3.0",
        "grpo.entropy_coef=0.01",
        "grpo.loss_agg=seq_mean_token_mean",
        "grpo.clip_high=0.28",
    ],
    # Refills are scored by in-process verifiers (no pool), in the driver's main thread.
    "grpo_dynamic_sampling": [
        "grpo.dynamic_sampling=true",
        "grpo.max_sampling_tries=2",
        "grpo.verifier_workers=0",
    ],
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_runs_end_to_end(name, sft_checkpoint, tmp_path):
    rows, run_dir = run_stage(tmp_path, sft_checkpoint, "stages=[grpo]", *RL, *VARIANTS[name])
    steps = step_rows(rows, "grpo")
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        for key in (
            "policy_loss",
            "entropy",
            "clip_frac",
            "reward_mean",
            "advantage_std",
            "response_length",
            "logprob_diff_mean",
            "logprob_diff_max",
        ):
            assert math.isfinite(r[key]), (key, r)
    assert (run_dir / "checkpoints" / "grpo" / "model.safetensors").is_file()
    kl_coefs = [float(o.split("=")[1]) for o in VARIANTS[name] if o.startswith("grpo.kl_coef=")]
    if kl_coefs and kl_coefs[-1] > 0:
        assert all(math.isfinite(r["kl"]) and math.isfinite(r["kl_k3"]) for r in steps)
        # The first update starts from the reference's own weights: the reference logprobs
        # (computed beside the update, for the same samples) must equal the policy's.
        assert abs(steps[0]["kl"]) < 1e-5 and abs(steps[0]["kl_k3"]) < 1e-5, steps[0]
    if "kl_target" in " ".join(VARIANTS[name]):
        assert steps[-1]["kl_coef"] != 0.05  # the adaptive controller moved the coefficient
    if name == "grpo_dynamic_sampling":
        assert all(1 <= r["dynamic_sampling/tries"] <= 2 for r in steps)


# Reward for a choice the policy can learn in a few steps whatever it knows of arithmetic: the
# share of the response's characters that are the digit 7. A sign error in an advantage, a
# loss applied to the wrong tokens or weights that never reach the engine keep it flat.
SEVENS = """
def score(prompt, response, reference, **extras):
    return response.count("7") / max(len(response), 1)
"""


LEARNERS = {
    "grpo": ("grpo", ["grpo.verifier_workers=0"]),  # scored in the driver, without a pool
    "rloo": ("grpo", ["grpo.advantage=rloo"]),
    "reinforce_pp": ("grpo", ["grpo.advantage=reinforce_pp"]),
    # PPO: GAE with a critic, on the same verifier reward instead of a reward model.
    "ppo": (
        "ppo",
        [
            "ppo.reward_source=verifier",
            "ppo.data.train=synthetic:arithmetic",
            "ppo.data.format=prompt_reference",
            "ppo.kl_coef=0",
            "ppo.critic_optim.lr=3e-3",
        ],
    ),
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_policy_gradient_raises_a_learnable_reward(name, sft_checkpoint, tmp_path):
    stage, extra = LEARNERS[name]
    plugin = tmp_path / "sevens.py"
    plugin.write_text(SEVENS)
    samples = 1 if stage == "ppo" else 8
    rows, _ = run_stage(
        tmp_path,
        sft_checkpoint,
        f"stages=[{stage}]",
        f"{stage}.verifier={plugin}:score",
        f"{stage}.steps=24",
        f"{stage}.prompts_per_step={32 // samples}",
        f"{stage}.samples_per_prompt={samples}",
        f"{stage}.sampling.max_tokens=6",
        f"{stage}.eval_every=0",
        f"{stage}.save_every=0",
        f"{stage}.optim.lr=3e-3",
        *extra,
    )
    reward = [r["reward_mean"] for r in step_rows(rows, stage)]
    assert len(reward) == 24
    first, last = sum(reward[:6]) / 6, sum(reward[-6:]) / 6
    assert last > first + 0.2, reward


def test_engine_and_learner_logprobs_agree_on_fresh_weights(sft_checkpoint, tmp_path):
    """With max_staleness 0 the engine samples with the learner's exact weights: the logprob
    mismatch metric must be at fp32 noise level at every step, weight syncs included."""
    rows, _ = run_stage(tmp_path, sft_checkpoint, "stages=[grpo]", *RL, "grpo.max_staleness=0")
    steps = step_rows(rows, "grpo")
    assert len(steps) == 3
    assert all(r["policy_version_lag"] == 0 for r in steps)
    assert max(r["logprob_diff_mean"] for r in steps) < 1e-5
    assert max(r["logprob_diff_max"] for r in steps) < 1e-3


def test_dpo_raises_the_held_out_margin(sft_checkpoint, tmp_path):
    rows, run_dir = run_stage(
        tmp_path,
        sft_checkpoint,
        "stages=[dpo]",
        "dpo.steps=20",
        "dpo.beta=0.5",
        "dpo.eval_every=0",
        "dpo.optim.lr=2e-3",
    )
    evals = [r for r in rows if r["stage"] == "dpo" and "eval/margin" in r]
    assert evals[0]["eval/margin"] == pytest.approx(0.0, abs=1e-5)
    assert evals[-1]["eval/margin"] > 0.0
    assert evals[-1]["eval/logratio"] > evals[0]["eval/logratio"]
    assert (run_dir / "checkpoints" / "dpo" / "model.safetensors").is_file()
