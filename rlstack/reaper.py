"""Ends a private local Ray instance's processes when the driver that started it dies unclean.

`ray.init()` starts Ray's services (GCS, raylet) and its workers (learners, vLLM engines,
verifier actors) as descendants of the driver. A driver that exits normally shuts them down; one
killed with SIGKILL, or by the kernel's out-of-memory killer, leaves them running with all their
memory. So the driver starts this watchdog as a process of its own session: it notes the
driver's descendants every `interval_s` and, once the driver is gone, ends those still running
(SIGTERM, then SIGKILL after a grace period). Processes are matched by pid and start time, so a
reused pid is never hit, and only those started since Ray was (`since`) are ended: what the
driver's process started before is not Ray's. Only a local instance is watched: a cluster's
processes are not the driver's to end.

    python -m rlstack.reaper DRIVER_PID SINCE
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

INTERVAL_S = 2.0
GRACE_S = 5.0


def _started_since(proc, since: float) -> bool:
    import psutil

    try:
        return proc.create_time() >= since - 1.0  # start times have a clock tick's resolution
    except psutil.Error:
        return False


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch(
    driver_pid: int, since: float = 0.0, interval_s: float = INTERVAL_S, grace_s: float = GRACE_S
) -> int:
    """Wait for `driver_pid` to end, then end the descendants it had that started at or after
    `since` (seconds since the epoch); returns how many."""
    import psutil

    me = os.getpid()
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    known: dict[int, psutil.Process] = {}
    while _alive(driver):
        known = {pid: p for pid, p in known.items() if _alive(p)}
        try:
            for p in driver.children(recursive=True):
                if p.pid not in known and _started_since(p, since):
                    known[p.pid] = p
        except psutil.Error:
            pass  # the driver ended while being read
        time.sleep(interval_s)
    # Anything the survivors started since the last look goes too.
    for p in list(known.values()):
        try:
            for child in p.children(recursive=True):
                known.setdefault(child.pid, child)
        except psutil.Error:
            pass
    survivors = [p for pid, p in known.items() if pid != me and _alive(p)]
    for p in survivors:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, stubborn = psutil.wait_procs(survivors, timeout=grace_s)
    for p in stubborn:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(survivors)


def start(since: float, driver_pid: int | None = None) -> subprocess.Popen:
    """Start the watchdog for `driver_pid` (default: this process) and what it starts from
    `since` on, detached from the driver's session so that a signal to the driver's process
    group (Ctrl-C) does not reach it."""
    return subprocess.Popen(
        [sys.executable, "-m", "rlstack.reaper", str(driver_pid or os.getpid()), str(since)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]))
