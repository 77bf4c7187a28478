"""The run configuration: every key, its type, default and meaning.

A run is described by one YAML file whose keys mirror the dataclasses below. Values not given
take the defaults written here; `dotted.key=value` overrides on the command line win over the
file. Unknown keys, wrong types and invalid values are rejected with a `ConfigError` naming the
key. Strings may interpolate other keys with OmegaConf syntax, e.g. `${data_root}/x.jsonl`.

Sizes are in samples unless a key says tokens; learning rates are per optimizer step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlstack.errors import ConfigError

ROLLOUT_DTYPES = ("float32", "bfloat16", "float16", "auto")
STAGES = ("pretrain", "sft", "reward_model", "dpo", "ppo", "grpo")
DEFAULT_STAGES = ["pretrain", "sft", "reward_model", "ppo", "grpo"]
ADVANTAGES = ("gae", "group", "rloo", "reinforce_pp")
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@dataclass
class ModelConfig:
    """The policy model: built from random weights, or loaded from an HF checkpoint."""

    init: str = "random"  # "random", or a path / hub name of an HF causal-LM checkpoint
    arch: str = "llama4"  # llama4 | qwen3_moe | llama (dense); used when init is "random"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4  # query heads; head size is hidden_size / num_heads (vLLM's CPU
    # attention takes head sizes 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
    num_kv_heads: int = 2  # grouped KV heads; must divide num_heads
    ffn_size: int = 256  # dense / shared-expert feed-forward width
    expert_size: int = 128  # routed-expert feed-forward width
    num_experts: int = 4  # routed experts per MoE layer
    experts_per_token: int = 1  # top-k routing
    max_seq_len: int = 256  # tokens (characters); the longest prompt + response
    rope_theta: float = 10000.0


@dataclass
class DataConfig:
    """A data set: a generated one, a local file or directory, or a hub name."""

    train: str = "synthetic:arithmetic"  # "synthetic:<name>", a local path, or a hub name;
    # a row slice suffix such as "data.jsonl[:2000]" keeps part of it
    eval: str | None = None  # held-out source; None splits eval_fraction off `train`
    format: str = "prompt_reference"  # text | prompt_response | pairs | prompt_reference |
    # gsm8k_calc | hh_rlhf (see rlstack.data.formats)
    split: str = "train"  # split name for hub data sets
    eval_split: str = "test"  # split name of `eval` for hub data sets
    eval_fraction: float = 0.05  # share of `train` held out when `eval` is None
    max_rows: int | None = None  # read at most this many raw records (None: all)
    max_eval_rows: int | None = 256  # held-out rows used for evaluation
    drop_seen_prompts: bool = True  # with `eval` given: drop held-out rows whose prompt is a
    # training prompt of this or an earlier stage, so held-out figures measure generalisation
    options: dict[str, Any] = field(default_factory=dict)  # format options (field names, ...)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0


@dataclass
class LearnerConfig:
    """The data-parallel group of DeepSpeed learners (one Ray actor per rank)."""

    num_workers: int = 1  # data-parallel ranks
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    cpus_per_worker: float = 0.5  # Ray logical CPUs reserved per trainable rank
    cpus_per_frozen_model: float = 0.25  # per reference model / reward-model scorer
    gpus_per_worker: float = 0.0  # Ray GPUs per rank (0: CPU)
    threads: int = 2  # torch threads per rank on CPU
    micro_batch_size: int = 16  # samples per forward pass; larger batches accumulate
    bf16: bool = False  # bfloat16 training (fp32 master weights); fp32 when False


@dataclass
class RolloutConfig:
    """The vLLM engines that generate responses."""

    num_engines: int = 1
    cpus_per_engine: float = 0.5
    gpus_per_engine: float = 0.0  # 0: CPU engine; on GPU, tensor_parallel_size is 1 per engine
    threads: int = 2  # OpenMP threads per CPU engine
    kv_cache_gib: int = 1  # CPU KV cache per engine in GiB (VLLM_CPU_KVCACHE_SPACE)
    gpu_memory_utilization: float = 0.5
    max_num_seqs: int = 256
    dtype: str = "float32"
    sync_timeout_s: float = 300.0  # a weight update not applied by then stops the run


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16  # response length limit in tokens
    min_tokens: int = 0  # generate at least this many tokens before the end token may stop
    eval_temperature: float = 0.0  # 0: greedy decoding for held-out evaluation


@dataclass
class PretrainConfig:
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="synthetic:text", format="text")
    )
    steps: int = 300
    batch_size: int = 16  # sequences per step
    seq_len: int = 128  # tokens per sequence
    eval_every: int = 50  # steps; 0 disables periodic eval (a final eval always runs)
    eval_batches: int = 4
    save_every: int = 50  # steps between resumable states (weights, optimizer, data position)
    # under RUN_DIR/state/<stage>/, from which `rlstack run --resume RUN_DIR` restarts; 0: off
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))


@dataclass
class SFTConfig:
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="synthetic:arithmetic", format="prompt_response")
    )
    steps: int = 400
    batch_size: int = 32
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 50  # steps between resumable states (weights, optimizer, data position)
    # under RUN_DIR/state/<stage>/, from which `rlstack run --resume RUN_DIR` restarts; 0: off
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3))


@dataclass
class RewardModelConfig:
    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="synthetic:preferences", format="pairs")
    )
    steps: int = 150
    batch_size: int = 16  # pairs per step
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 50  # steps between resumable states (weights, optimizer, data position)
    # under RUN_DIR/state/<stage>/, from which `rlstack run --resume RUN_DIR` restarts; 0: off
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3))


@dataclass
class DPOConfig:
    """Direct preference optimisation of the policy against a frozen reference copy."""

    data: DataConfig = field(
        default_factory=lambda: DataConfig(train="synthetic:preferences", format="pairs")
    )
    steps: int = 100
    batch_size: int = 16  # pairs per step
    beta: float = 0.1  # strength of the implicit KL to the reference
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 50  # steps between resumable states (weights, optimizer, data position)
    # under RUN_DIR/state/<stage>/, from which `rlstack run --resume RUN_DIR` restarts; 0: off
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=5))


@dataclass
class RLConfig:
    """An on-policy RL stage (PPO or GRPO): one loop, the algorithm chosen by its keys."""

    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 20
    prompts_per_step: int = 8
    samples_per_prompt: int = 1  # group size (GRPO, RLOO, REINFORCE++-baseline); PPO usually 1
    advantage: str = "gae"  # gae (critic) | group (GRPO) | rloo | reinforce_pp
    normalize_group_std: bool = True  # group: divide by the group's std (False: Dr. GRPO)
    reinforce_baseline: bool = False  # reinforce_pp: subtract the group's mean score
    whiten_advantages: bool | None = None  # None: on for gae/reinforce_pp, off for group/rloo
    gamma: float = 1.0
    lam: float = 0.95
    reward_source: str = "reward_model"  # reward_model | verifier
    reward_model: str | None = None  # a reward-model checkpoint, or the http://host:port URL of
    # `rlstack serve-rm` (the critic then starts from the policy); None: the reward_model stage's
    reward_timeout_s: float = 60.0  # seconds per request to a reward-model server
    reward_retries: int = 3  # further tries of a request that could not connect or timed out
    verifier: Any = "numeric"  # a spec (built-in name, entry-point name, package.module:function
    # or path/file.py:function), or a list of {name, weight, args, label} entries whose scores
    # add up by weight (rlstack/verifiers/combine.py; docs/verifiers.md)
    failure_score: float = 0.0  # a verifier call's score when it raises, returns a non-number,
    # times out or its worker dies
    verifier_timeout_s: float = 10.0  # deadline of one verifier call (one sample, or one call of
    # a batched verifier), seconds; a late call scores failure_score (kind "timeout")
    verifier_workers: int = 2  # verifier actors in the scoring pool
    verifier_cpus_per_worker: float = 0.1  # Ray logical CPUs per verifier actor (fractional)
    verifier_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources
    # each verifier actor asks for, e.g. {verifier_slot: 1} on a cluster whose nodes offer one
    # verifier_slot each puts at most one verifier actor on a node
    reward_model_weight: float = 0.0  # reward_source verifier: add this x the reward model's
    # score (0: no reward model; nonzero needs one: the reward_model stage or `reward_model`)
    kl_coef: float = 0.05  # weight of the KL-to-reference penalty (0 disables the reference)
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in_reward: bool = True  # True: per-token reward penalty; False: loss term
    kl_target: float | None = None  # adaptive coefficient steering the KL (nats per sample)
    kl_horizon: int = 10000  # samples over which the adaptive controller corrects by 20%
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None  # bound (> 1) on the loss of negative-advantage tokens
    entropy_coef: float = 0.0  # entropy bonus weight
    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    loss_norm_const: float | None = None  # seq_mean_token_sum_norm divisor (None: max_tokens)
    is_cap: float = 2.0  # cap of the importance weight rollout -> learner (stale / mismatch)
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal and refill
    max_sampling_tries: int = 3  # rollouts per step at most when refilling
    epochs: int = 1  # passes over each batch
    minibatches: int = 1  # optimizer steps per pass
    value_clip: float = 0.2
    max_staleness: int = 1  # 0: generate after each update; 1: overlap the next rollout
    eval_every: int = 10
    eval_prompts: int = 64
    save_every: int = 10  # steps between resumable states (weights, optimizer, data position)
    # under RUN_DIR/state/<stage>/, from which `rlstack run --resume RUN_DIR` restarts; 0: off
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup_steps=0))
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=0))


def _ppo_defaults() -> RLConfig:
    return RLConfig(
        data=DataConfig(train="synthetic:preferences", format="pairs"),
        advantage="gae",
        reward_source="reward_model",
        samples_per_prompt=1,
    )


def _grpo_defaults() -> RLConfig:
    return RLConfig(
        data=DataConfig(train="synthetic:arithmetic", format="prompt_reference"),
        advantage="group",
        reward_source="verifier",
        samples_per_prompt=8,
        steps=30,
        kl_coef=0.0,
        kl_in_reward=False,
    )


@dataclass
class RayConfig:
    address: str | None = None  # None: start a private local Ray; "auto" or host:port: join
    num_cpus: float | None = None  # logical CPUs of a local Ray (None: all cores)
    loopback: bool = True  # bind every service of a *local* Ray to 127.0.0.1 (ignored when
    # joining a cluster, where the node's own address is used)
    start_timeout_s: float = 600.0  # fail, naming the role, if actors cannot start by then


@dataclass
class Config:
    """A whole run: the stage list and one section per stage."""

    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))  # any order of
    # pretrain, sft, reward_model, dpo, ppo, grpo; each policy stage starts from the last one
    seed: int = 0
    run_dir: str | None = None  # None: a new directory under runs/
    data_root: str = "."  # base directory that configs interpolate as ${data_root}
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    ppo: RLConfig = field(default_factory=_ppo_defaults)
    grpo: RLConfig = field(default_factory=_grpo_defaults)


def _check_sections(schema: Any, given: Any, origin: str, prefix: str = "") -> None:
    """A ConfigError naming the key where `given` puts a value in place of a whole section.

    OmegaConf reports that case as a merge error without the key (`int is not a subclass of
    SFTConfig`); this names it and lists the section's keys.
    """
    if not isinstance(given, dict):
        return
    for name, value in given.items():
        if not isinstance(name, str) or name not in schema:
            continue  # unknown keys are reported by the merge
        if not dataclasses.is_dataclass(OmegaConf.get_type(schema, name)):
            continue
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            _check_sections(schema[name], value, origin, f"{key}.")
        elif value is not None and not (isinstance(value, str) and value.startswith("${")):
            section = schema[name]
            keys = list(section.keys())
            plain = [
                k for k in keys if not dataclasses.is_dataclass(OmegaConf.get_type(section, k))
            ]
            raise ConfigError(
                f"{origin}: '{key}' is a section, not a value: set keys inside it "
                f"(e.g. {key}.{(plain or keys)[0]}=...; its keys: {', '.join(keys)})"
            )


def _explain(err: OmegaConfBaseException, origin: str) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    if key and "is not a ListConfig" in msg:
        return f"{origin}: config key '{key}' takes a list, e.g. {key}=[a,b] (one item: [a])"
    if "Key '" in msg and "not in" in msg:
        name = msg.split("'")[1]
        parent = key.rsplit(".", 1)[0] if key and "." in key else ""
        place = f"{parent}.{name}" if parent else name
        return f"{origin}: unknown config key '{place}'"
    return f"{origin}: config key '{key}': {msg}" if key else f"{origin}: {msg}"


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Merge defaults, the YAML file (if any) and `key=value` overrides; validate; resolve."""
    schema = OmegaConf.structured(Config)
    origin = path or "defaults"
    try:
        merged = schema
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            loaded = OmegaConf.load(path)
            _check_sections(schema, OmegaConf.to_container(loaded), origin)
            merged = OmegaConf.merge(merged, loaded)
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected dotted.key=value")
            origin = f"override {item!r}"
            given = OmegaConf.from_dotlist([item])
            _check_sections(schema, OmegaConf.to_container(given), origin)
            merged = OmegaConf.merge(merged, given)
        origin = path or "defaults"
        OmegaConf.resolve(merged)
        cfg: Config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, origin)) from None
    except Exception as err:  # the YAML parser's errors
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{origin}: cannot read config ({type(err).__name__}: {err})") from None
    validate(cfg)
    return cfg


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
    if m.num_heads % m.num_kv_heads or m.hidden_size % m.num_heads:
        raise ConfigError("model: num_kv_heads must divide num_heads, num_heads hidden_size")
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
            "verifier_workers",
        )
        _positive(rl.sampling, f"{name}.sampling", "max_tokens")
        _not_negative(
            rl, name, "eval_every", "eval_prompts", "kl_coef", "reward_retries", "save_every"
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
    _positive(rl, name, "verifier_workers")
    _not_negative(rl, name, "verifier_cpus_per_worker")
    if not rl.verifier_timeout_s > 0:
        raise ConfigError(
            f"{name}.verifier_timeout_s: must be positive, got {rl.verifier_timeout_s}"
        )


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def as_dict(section: Any) -> dict:
    return (
        OmegaConf.to_container(OmegaConf.structured(section))
        if not isinstance(section, (dict, DictConfig))
        else dict(section)
    )
