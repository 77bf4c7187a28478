"""A driver killed with SIGKILL leaves no Ray, learner or worker process behind (rlstack.reaper).

The first test uses plain processes (a stand-in driver with children and a grandchild); the
second kills a real `rlstack run` (Ray, a DeepSpeed learner actor) in the middle of a stage.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
from tiny_config import TINY

REPO = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent(
    """
    import subprocess, sys, time
    from rlstack import reaper

    before = subprocess.Popen(["sleep", "300"])  # not Ray's: started before Ray was
    time.sleep(2.5)
    reaper.start(since=time.time())
    after = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    tree = subprocess.Popen(["bash", "-c", "sleep 300 & wait"])  # with a grandchild
    print(before.pid, *[p.pid for p in after], tree.pid, flush=True)
    time.sleep(300)
    """
)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids, within_s: float) -> list[int]:
    """The pids still running after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def test_killed_driver_takes_what_it_started_after_ray_with_it(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True, env=env
    )
    before, *after = (int(x) for x in driver.stdout.readline().split())
    time.sleep(0.5)
    grandchildren = [c.pid for c in psutil.Process(after[-1]).children(recursive=True)]
    assert grandchildren, "the bash child has not started its sleep"
    time.sleep(3.0)  # the watchdog looks every 2 s
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    try:
        assert wait_gone(after + grandchildren, within_s=15) == []
        assert alive(before)  # started before Ray: not the watchdog's to end
    finally:
        for pid in [before, *after, *grandchildren]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigkilled_rlstack_run_leaves_no_process_behind(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        *TINY,
        "stages=[pretrain]",
        "pretrain.steps=100000",
        "pretrain.eval_every=0",
        "pretrain.save_every=0",
    ]
    driver = subprocess.Popen(
        [sys.executable, "-m", "rlstack", "run", "--run-dir", str(run_dir), *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = run_dir / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = metrics.read_text().splitlines() if metrics.exists() else []
            if any(json.loads(r).get("stage") == "pretrain" for r in rows):
                break
            assert driver.poll() is None, "the run ended before its first step"
            time.sleep(0.5)
        else:
            raise AssertionError("no pretraining step within 300 s")
        started = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
        names = [psutil.Process(p).name() for p in started if alive(p)]
        assert any("raylet" in n for n in names), names  # Ray's own processes are among them
        time.sleep(2.5)  # the watchdog looks every 2 s
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        left = wait_gone(started, within_s=30)
        assert left == [], [psutil.Process(p).cmdline()[:3] for p in left if alive(p)]
    finally:
        if driver.poll() is None:
            driver.kill()
