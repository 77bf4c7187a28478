"""`rlstack run --resume`: a run stopped twice, resumed twice, on the real engines.

One run of `stages=[sft,grpo]` through the command line, as a user would:
1. Ctrl-C (SIGINT from the test) once SFT has saved a state: SFT stops mid-stage;
2. `--resume`: SFT continues from its newest state and finishes; GRPO starts, scoring with a
   verifier and a reward-model server (weight 0.1) that goes away after answering three steps,
   so GRPO stops at step 4 with its state of step 2 saved;
3. `--resume` with the server's new URL: GRPO continues at step 3 and finishes.
An uninterrupted SFT run of the same config is the reference. The reward-model server is a
stand-in that scores every sample 0.0: it exists to inject the failure; rewards come from the
real verifier. About 2 minutes on 2 shared cores for the whole module.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny_config import TINY

from rlstack.config import load_config
from rlstack.driver import run_pipeline
from rlstack.metrics import read_metrics
from rlstack.stages.context import StageContext
from rlstack.stages.rl import PromptSampler

SFT = [
    "sft.steps=40",
    "sft.batch_size=8",
    "sft.eval_every=0",
    "sft.eval_batches=1",
    "sft.save_every=4",
]
PROMPTS, SAMPLES = 4, 4
GRPO = [
    "grpo.steps=4",
    "grpo.save_every=2",
    f"grpo.prompts_per_step={PROMPTS}",
    f"grpo.samples_per_prompt={SAMPLES}",
    "grpo.eval_prompts=0",
    "grpo.sampling.max_tokens=8",
    "grpo.optim.lr=5e-3",
    "grpo.verifier_workers=1",
    "grpo.reward_model_weight=0.1",
    "grpo.reward_retries=0",
]
RUN_TIMEOUT_S = 400

VERIFIER = """
import fcntl
from pathlib import Path

CALLS = Path(__file__).with_suffix(".calls")


# Records each prompt it scores; rewards short responses (a tiny model's responses vary in
# length, so every step has advantages to learn from).
def score(prompt, response, reference, **extras):
    with CALLS.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(prompt.replace("\\n", " ") + "\\n")
    return 1.0 / (1 + len(response))
