"""The run configuration: every key, its type, default and meaning.

A run is described by one YAML file whose keys mirror the dataclasses below. Values not given
take the defaults written here; `dotted.key=value` overrides on the command line win over the
file. Unknown keys, wrong types and invalid values are rejected with a `ConfigError` naming the
key. Strings may interpolate other keys with OmegaConf syntax, e.g. `${data_root}/x.jsonl`.

Sizes are in samples unless a key says tokens; learning rates are per optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    subset: str | None = None  # configuration of a hub or folder data set (the `name` of
    # datasets.load_dataset), e.g. "main" for openai/gsm8k; None: the data set's default
    eval_subset: str | None = None  # configuration of `eval`; None: `subset` when `eval` names
    # the same data set as `train`, else the default
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
    enforce_eager: bool | None = None  # None: eager on CPU, compiled (CUDA graphs) on GPU.
    # False on CPU compiles the model with torch.compile when the engine starts (about 25 s for
    # a small model, cached under ~/.cache/vllm) and then generates about 30% faster: worth it
    # for runs of more than a few minutes
    prefix_caching: bool | None = None  # reuse the KV cache of a prompt across its samples;
    # None: on, except for CPU engines when every prompt is shorter than one KV block (vLLM's
    # CPU block is 128 tokens), where nothing can be shared and the bookkeeping only costs time


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
    verifier_workers: int = 2  # verifier actors in the scoring pool; 0 scores in the driver,
    # without a pool: faster for cheap, trusted checks (the built-ins), but a call that hangs
    # stalls the loop (docs/verifiers.md)
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
