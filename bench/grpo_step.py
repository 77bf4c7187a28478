"""GRPO step time on the workload TRL's GRPOTrainer was measured on (see docs/benchmarks.md).

    python bench/grpo_step.py            # or: make bench-grpo
    python bench/grpo_step.py "no KL"    # only the variants whose name contains "no KL"; prints
                                         # the figures without recording them

Workload: a randomly initialised ~1M-parameter Qwen3-MoE, 8 prompts x 8 samples x 32 response
tokens per step, on this machine's 2 cores. Each variant runs the real GRPO stage (`rlstack run`
with `stages=[grpo]`: vLLM rollout actor, verifier actor, DeepSpeed learner actor, weight sync
every step) for 60 steps; the step time is the wall time between consecutive step records in
metrics.jsonl (so overlapped generation is counted once), median over steps 6-60.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work" / "grpo_step"
RESULTS = REPO / "bench" / "results" / "grpo_step.json"
STEPS = 60

MODEL = SimpleNamespace(
    arch="qwen3_moe",
    hidden_size=128,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    ffn_size=256,
    expert_size=128,
    num_experts=4,
    experts_per_token=2,
    max_seq_len=256,
    rope_theta=10000.0,
)

COMMON = [
    "stages=[grpo]",
    f"grpo.steps={STEPS}",
    "grpo.prompts_per_step=8",
    "grpo.samples_per_prompt=8",
    "grpo.sampling.max_tokens=32",
    "grpo.sampling.min_tokens=32",
    "grpo.eval_every=0",
    "grpo.eval_prompts=8",
    "ray.num_cpus=2",
    "learner.micro_batch_size=64",  # the whole batch in one pass, as TRL runs it
]

VARIANTS = {
    "overlap, no KL (threads 1+1)": [
        "grpo.max_staleness=1",
        "grpo.kl_coef=0",
        "learner.threads=1",
        "rollout.threads=1",
    ],
    "overlap, KL 0.04 (threads 1+1)": [
        "grpo.max_staleness=1",
        "grpo.kl_coef=0.04",
        "learner.threads=1",
        "rollout.threads=1",
    ],
    # The engine compiled with torch.compile when it starts (`rollout.enforce_eager=false`; the
    # compile is not timed: it happens before the first step).
    "overlap, no KL, compiled engine (threads 1+1)": [
        "grpo.max_staleness=1",
        "grpo.kl_coef=0",
        "learner.threads=1",
        "rollout.threads=1",
        "rollout.enforce_eager=false",
    ],
    "overlap, KL 0.04, compiled engine (threads 1+1)": [
        "grpo.max_staleness=1",
        "grpo.kl_coef=0.04",
        "learner.threads=1",
        "rollout.threads=1",
        "rollout.enforce_eager=false",
    ],
    # Verifiers in the driver (`grpo.verifier_workers=0`), as TRL calls its reward functions,
    # instead of the pool of verifier actors.
    "overlap, no KL, compiled engine, verifiers in the driver (threads 1+1)": [
        "grpo.max_staleness=1",
        "grpo.kl_coef=0",
        "learner.threads=1",
        "rollout.threads=1",
        "rollout.enforce_eager=false",
        "grpo.verifier_workers=0",
    ],
    "overlap, KL 0.04, compiled engine, verifiers in the driver (threads 1+1)": [
        "grpo.max_staleness=1",
        "grpo.kl_coef=0.04",
        "learner.threads=1",
        "rollout.threads=1",
        "rollout.enforce_eager=false",
        "grpo.verifier_workers=0",
    ],
    "sequential, no KL (threads 2+2)": [
        "grpo.max_staleness=0",
        "grpo.kl_coef=0",
        "learner.threads=2",
        "rollout.threads=2",
    ],
    "sequential, KL 0.04 (threads 2+2)": [
        "grpo.max_staleness=0",
        "grpo.kl_coef=0.04",
        "learner.threads=2",
        "rollout.threads=2",
    ],
}


def make_model() -> Path:
    from rlstack.model.build import count_parameters, new_causal_lm, save_model

    path = WORK / "init"
    model, tokenizer = new_causal_lm(MODEL, seed=0)
    save_model(model, tokenizer, path)
    print(f"model: {count_parameters(model) / 1e6:.2f}M parameters at {path}")
    return path


def summarise(times: list[float], seconds: float) -> dict:
    """Step-time figures of one run (`times`: the timed steps) lasting `seconds` in all."""
    return {
        "median_s_per_step": round(statistics.median(times), 3),
        "mean_s_per_step": round(statistics.mean(times), 3),
        "min_s_per_step": round(min(times), 3),
        "max_s_per_step": round(max(times), 3),
        "steps_timed": len(times),
        "run_seconds": round(seconds, 1),
    }


def commit() -> str:
    """The repository's current commit, short form."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()


def step_times(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stamps = [r["time"] for r in rows if r["stage"] == "grpo" and "policy_loss" in r]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def run_variant(name: str, init: Path) -> dict:
    """Run variant `name` of VARIANTS from the model at `init`; its step-time figures."""
    extra = VARIANTS[name]
    run_dir = WORK / name.split(" (")[0].replace(", ", "-").replace(" ", "_")
    shutil.rmtree(run_dir, ignore_errors=True)  # rlstack refuses to overwrite a run
    cmd = [
        sys.executable,
        "-m",
        "rlstack",
        "run",
        "--run-dir",
        str(run_dir),
        f"model.init={init}",
        *COMMON,
        *extra,
    ]
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    times = step_times(run_dir)[5:]
    return {**summarise(times, time.time() - t0), "overrides": extra}


def main(argv: list[str]) -> int:
    chosen = [k for k in VARIANTS if not argv or any(a in k for a in argv)]
    if not chosen:
        print(f"no variant matches {argv}; variants: {list(VARIANTS)}", file=sys.stderr)
        return 2
    init = make_model()
    results = {}
    for name in chosen:
        results[name] = run_variant(name, init)
        print(f"{name}: {results[name]}")
    out = {
        "workload": "Qwen3-MoE ~1M params, 8 prompts x 8 samples x 32 tokens, 2 cores",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit(),
        "results": results,
    }
    if len(chosen) < len(VARIANTS):
        print(json.dumps(out, indent=2))  # a partial run leaves the recorded figures alone
        return 0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
