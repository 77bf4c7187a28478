"""Wall time and peak memory of a command, summed over every process it starts.

    python bench/measure.py --out bench/results/smoke.json -- rlstack run configs/smoke.yaml

Ray and vLLM start many processes (raylet, GCS, workers, engine actors): the peak here is the
largest *sum* over the whole process tree, sampled every `--interval` seconds, as RSS (shared
pages counted in every process that maps them: an upper bound) and as PSS (shared pages split
between the processes that share them: the fair total).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def sample(procs: list[psutil.Process]) -> tuple[int, int, int]:
    rss = pss = 0
    count = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return rss, pss, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    start = time.time()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak_rss = peak_pss = peak_procs = 0
    while child.poll() is None:
        rss, pss, n = sample(tree(root))
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        peak_procs = max(peak_procs, n)
        time.sleep(args.interval)
    wall = time.time() - start

    gib = 1024**3
    result = {
        "command": " ".join(command),
        "exit_code": child.returncode,
        "wall_seconds": round(wall, 1),
        "peak_rss_sum_gib": round(peak_rss / gib, 2),
        "peak_pss_sum_gib": round(peak_pss / gib, 2),
        "peak_processes": peak_procs,
        "machine": f"{psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / gib:.0f} GiB, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
