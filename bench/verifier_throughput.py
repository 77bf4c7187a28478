"""Verifier throughput: the scoring pool against calling the verifiers one by one in one process.

    python bench/verifier_throughput.py     # writes bench/results/verifier_throughput.json

Workload: 256 arithmetic samples (half correct), scored by a combination of the built-in
`numeric` verifier and a slow one that sleeps 50 ms per call (a stand-in for a sandboxed test
run or a remote judge). "Serial" calls both verifiers for every sample in this process
(`VerifierWorker.score_all`, no Ray); the pool runs on a private local Ray with 1-8 workers of
0.1 CPU each. The built-in alone (microseconds a call) shows the pool's own cost. A last case
makes 4 samples (every 64th) hang in the slow verifier until their 2 s deadline: the pool kills
and replaces those workers and finishes; a serial scorer would never return.

Verifications are verifier calls (samples x verifiers). Pool times exclude starting the workers
(reported apart). Runs in about a minute and a half on 2 cores.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "verifier_throughput.json"
SAMPLES = 256
SLOW_S = 0.05
HANGS = 4
HANG_TIMEOUT_S = 2.0
WORKERS = (1, 2, 4, 8)


def slow_check(prompt: str, response: str, reference: str, **extras: object) -> float:
    """Sleeps 50 ms (forever when the row says hang), then checks the answer's length."""
    time.sleep(3600 if extras.get("hang") else SLOW_S)
    return 1.0 if len(response) == len(reference) else 0.0


def workload(hangs: int = 0) -> list[dict]:
    rng = random.Random(0)
    items = []
    for i in range(SAMPLES):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        answer = a + b if i % 2 == 0 else a + b + 1
        items.append(
            {
                "prompt": f"{a}+{b}",
                "response": f"The answer is {answer}.",
                "reference": str(a + b),
                "extras": {"hang": i % (SAMPLES // max(hangs, 1)) == 0 and hangs > 0},
            }
        )
    return items


def entries(slow: bool = True) -> list[dict]:
    both = [
        {"name": "numeric", "weight": 1.0},
        {"name": f"{Path(__file__).resolve()}:slow_check", "weight": 0.1, "label": "slow"},
    ]
    return both if slow else both[:1]


def serial(items: list[dict], slow: bool = True) -> dict:
    from rlstack.scorers.verifier_worker import VerifierWorker
    from rlstack.verifiers import parse_verifier_entries

    worker = VerifierWorker(parse_verifier_entries(entries(slow)), timeout_s=10.0)
    t0 = time.monotonic()
    for v in range(len(worker.entries)):
        worker.score_all(v, items)
    return _figures(len(items), len(worker.entries), time.monotonic() - t0)


def pool(
    items: list[dict], workers: int, env: dict, timeout_s: float = 10.0, slow: bool = True
) -> dict:
    from rlstack.scorers.verifier import VerifierScorer

    t0 = time.monotonic()
    scorer = VerifierScorer(
        entries(slow), 0.0, num_workers=workers, timeout_s=timeout_s, grace_s=0.5, env_vars=env
    ).start()
    start_s = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        result = scorer.score(items)
        seconds = time.monotonic() - t0
    finally:
        scorer.shutdown()
    out = _figures(len(items), len(scorer.entries), seconds)
    out.update(start_s=round(start_s, 2), failures=result.failures, restarts=scorer.restarts)
    return out


def _figures(samples: int, verifiers: int, seconds: float) -> dict:
    return {
        "seconds": round(seconds, 3),
        "verifications_per_s": round(samples * verifiers / seconds, 1),
        "samples_per_s": round(samples / seconds, 1),
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    from rlstack.runtime import apply_env

    env = apply_env(loopback=True)
    import ray

    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    results: dict[str, dict] = {}
    results["serial (one process)"] = serial(workload())
    results["numeric alone, serial"] = serial(workload(), slow=False)
    print("serial:", results["serial (one process)"], flush=True)

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=tempfile.mkdtemp(prefix="rlstack-bench-ray-"),
        address="local",
    )
    try:
        for n in WORKERS:
            results[f"pool, {n} worker(s)"] = pool(workload(), n, env)
            print(f"pool {n}:", results[f"pool, {n} worker(s)"], flush=True)
        results["numeric alone, pool of 2"] = pool(workload(), 2, env, slow=False)
        name = f"pool, 4 workers, {HANGS} samples hang ({HANG_TIMEOUT_S:g} s deadline)"
        results[name] = pool(workload(HANGS), 4, env, timeout_s=HANG_TIMEOUT_S)
        print(f"{name}:", results[name], flush=True)
    finally:
        ray.shutdown()

    print(f"\n{SAMPLES} samples x 2 verifiers (numeric + 50 ms sleep); {machine['cpus']} cores")
    print("| case | seconds | verifications/s | vs serial | failures | worker start s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        base = results["numeric alone, serial" if "alone" in name else "serial (one process)"]
        base = base["seconds"]
        print(
            f"| {name} | {r['seconds']:.3g} | {r['verifications_per_s']:.0f} | "
            f"{base / r['seconds']:.1f}x | {r.get('failures', {}) or '-'} | "
            f"{r.get('start_s', '-')} |"
        )
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "workload": {
            "samples": SAMPLES,
            "verifiers": ["numeric", f"slow_check ({SLOW_S * 1000:.0f} ms sleep)"],
            "cpus_per_worker": 0.1,
        },
        "machine": machine,
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
