"""Value checks of a loaded config: ranges, choices, resources and cross-key rules.

`validate` raises one `ConfigError` naming the first key whose value cannot work, before any
data is read or any actor starts.
"""

from __future__ import annotations

import math
from typing import Any

from rlstack.config.schema import (
    ADVANTAGES,
    LOSS_AGGREGATIONS,
    ROLLOUT_DTYPES,
    STAGES,
    VLLM_CPU_HEAD_SIZES,
    Config,
    OptimConfig,
    RLConfig,
)
from rlstack.errors import ConfigError


def _positive(section: Any, prefix: str, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        if value is None or value < 1:
            raise ConfigError(f"{prefix}.{key}: must be at least 1, got {value}")


def _not_negative(section: Any, prefix: str, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        if value is not None and value < 0:
            raise ConfigError(f"{prefix}.{key}: must not be negative, got {value}")


def _in_range(value: Any, key: str, low: float, high: float, what: str) -> None:
    """A ConfigError naming `key` unless `value` is a finite number in [low, high]."""
    if value is None or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{key}: must be {what}, got {value}")


def _check_optim(optim: OptimConfig, key: str) -> None:
    if not (math.isfinite(optim.lr) and optim.lr > 0):
        raise ConfigError(f"{key}.lr: must be a positive number, got {optim.lr}")
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError(f"{key}.betas: must be two numbers in [0, 1), got {optim.betas}")
    _in_range(optim.min_lr_ratio, f"{key}.min_lr_ratio", 0, 1, "between 0 and 1")
    _in_range(optim.weight_decay, f"{key}.weight_decay", 0, math.inf, "a number >= 0")
    _in_range(optim.grad_clip, f"{key}.grad_clip", 0, math.inf, "a number >= 0")
    if optim.warmup_steps < 0:
        raise ConfigError(f"{key}.warmup_steps: must not be negative, got {optim.warmup_steps}")


def _check_resources(cfg: Config) -> None:
    for key, value in (
        ("learner.cpus_per_worker", cfg.learner.cpus_per_worker),
        ("learner.cpus_per_frozen_model", cfg.learner.cpus_per_frozen_model),
        ("rollout.cpus_per_engine", cfg.rollout.cpus_per_engine),
    ):
        _in_range(value, key, 1e-9, math.inf, "a positive number of CPUs")
    _in_range(cfg.learner.gpus_per_worker, "learner.gpus_per_worker", 0, math.inf, ">= 0")
    _in_range(cfg.rollout.gpus_per_engine, "rollout.gpus_per_engine", 0, math.inf, ">= 0")
    _in_range(
        cfg.rollout.gpu_memory_utilization,
        "rollout.gpu_memory_utilization",
        1e-9,
        1,
        "a fraction in (0, 1]",
    )
    if cfg.rollout.dtype not in ROLLOUT_DTYPES:
        raise ConfigError(
            f"rollout.dtype: {cfg.rollout.dtype!r} is not one of {', '.join(ROLLOUT_DTYPES)}"
        )
    if cfg.ray.num_cpus is not None:
        _in_range(cfg.ray.num_cpus, "ray.num_cpus", 1e-9, math.inf, "a positive number")


def _check_rl_values(rl: RLConfig, name: str, max_seq_len: int) -> None:
    """Value checks of an RL section; `max_seq_len` 0 skips those that involve the model."""
    s = rl.sampling
    _in_range(s.temperature, f"{name}.sampling.temperature", 0, math.inf, "a number >= 0")
    _in_range(s.eval_temperature, f"{name}.sampling.eval_temperature", 0, math.inf, ">= 0")
    _in_range(s.top_p, f"{name}.sampling.top_p", 1e-9, 1, "a fraction in (0, 1]")
    if not 0 <= s.min_tokens <= s.max_tokens:
        raise ConfigError(
            f"{name}.sampling.min_tokens: must be between 0 and max_tokens ({s.max_tokens}), "
            f"got {s.min_tokens}"
        )
    if max_seq_len and s.max_tokens >= max_seq_len:
        raise ConfigError(
            f"{name}.sampling.max_tokens: {s.max_tokens} leaves no room for the prompt within "
            f"model.max_seq_len ({max_seq_len})"
        )
    _in_range(rl.failure_score, f"{name}.failure_score", -math.inf, math.inf, "a finite number")
    for key in ("gamma", "lam"):
        _in_range(getattr(rl, key), f"{name}.{key}", 0, 1, "between 0 and 1")
    for key in ("clip_low", "clip_high", "value_clip"):
        _in_range(getattr(rl, key), f"{name}.{key}", 0, math.inf, "a number >= 0")
    _in_range(rl.is_cap, f"{name}.is_cap", 1, math.inf, "a number >= 1")
    _in_range(rl.entropy_coef, f"{name}.entropy_coef", -math.inf, math.inf, "a finite number")
    _in_range(rl.kl_coef, f"{name}.kl_coef", 0, math.inf, "a number >= 0")
    _in_range(rl.reward_model_weight, f"{name}.reward_model_weight", -math.inf, math.inf, "finite")
    if rl.kl_target is not None:
        _in_range(rl.kl_target, f"{name}.kl_target", 1e-9, math.inf, "a positive number")
    _check_optim(rl.optim, f"{name}.optim")
    _check_optim(rl.critic_optim, f"{name}.critic_optim")


def validate(cfg: Config) -> None:
    """Checks the types alone cannot express."""
    if not cfg.stages:
        raise ConfigError("stages: the stage list is empty")
    for stage in cfg.stages:
        if stage not in STAGES:
            raise ConfigError(f"stages: unknown stage {stage!r}; known: {', '.join(STAGES)}")
    repeated = sorted({stage for stage in cfg.stages if cfg.stages.count(stage) > 1})
    if repeated:  # a stage has one section, one checkpoint and one saved state
        raise ConfigError(
            f"stages: {', '.join(repeated)} listed more than once; to train longer raise its "
            f"steps, or run again with model.init=<its checkpoint>"
        )
    _positive(
        cfg.model,
        "model",
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "ffn_size",
        "expert_size",
        "num_experts",
        "experts_per_token",
        "max_seq_len",
    )
    _positive(cfg.learner, "learner", "num_workers", "threads", "micro_batch_size")
    _positive(
        cfg.rollout,
        "rollout",
        "num_engines",
        "threads",
        "max_num_seqs",
        "kv_cache_gib",
        "sync_timeout_s",
    )
    _positive(cfg.ray, "ray", "start_timeout_s")
    for name in ("pretrain", "sft", "reward_model", "dpo"):
        section = getattr(cfg, name)
        _positive(section, name, "steps", "batch_size")
        _not_negative(section, name, "eval_every", "eval_batches", "save_every")
        _check_optim(section.optim, f"{name}.optim")
    _positive(cfg.pretrain, "pretrain", "seq_len")
    if "pretrain" in cfg.stages and cfg.pretrain.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"pretrain.seq_len: {cfg.pretrain.seq_len} is longer than model.max_seq_len "
            f"({cfg.model.max_seq_len})"
        )
    if cfg.model.max_seq_len < 16:
        raise ConfigError(f"model.max_seq_len: must be at least 16, got {cfg.model.max_seq_len}")
    _check_resources(cfg)
    m = cfg.model
    if m.num_heads % m.num_kv_heads:
        raise ConfigError(
            f"model: num_kv_heads ({m.num_kv_heads}) must divide num_heads ({m.num_heads})"
        )
    if m.hidden_size % m.num_heads:
        raise ConfigError(
            f"model: num_heads ({m.num_heads}) must divide hidden_size ({m.hidden_size})"
        )
    if m.init == "random" and m.hidden_size // m.num_heads not in VLLM_CPU_HEAD_SIZES:
        raise ConfigError(
            f"model: head size hidden_size/num_heads = {m.hidden_size // m.num_heads} is not one "
            f"vLLM's CPU attention supports ({', '.join(map(str, VLLM_CPU_HEAD_SIZES))})"
        )
    if m.experts_per_token > m.num_experts:
        raise ConfigError("model.experts_per_token: larger than model.num_experts")
    if cfg.learner.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"learner.zero_stage: {cfg.learner.zero_stage} is not 0, 1, 2 or 3")
    for name in ("ppo", "grpo"):
        rl: RLConfig = getattr(cfg, name)
        _positive(
            rl,
            name,
            "steps",
            "prompts_per_step",
            "samples_per_prompt",
            "epochs",
            "minibatches",
            "max_sampling_tries",
        )
        _positive(rl.sampling, f"{name}.sampling", "max_tokens")
        _not_negative(
            rl,
            name,
            "eval_every",
            "eval_prompts",
            "kl_coef",
            "reward_retries",
            "save_every",
            "verifier_workers",
        )
        if rl.reward_timeout_s <= 0:
            raise ConfigError(
                f"{name}.reward_timeout_s: must be positive, got {rl.reward_timeout_s}"
            )
        if rl.prompts_per_step * rl.samples_per_prompt < rl.minibatches:
            raise ConfigError(f"{name}.minibatches: more minibatches than samples per step")
        if rl.advantage not in ADVANTAGES:
            raise ConfigError(
                f"{name}.advantage: {rl.advantage!r} is not one of {', '.join(ADVANTAGES)}"
            )
        if rl.loss_agg not in LOSS_AGGREGATIONS:
            raise ConfigError(
                f"{name}.loss_agg: {rl.loss_agg!r} is not one of {', '.join(LOSS_AGGREGATIONS)}"
            )
        if rl.dual_clip is not None and rl.dual_clip <= 1:
            raise ConfigError(f"{name}.dual_clip: must be greater than 1")
        grouped = rl.advantage in ("group", "rloo") or (
            rl.advantage == "reinforce_pp" and rl.reinforce_baseline
        )
        if (grouped or rl.dynamic_sampling) and rl.samples_per_prompt < 2:
            raise ConfigError(
                f"{name}.samples_per_prompt: {rl.advantage} advantages (and dynamic sampling) "
                "need groups of at least 2 samples"
            )
        if rl.reward_source not in ("reward_model", "verifier"):
            raise ConfigError(f"{name}.reward_source: {rl.reward_source!r} is unknown")
        _check_verifier_keys(rl, name)
        _check_rl_values(rl, name, cfg.model.max_seq_len if name in cfg.stages else 0)
        if rl.kl_estimator not in ("k1", "k2", "k3"):
            raise ConfigError(f"{name}.kl_estimator: {rl.kl_estimator!r} is not k1, k2 or k3")
        if rl.max_staleness not in (0, 1):
            raise ConfigError(f"{name}.max_staleness: only 0 and 1 are supported")


def _check_verifier_keys(rl: RLConfig, name: str) -> None:
    from rlstack.verifiers.combine import parse_verifier_entries

    parse_verifier_entries(rl.verifier, f"{name}.verifier")
    _not_negative(rl, name, "verifier_cpus_per_worker")
    if not rl.verifier_timeout_s > 0:
        raise ConfigError(
            f"{name}.verifier_timeout_s: must be positive, got {rl.verifier_timeout_s}"
        )
