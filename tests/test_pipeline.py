"""The embedded default pipeline, end to end, through the command line and the real engines.

One run of configs/smoke.yaml (random weights -> pretrain -> SFT -> reward model -> PPO ->
GRPO on Ray with DeepSpeed learners and vLLM engines), with GRPO's verifier loaded from a file
outside the package. The tests below read what that run left in its run directory.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rlstack.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
STAGES = ["pretrain", "sft", "reward_model", "ppo", "grpo"]

VERIFIER = """
from pathlib import Path

from rlstack.verifiers.numeric import numeric_match

CALLS = Path(__file__).with_suffix(".calls")


def score(prompt, response, reference, **extras):
    with CALLS.open("a") as f:
        f.write(prompt + "\\n")
    return numeric_match(prompt, response, reference)
"""


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    plugin = work / "outside_verifier.py"
    plugin.write_text(VERIFIER)
    run_dir = work / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlstack",
            "run",
            str(REPO / "configs" / "smoke.yaml"),
            "--run-dir",
            str(run_dir),
            f"grpo.verifier={plugin}:score",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return {"dir": run_dir, "stdout": result.stdout, "work": work, "metrics": read_metrics(run_dir)}


def stage_rows(run, stage, key):
    return [r for r in run["metrics"] if r["stage"] == stage and r.get(key) is not None]


def test_run_writes_config_metrics_and_a_checkpoint_per_stage(smoke_run):
    run_dir = smoke_run["dir"]
    assert f"run directory: {run_dir}" in smoke_run["stdout"]
    assert (run_dir / "config.yaml").is_file()
    for row in smoke_run["metrics"]:
        assert {"stage", "step"} <= row.keys()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["checkpoints"]) == STAGES
    for stage in STAGES:
        ckpt = run_dir / "checkpoints" / stage
        assert (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()
        assert (ckpt / "tokenizer.json").is_file() and (ckpt / "chat_template.jinja").is_file()


def test_checkpoints_load_in_transformers(smoke_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    import rlstack.model.build  # noqa: F401  (registers the Llama 4 scalar-head class)

    ckpt = smoke_run["dir"] / "checkpoints"
    policy = AutoModelForCausalLM.from_pretrained(ckpt / "grpo")
    rm = AutoModelForSequenceClassification.from_pretrained(ckpt / "reward_model")
    ids = torch.tensor([[5, 10, 11, 3, 6]])
    assert policy(input_ids=ids).logits.shape[-1] == policy.config.vocab_size
    assert rm(input_ids=ids).logits.shape == (1, 1)


def test_pretraining_validation_loss_falls_below_the_unigram_baseline(smoke_run):
    rows = stage_rows(smoke_run, "pretrain", "eval/val_loss")
    first, last = rows[0]["eval/val_loss"], rows[-1]["eval/val_loss"]
    assert last < first
    assert last < rows[-1]["eval/unigram_baseline"]


def test_sft_validation_loss_falls(smoke_run):
    rows = stage_rows(smoke_run, "sft", "eval/val_loss")
    assert rows[-1]["eval/val_loss"] < 0.5 * rows[0]["eval/val_loss"]


def test_reward_model_held_out_loss_falls_below_chance(smoke_run):
    # 150 steps on near-miss arithmetic pairs: the held-out pair accuracy of this small reward
    # model wanders between 0.5 and 0.65 (64 pairs) from machine to machine, so the test asks
    # for the loss (ln 2 = 0.693 for a model that cannot tell the pairs apart, as at step 0).
    # docs/learning.md measures a reward model's held-out accuracy with a confidence interval.
    rows = stage_rows(smoke_run, "reward_model", "eval/loss")
    assert rows[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[-1]["eval/loss"] < 0.68
    assert rows[-1]["eval/pair_accuracy"] >= 0.5


def test_ppo_critic_loss_falls_and_metrics_are_finite(smoke_run):
    rows = stage_rows(smoke_run, "ppo", "value_loss")
    assert len(rows) == 20
    head = sum(r["value_loss"] for r in rows[:5]) / 5
    tail = sum(r["value_loss"] for r in rows[-5:]) / 5
    assert tail < head
    for r in rows:
        for key in ("policy_loss", "kl", "reward_mean", "entropy", "logprob_diff_mean"):
            assert math.isfinite(r[key])


def test_grpo_reports_pass_rate_next_to_its_starting_checkpoint(smoke_run):
    rows = stage_rows(smoke_run, "grpo", "eval/pass_rate")
    assert rows[0]["step"] == 0 and rows[0]["eval/checkpoint"] == "ppo"
    assert rows[-1]["step"] == 30
    assert all(0.0 <= r["eval/pass_rate"] <= 1.0 for r in rows)
    steps = stage_rows(smoke_run, "grpo", "policy_loss")
    assert len(steps) == 30
    assert all(0.0 <= r["zero_variance_groups"] <= 1.0 for r in steps)


def test_grpo_used_the_verifier_from_outside_the_package(smoke_run):
    calls = (smoke_run["work"] / "outside_verifier.calls").read_text().splitlines()
    # 30 steps x 8 prompts x 8 samples, plus held-out evaluations.
    assert len(calls) >= 30 * 8 * 8
