"""Pretraining, the reward model and DPO resume mid-stage like SFT (tests/test_resume.py).

One run of `stages=[pretrain,reward_model,dpo]` through the command line is stopped with Ctrl-C
(SIGINT from the test) in each stage in turn, once that stage has saved a state, and resumed
each time; it must end bit-identical to an uninterrupted run of the same config, with every
logged figure equal. About 2 minutes on 2 shared cores.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny_config import TINY

from rlstack.config import load_config
from rlstack.driver import run_pipeline
from rlstack.metrics import read_metrics

STAGES = ["pretrain", "reward_model", "dpo"]
CONFIG = [
    *TINY,
    f"stages=[{','.join(STAGES)}]",
    "pretrain.seq_len=64",
    "pretrain.eval_batches=1",
    *(f"{stage}.{key}" for stage in STAGES for key in ("steps=40", "batch_size=8")),
    *(f"{stage}.{key}" for stage in STAGES for key in ("save_every=4", "eval_every=0")),
    "reward_model.eval_batches=1",
    "dpo.eval_batches=1",
]
RUN_TIMEOUT_S = 300
TIMINGS = ("time", "tokens_per_s", "pairs_per_s")


def interrupt_when_saved(args: list[str], run: Path, stage: str, log: Path) -> str:
    """Run the command line; send SIGINT once `stage` saved a state; return its stderr."""
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlstack", "run", *args],
            cwd=run.parent,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not list((run / "state" / stage).glob("step-*")):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=RUN_TIMEOUT_S) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text()


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    work = tmp_path_factory.mktemp("supervised")
    run = work / "run"
    logs = []
    for i, stage in enumerate(STAGES):
        args = ["--run-dir", str(run), *CONFIG] if i == 0 else ["--resume", str(run)]
        logs.append(interrupt_when_saved(args, run, stage, work / f"{stage}.log"))
    last = subprocess.run(
        [sys.executable, "-m", "rlstack", "run", "--resume", str(run)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert last.returncode == 0, last.stderr[-3000:]
    reference = run_pipeline(load_config(None, CONFIG), work / "reference")
    return {"run": run, "logs": logs, "reference": reference}


def test_each_stage_was_interrupted_mid_stage_and_resumed_from_its_state(runs):
    for stage, log in zip(STAGES, runs["logs"]):
        assert f"stage {stage} interrupted at step" in log
        assert f"the run can resume from {stage} step" in log
    lines = (runs["run"] / "state" / "resumes.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["stage"] for r in rows] == STAGES
    for row in rows:
        assert row["step"] > 0 and row["step"] % 4 == 0
        assert row["restored"] == row["saved"]


def test_resumed_stages_end_bit_identical_to_an_uninterrupted_run(runs):
    for stage in STAGES:
        ours = load_file(runs["run"] / "checkpoints" / stage / "model.safetensors")
        ref = load_file(runs["reference"] / "checkpoints" / stage / "model.safetensors")
        assert ours.keys() == ref.keys()
        assert all((ours[k] == ref[k]).all() for k in ref), stage

    def figures(run_dir):
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in read_metrics(run_dir)]

    assert figures(runs["run"]) == figures(runs["reference"])
