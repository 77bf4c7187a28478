"""rlstack's GRPO step against TRL's GRPOTrainer, interleaved and repeated (docs/benchmarks.md).

    make bench-compare                      # installs TRL 1.16 into bench/work/trl_pkgs if needed
    python bench/grpo_vs_trl.py [REPEATS]   # once TRL is there; 3 repetitions by default

This machine's speed drifts by 15% or more within minutes, so one run of each side can mislead.
Each repetition runs two pairs, without KL and with KL 0.04: rlstack's variant of
bench/grpo_step.py with a compiled engine and the verifiers in the driver (overlapped, 1+1
threads), and TRL's GRPOTrainer of bench/trl_grpo_step.py (HF generate, one process, 2 threads).
Each run is 60 steps, timed as the median step over steps 6-60, and starts once the previous
run's processes are gone (a warning says when they do not go within two minutes); the order
within a pair alternates between repetitions. A pair's ratio is TRL's median step time over
rlstack's. Writes every figure, and the median
over the repetitions, to bench/results/grpo_vs_trl.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from grpo_step import REPO, commit, make_model, run_variant

RESULTS = REPO / "bench" / "results" / "grpo_vs_trl.json"
TRL_PKGS = REPO / "bench" / "work" / "trl_pkgs"
PAIRS = {  # rlstack variant of grpo_step.py, TRL variant of trl_grpo_step.py
    "no KL": (
        "overlap, no KL, compiled engine, verifiers in the driver (threads 1+1)",
        "no KL (beta 0)",
    ),
    "KL 0.04": (
        "overlap, KL 0.04, compiled engine, verifiers in the driver (threads 1+1)",
        "KL 0.04 (beta 0.04)",
    ),
}


def settle(timeout_s: float = 120.0) -> None:
    """Wait until the previous run's processes (Ray's, vLLM's) are gone, then a little more,
    so that neither side's timed steps share the cores with the other's teardown."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = subprocess.run(
            ["pgrep", "-u", str(os.getuid()), "-f", "raylet|gcs_server|ray::|RolloutEngine"],
            capture_output=True,
        )
        if busy.returncode != 0:  # nothing matched
            break
        time.sleep(1.0)
    else:
        print(f"warning: Ray processes still running after {timeout_s:.0f}s", file=sys.stderr)
    time.sleep(5.0)


def run_trl(variant: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(TRL_PKGS))
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "trl_grpo_step.py"), "--one", variant],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    repeats = int(argv[0]) if argv else 3
    if not (TRL_PKGS / "trl").is_dir():
        print(f"TRL is not installed in {TRL_PKGS}; run `make bench-compare`", file=sys.stderr)
        return 2
    init = make_model()
    rounds = []
    for r in range(repeats):
        row = {}
        for pair, (ours, theirs) in PAIRS.items():
            # Each side starts on an idle machine; the order alternates between rounds.
            if r % 2 == 0:
                settle()
                a = run_variant(ours, init)
                settle()
                b = run_trl(theirs)
            else:
                settle()
                b = run_trl(theirs)
                settle()
                a = run_variant(ours, init)
            ratio = b["median_s_per_step"] / a["median_s_per_step"]
            row[pair] = {"rlstack": a, "trl": b, "trl_over_rlstack": round(ratio, 3)}
            print(
                f"round {r + 1} {pair}: rlstack {a['median_s_per_step']:.3f} s/step, "
                f"TRL {b['median_s_per_step']:.3f} s/step, {ratio:.2f}x",
                flush=True,
            )
        rounds.append(row)
    summary = {}
    for pair in PAIRS:
        summary[pair] = {
            "rlstack_median_s_per_step": statistics.median(
                x[pair]["rlstack"]["median_s_per_step"] for x in rounds
            ),
            "trl_median_s_per_step": statistics.median(
                x[pair]["trl"]["median_s_per_step"] for x in rounds
            ),
            "ratios": [x[pair]["trl_over_rlstack"] for x in rounds],
            "median_ratio": statistics.median(x[pair]["trl_over_rlstack"] for x in rounds),
        }
        print(f"{pair}: {summary[pair]}")
    out = {
        "workload": "Qwen3-MoE ~1M params, 8 prompts x 8 samples x 32 tokens, 2 cores",
        "pairs": {k: {"rlstack": v[0], "trl": v[1]} for k, v in PAIRS.items()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit(),
        "summary": summary,
        "rounds": rounds,
    }
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
