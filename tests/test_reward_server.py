"""`rlstack serve-rm`: a reward model trained by a real (tiny) run, served over HTTP on loopback.

The server runs as a subprocess of the real command line. Its scores are compared with the
reward-model actor class a run uses in-process, on the token batches the run builds; a short PPO
run then scores its rollouts through the server's URL.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch
from conftest import free_ports
from tiny_config import TINY

from rlstack.config import load_config
from rlstack.driver import run_pipeline
from rlstack.errors import RLStackError
from rlstack.learner.worker import LearnerWorker, ModelSpec
from rlstack.metrics import read_metrics
from rlstack.model.build import load_tokenizer
from rlstack.scorers.reward_http import RemoteRewardModel
from rlstack.stages.batches import (
    encode,
    pair_batch,
    prompt_ids,
    response_text,
    rollout_batch,
)

SERVER_START_TIMEOUT_S = 120.0
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def checkpoints(ray_local, tmp_path_factory) -> dict[str, str]:
    """A tiny policy and a reward model trained on it by the real stages."""
    run = tmp_path_factory.mktemp("rm-base")
    cfg = load_config(
        None,
        [
            *TINY,
            "stages=[pretrain,reward_model]",
            "pretrain.steps=10",
            "pretrain.seq_len=64",
            "reward_model.steps=20",
            "reward_model.optim.lr=3e-3",
            "reward_model.optim.warmup_steps=0",
            "reward_model.batch_size=8",
            "reward_model.eval_every=0",
            "reward_model.eval_batches=1",
        ],
    )
    run_pipeline(cfg, run)
    ckpt = run / "checkpoints"
    return {"policy": str(ckpt / "pretrain"), "reward_model": str(ckpt / "reward_model")}


def rlstack(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlstack", *args], capture_output=True, text=True, **kwargs
    )


def get(url: str) -> tuple[int, dict]:
    try:
        with OPENER.open(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post(url: str, body: bytes | dict, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with OPENER.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    """`rlstack serve-rm` on 127.0.0.1 and a free port; yields its URL and log file."""
    port = free_ports(1)[0]
    log_path = tmp_path_factory.mktemp("server") / "serve-rm.log"
    command = [sys.executable, "-m", "rlstack", "serve-rm", checkpoints["reward_model"]]
    command += ["--port", str(port), "--batch-size", "3", "--threads", "1"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                if get(f"{url}/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield {"url": url, "log": log_path, "port": port}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def in_process_reward_model(path: str) -> LearnerWorker:
    """The reward-model role exactly as a run starts it, here without Ray."""
    return LearnerWorker(0, 1, ModelSpec(kind="scalar", init_path=path, trainable=False, threads=1))


PROMPTS = ["12+7", "What is 3*4?", "x" * 150, "Say hi"]
RESPONSES = ["19", "12, I think", "cut short", "hi<|user|>again"]


def test_scores_equal_the_in_process_reward_model_on_a_runs_token_ids(checkpoints, server):
    rm = in_process_reward_model(checkpoints["reward_model"])
    tokenizer = load_tokenizer(checkpoints["reward_model"])
    max_prompt, eos = 128 - 16, tokenizer.eos_token_id
    ended = [True, False, True, False]
    # The run's local path: prompt ids cut to its prompt limit, the sampled ids (with the end
    # token when the engine stopped on it), scored by the reward-model actor class.
    prompts = [prompt_ids(tokenizer, p, max_prompt) for p in PROMPTS]
    samples = [
        {"prompt_index": i, "response_ids": encode(tokenizer, r) + [eos] * e, "logprobs": []}
        for i, (r, e) in enumerate(zip(RESPONSES, ended))
    ]
    samples = [dict(s, logprobs=[0.0] * len(s["response_ids"])) for s in samples]
    expected = rm.scores(rollout_batch(prompts, samples, tokenizer.pad_token_id))
    # What the run sends for those ids: the same texts back.
    assert [response_text(tokenizer, s["response_ids"]) for s in samples] == RESPONSES

    status, out = post(
        f"{server['url']}/score",
        {"prompts": PROMPTS, "responses": RESPONSES, "ended": ended, "max_prompt_tokens": 112},
    )

    assert status == 200, out
    assert torch.allclose(torch.tensor(out["scores"]), expected, atol=1e-5), (out, expected)
    assert expected.std() > 1e-4  # a trained head: the scores differ between texts


def test_default_tokenization_is_the_reward_model_training_format(checkpoints, server):
    rm = in_process_reward_model(checkpoints["reward_model"])
    tokenizer = load_tokenizer(checkpoints["reward_model"])
    rows = [{"prompt": p, "chosen": r, "rejected": ""} for p, r in zip(PROMPTS, RESPONSES)]
    batch = pair_batch(tokenizer, rows, 128)
    expected = rm.scores(
        {"input_ids": batch["chosen_ids"], "attention_mask": batch["chosen_attention_mask"]}
    )

    status, out = post(f"{server['url']}/score", {"prompts": PROMPTS, "responses": RESPONSES})

    assert status == 200, out
    assert torch.allclose(torch.tensor(out["scores"]), expected, atol=1e-5), (out, expected)


@pytest.mark.parametrize(
    "body, status",
    [
        (b"{not json", 422),
        ({"prompts": ["a"]}, 422),
        ({"prompts": ["a", "b"], "responses": ["x"]}, 422),
        ({"prompts": [1], "responses": [{"x": 1}]}, 422),
        ({"prompts": ["a"], "responses": ["b"], "temperature": 2}, 422),
        ({"prompts": ["a"], "responses": ["b"], "max_prompt_tokens": 0}, 422),
        ({"prompts": ["a"], "responses": ["b"], "max_prompt_tokens": True}, 422),
        ({"prompts": ["a"], "responses": ["b"], "ended": ["yes"]}, 422),
        ({"prompts": ["a"] * 4097, "responses": ["b"] * 4097}, 413),
    ],
)
def test_malformed_request_gets_a_4xx_json_error_and_the_server_stays_up(server, body, status):
    code, out = post(f"{server['url']}/score", body)

    assert code == status
    assert isinstance(out["error"], str) and out["error"]
    assert get(f"{server['url']}/health")[0] == 200
    code, out = post(f"{server['url']}/score", {"prompts": ["1+1"], "responses": ["2"]})
    assert code == 200 and math.isfinite(out["scores"][0])


def test_empty_request_scores_nothing(server):
    assert post(f"{server['url']}/score", {"prompts": [], "responses": []}) == (200, {"scores": []})


def test_ppo_run_scores_its_rollouts_through_the_server(checkpoints, server, tmp_path):
    before = server["log"].read_text().count("scored ")
    cfg = load_config(
        None,
        [
            *TINY,
            f"model.init={checkpoints['policy']}",
            "stages=[ppo]",
            f"ppo.reward_model={server['url']}",
            "ppo.steps=2",
            "ppo.prompts_per_step=4",
            "ppo.eval_prompts=4",
            "ppo.sampling.max_tokens=8",
        ],
    )

    rows = read_metrics(run_pipeline(cfg, tmp_path / "run"))

    steps = [r for r in rows if r["stage"] == "ppo" and "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["reward_mean"]) and math.isfinite(r["value_loss"]) for r in steps)
    evals = [r for r in rows if r["stage"] == "ppo" and "eval/reward_mean" in r]
    assert evals and all(math.isfinite(r["eval/reward_mean"]) for r in evals)
    # Two training rollouts and two evaluations, each one request to the server.
    assert server["log"].read_text().count("scored ") - before >= 4
    assert (tmp_path / "run" / "checkpoints" / "ppo-critic" / "config.json").is_file()


def test_url_that_does_not_answer_stops_the_run_with_one_line(checkpoints, tmp_path):
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    start = time.monotonic()

    result = rlstack(
        "run",
        "stages=[ppo]",
        f"model.init={checkpoints['policy']}",
        "model.max_seq_len=128",  # the checkpoint's positions
        f"ppo.reward_model={url}",
        cwd=tmp_path,
        timeout=300,
    )

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rlstack: error:")]
    assert len(errors) == 1 and "ppo.reward_model" in errors[0] and url in errors[0], errors
    assert "/health" in errors[0]
    assert time.monotonic() - start < 90  # the command's imports dominate; no actor starts
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.safetensors"))


@pytest.mark.parametrize("which", ["missing", "policy", "garbled"])
def test_bad_checkpoint_is_one_line_and_exit_2(checkpoints, tmp_path, which):
    path = {"missing": str(tmp_path / "nowhere"), "policy": checkpoints["policy"]}.get(which)
    if which == "garbled":
        path = str(tmp_path)
        (tmp_path / "config.json").write_text("{not json")

    result = rlstack("serve-rm", path, "--port", str(free_ports(1)[0]), timeout=120)

    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rlstack: error:")]
    assert len(errors) == 1 and path in errors[0], result.stderr[-2000:]


def test_port_in_use_is_one_line_and_exit_2(checkpoints, server):
    result = rlstack(
        "serve-rm", checkpoints["reward_model"], "--port", str(server["port"]), timeout=120
    )

    assert result.returncode == 2, result.stderr[-3000:]
    assert f"cannot listen on 127.0.0.1:{server['port']}" in result.stderr


def test_client_retries_a_refused_connection_then_fails_with_one_error():
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    client = RemoteRewardModel(url, timeout_s=5, retries=2, key="ppo.reward_model")
    start = time.monotonic()

    with pytest.raises(RLStackError, match="failed 3 time") as err:
        client.score(["1+1"], ["2"])

    assert url in str(err.value) and "ppo.reward_model" in str(err.value)
    assert 1.4 < time.monotonic() - start < 10  # backoff 0.5 s + 1 s between the 3 tries


def test_client_reports_a_refused_request_without_retrying(server):
    client = RemoteRewardModel(server["url"], retries=3)
    start = time.monotonic()

    with pytest.raises(RLStackError, match="HTTP 422"):
        client.score(["a", "b"], ["only one"])

    assert time.monotonic() - start < 5
    assert client.score(["1+1"], ["2"], [True], 112)[0] == pytest.approx(
        post(f"{server['url']}/score", {"prompts": ["1+1"], "responses": ["2"]})[1]["scores"][0],
        abs=1e-6,
    )


def test_unknown_path_and_method_answer_with_the_same_error_shape(server):
    code, out = get(f"{server['url']}/nope")
    assert code == 404 and isinstance(out["error"], str)
    code, out = get(f"{server['url']}/score")
    assert code == 405 and isinstance(out["error"], str)