"""


class RewardServer:
    """A reward-model server stand-in on 127.0.0.1: `/health` answers as `rlstack serve-rm`
    does, `/score` gives every sample 0.0; after `answers` score requests it shuts down, and
    connections are refused from then on."""

    def __init__(self, answers: int | None = None) -> None:
        self.answers, self.scored = answers, 0
        self.gone = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply({"status": "ok", "checkpoint": "stand-in"})

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                self._reply({"scores": [0.0] * len(body["prompts"])})
                server.scored += 1
                if server.answers is not None and server.scored >= server.answers:
                    server.gone.set()

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        threading.Thread(target=self._stop_when_done, daemon=True).start()

    def _stop_when_done(self) -> None:
        self.gone.wait()
        self.stop()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def rlstack(args: list[str], work: Path, log: str) -> subprocess.Popen:
    with open(work / log, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "rlstack", *args],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def finish(proc: subprocess.Popen) -> int:
    try:
        proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode


@pytest.fixture(scope="module")
def resumed(ray_local, tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    plugin = work / "recording_verifier.py"
    plugin.write_text(VERIFIER)
    calls = plugin.with_suffix(".calls")
    run = work / "run"
    first_server, second_server = RewardServer(answers=3), RewardServer()
    out: dict = {"run": run, "work": work}
    try:
        config = [
            *TINY,
            "stages=[sft,grpo]",
            *SFT,
            *GRPO,
            f"grpo.verifier={plugin}:score",
            f"grpo.reward_model={first_server.url}",
        ]
        # 1. Ctrl-C once SFT saved a state.
        proc = rlstack(["run", "--run-dir", str(run), *config], work, "first.log")
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not list((run / "state" / "sft").glob("step-*")):
            assert proc.poll() is None, (work / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out["first_rc"] = finish(proc)
        out["first_log"] = (work / "first.log").read_text()
        out["sft_states"] = sorted(p.name for p in (run / "state" / "sft").glob("step-*"))
        out["metrics_first"] = read_metrics(run)
        out["finished_first"] = (run / "summary.json").exists()

        # 2. Resume: SFT finishes, GRPO stops when the reward-model server goes away.
        proc = rlstack(["run", "--resume", str(run)], work, "second.log")
        out["second_rc"] = finish(proc)
        out["second_log"] = (work / "second.log").read_text()
        out["grpo_states"] = sorted(p.name for p in (run / "state" / "grpo").glob("step-*"))
        out["metrics_second"] = read_metrics(run)
        out["calls_second"] = calls.read_text().splitlines()
        calls.rename(work / "second.calls")
        out["sft_mtime"] = (run / "checkpoints" / "sft" / "model.safetensors").stat().st_mtime

        # 3. Resume with the server's new address.
        override = f"grpo.reward_model={second_server.url}"
        proc = rlstack(["run", "--resume", str(run), override], work, "third.log")
        out["third_rc"] = finish(proc)
        out["third_log"] = (work / "third.log").read_text()
        out["calls_third"] = calls.read_text().splitlines()
        out["metrics"] = read_metrics(run)
    finally:
        second_server.stop()
        if not first_server.gone.is_set():
            first_server.stop()

    # The reference: the same SFT, never interrupted.
    cfg = load_config(None, [*TINY, "stages=[sft]", *SFT])
    reference = run_pipeline(cfg, work / "reference")
    out["reference"] = reference
    out["reference_metrics"] = read_metrics(reference)
    return out


def resumes(run: Path) -> dict[str, dict]:
    lines = (run / "state" / "resumes.jsonl").read_text().splitlines()
    return {row["stage"]: row for row in map(json.loads, lines)}


def steps_of(rows: list[dict], stage: str, key: str) -> list[int]:
    return [r["step"] for r in rows if r["stage"] == stage and key in r]


def test_ctrl_c_names_the_stage_and_the_step_to_resume_from(resumed):
    assert resumed["first_rc"] == 130, resumed["first_log"][-3000:]
    assert "rlstack: interrupted" in resumed["first_log"]
    assert 1 <= len(resumed["sft_states"]) <= 2  # only the newest states are kept
    newest = int(resumed["sft_states"][-1].removeprefix("step-"))
    hint = f"the run can resume from sft step {newest}: rlstack run --resume {resumed['run']}"
    assert hint in resumed["first_log"].split("rlstack: interrupted", 1)[1]  # the last word
    assert resumed["first_log"].count(hint) == 1  # said once on the console
    assert hint in (resumed["run"] / "run.log").read_text()  # and kept in the run's log
    assert not resumed["finished_first"]


def test_sft_resumes_from_its_state_and_ends_bit_identical_to_an_uninterrupted_run(resumed):
    row = resumes(resumed["run"])["sft"]
    assert row["step"] == int(resumed["sft_states"][-1].removeprefix("step-"))
    # Weights and Adam state right after the restore, before any update, are those saved.
    assert row["restored"] == row["saved"]
    assert row["restored"]["policy"][0]["optimizer_steps"] == row["step"]

    ours = load_file(resumed["run"] / "checkpoints" / "sft" / "model.safetensors")
    ref = load_file(resumed["reference"] / "checkpoints" / "sft" / "model.safetensors")
    assert ours.keys() == ref.keys()
    assert all((ours[k] == ref[k]).all() for k in ref)

    def figures(rows):
        keep = ("step", "loss", "lr", "eval/val_loss")
        return [{k: r[k] for k in keep if k in r} for r in rows if r["stage"] == "sft"]

    # The same batches in the same order: every logged loss equals the uninterrupted run's.
    assert figures(resumed["metrics"]) == figures(resumed["reference_metrics"])


def test_a_reward_server_that_goes_away_stops_grpo_with_the_resume_command(resumed):
    assert resumed["second_rc"] == 2, resumed["second_log"][-3000:]
    errors = [line for line in resumed["second_log"].splitlines() if "rlstack: error:" in line]
    assert len(errors) == 1
    assert "Traceback" not in resumed["second_log"]
    assert "stage grpo stopped at step 4" in errors[0]
    assert "reward-model server" in errors[0]
    assert (
        f"the run can resume from grpo step 2: rlstack run --resume {resumed['run']}" in (errors[0])
    )
    assert resumed["grpo_states"] == ["step-000002"]
    assert steps_of(resumed["metrics_second"], "grpo", "policy_loss") == [1, 2, 3]


def test_grpo_resumes_with_the_prompts_an_uninterrupted_run_takes(resumed):
    assert resumed["third_rc"] == 0, resumed["third_log"][-3000:]
    cfg = load_config(str(resumed["run"] / "config.yaml"))
    train, _ = StageContext(cfg, resumed["run"], None, {}).load_data("grpo")
    sampler = PromptSampler(len(train), cfg.seed)
    expected = []
    for _ in range(4):
        prompts = [train[i]["prompt"].replace("\n", " ") for i in sampler.take(PROMPTS)]
        expected.append(sorted(prompts * SAMPLES))
    per_step = PROMPTS * SAMPLES

    def by_step(lines):
        return [sorted(lines[i : i + per_step]) for i in range(0, len(lines), per_step)]

    assert by_step(resumed["calls_second"]) == expected[:3]  # steps 1-3, then the server left
    assert by_step(resumed["calls_third"]) == expected[2:]  # steps 3 and 4 after the resume


def test_grpo_restores_its_state_and_gives_the_engines_the_restored_weights(resumed):
    row = resumes(resumed["run"])["grpo"]
    assert row["step"] == 2
    assert row["restored"] == row["saved"]
    assert row["restored"]["policy"][0]["optimizer_steps"] == 2
    step3 = [r for r in resumed["metrics"] if r["stage"] == "grpo" and r["step"] == 3]
    # The rollout of step 3 came from the restored weights, not from the SFT checkpoint the
    # engines started with: engine and learner logprobs agree to float noise.
    assert step3[0]["logprob_diff_mean"] < 1e-4
    assert step3[0]["policy_version_lag"] == 0


def test_finished_stages_are_not_rerun_and_metrics_hold_each_step_once(resumed):
    assert "stage sft: finished before" in resumed["third_log"]
    assert "stage sft: starting" not in resumed["third_log"]
    sft_ckpt = resumed["run"] / "checkpoints" / "sft" / "model.safetensors"
    assert sft_ckpt.stat().st_mtime == resumed["sft_mtime"]
    rows = resumed["metrics"]
    keys = [(r["stage"], r["step"], "eval" if any("eval/" in k for k in r) else "") for r in rows]
    assert len(keys) == len(set(keys))
    assert steps_of(rows, "grpo", "policy_loss") == [1, 2, 3, 4]
    assert steps_of(rows, "sft", "loss") == [10, 20, 30, 40]
    summary = json.loads((resumed["run"] / "summary.json").read_text())
    assert list(summary["checkpoints"]) == ["sft", "grpo"]
    assert (resumed["run"] / "checkpoints" / "grpo" / "model.safetensors").is_file()
    assert not list((resumed["run"] / "state" / "grpo").glob("step-*"))  # done: states removed
