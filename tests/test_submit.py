"""`rlstack submit`: a run submitted as a Ray job to a loopback cluster (one or two nodes), the
verifier code it carries, a stopped run resumed as a job (`--resume`), and its fast failures."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import time
from pathlib import Path

import pytest
from conftest import NODE_SLOT
from test_cli_errors import assert_one_clear_error, rlstack
from tiny_config import TINY

from rlstack import runtime
from rlstack.config import load_config, to_yaml
from rlstack.errors import ConfigError, RLStackError
from rlstack.job_payload import job_runtime_env, stage_verifier_files
from rlstack.metrics import read_metrics
from rlstack.stages.state import write_state
from rlstack.submit import add_submit_arguments, job_entrypoint, resume_entrypoint, submit_job

TINY_CONFIG = """\
stages: [pretrain]
pretrain: {steps: 3, batch_size: 2, seq_len: 32, eval_every: 3}
"""


@pytest.fixture
def experiment_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current directory holding the tiny config, as a user's experiment folder would."""
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_submitted_run_succeeds_and_writes_its_run_dir(
    ray_jobs_address: str, experiment_dir: Path
) -> None:
    run_dir = experiment_dir / "run"

    code = submit_job("tiny.yaml", ray_jobs_address, [], str(run_dir), timeout_s=900)

    assert code == 0
    assert (run_dir / "metrics.jsonl").is_file()
    assert (run_dir / "checkpoints" / "pretrain" / "config.json").is_file()


LONG_PRETRAIN = """\
stages: [pretrain]
pretrain: {steps: 300, batch_size: 2, seq_len: 32, eval_every: 0, save_every: 2}
"""


def test_job_stopped_mid_stage_resumes_as_a_job_from_its_saved_state(
    ray_jobs_address: str, experiment_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A pretrain job is stopped (`ray job stop`) once it saved a state; `submit --resume`
    continues it on the cluster, with an override that a resume accepts. The run directory lies
    outside the working_dir, as on storage the nodes share. 300 steps of about 20 ms leave
    several seconds between the first saved state and the stage's end for the stop to land."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    run = tmp_path_factory.mktemp("shared") / "run"
    (experiment_dir / "long.yaml").write_text(LONG_PRETRAIN)
    client = JobSubmissionClient(ray_jobs_address)

    assert submit_job("long.yaml", ray_jobs_address, TINY, str(run), wait=False) == 0
    (job,) = [j for j in client.list_jobs() if str(run) in (j.entrypoint or "")]
    deadline = time.monotonic() + 300
    while not list((run / "state" / "pretrain").glob("step-*")):
        assert not client.get_job_status(job.submission_id).is_terminal(), client.get_job_logs(
            job.submission_id
        )[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.stop_job(job.submission_id)
    while not client.get_job_status(job.submission_id).is_terminal():
        time.sleep(0.2)
    assert client.get_job_status(job.submission_id) == JobStatus.STOPPED
    assert not (run / "state" / "pretrain" / "done.json").exists(), "finished before the stop"
    assert not (run / "summary.json").exists()

    code = submit_job(
        None, ray_jobs_address, ["pretrain.save_every=50"], None, timeout_s=900, resume=str(run)
    )

    assert code == 0
    (resumed,) = [j for j in client.list_jobs() if f"--resume {run}" in (j.entrypoint or "")]
    assert resumed.entrypoint == resume_entrypoint(str(run), ["pretrain.save_every=50"])
    assert resumed.status == JobStatus.SUCCEEDED
    (record,) = [json.loads(line) for line in (run / "state" / "resumes.jsonl").open()]
    assert record["stage"] == "pretrain" and record["step"] > 0
    log = (run / "run.log").read_text()
    assert f"resuming {run}: no stage finished; pretrain restarts from step {record['step']}" in log
    assert json.loads((run / "summary.json").read_text())["stage_seconds"].keys() == {"pretrain"}
    assert (run / "state" / "pretrain" / "done.json").is_file()
    steps = [row["step"] for row in read_metrics(run) if "loss" in row]
    assert steps == sorted(set(steps)) and steps[-1] == 300
    assert load_config(str(run / "config.yaml")).pretrain.save_every == 50


MARKER_VERIFIER = """
import os
from pathlib import Path

import ray

MARKERS = Path({markers!r})


def score(prompt, response, reference, **extras):
    node = ray.get_runtime_context().get_node_id()
    (MARKERS / f"{{node}}-{{os.getpid()}}").write_text(__file__)
    return 1.0 if response.strip() == reference.strip() else 0.0
"""

GRPO_CONFIG = """\
stages: [pretrain, grpo]
model: {{hidden_size: 64, num_heads: 2, num_kv_heads: 1, ffn_size: 128, expert_size: 64,
        max_seq_len: 128}}
learner: {{threads: 1}}
rollout: {{threads: 1}}
pretrain: {{steps: 3, batch_size: 2, seq_len: 32, eval_every: 3}}
grpo:
  steps: 2
  prompts_per_step: 2
  samples_per_prompt: 2
  eval_prompts: 2
  sampling: {{max_tokens: 4}}
  verifier: {verifier}:score
  verifier_workers: 2
  verifier_resources: {{{slot}: 1}}
"""


def test_verifier_file_outside_the_working_dir_runs_on_every_node(
    ray_jobs_address: str,
    second_node: None,
    experiment_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A verifier .py in a folder of its own travels with the job; one verifier actor per node
    (each node offers one NODE_SLOT) scores with the shipped copy, not the original file."""
    plugin_dir = tmp_path_factory.mktemp("user-plugins")
    markers = tmp_path_factory.mktemp("markers")
    plugin = plugin_dir / "marker_verifier.py"
    plugin.write_text(MARKER_VERIFIER.format(markers=str(markers)))
    config = GRPO_CONFIG.format(verifier=plugin, slot=NODE_SLOT)
    (experiment_dir / "grpo.yaml").write_text(config)

    code = submit_job("grpo.yaml", ray_jobs_address, [], str(experiment_dir / "run"), timeout_s=900)

    assert code == 0
    assert (experiment_dir / "run" / "checkpoints" / "grpo" / "config.json").is_file()
    calls = list(markers.iterdir())
    nodes = {marker.name.split("-")[0] for marker in calls}
    assert len(nodes) == 2, [marker.name for marker in calls]
    for marker in calls:
        ran_from = Path(marker.read_text())
        assert ran_from != plugin and not ran_from.is_relative_to(plugin_dir)
        assert ran_from.name == "marker_verifier.py"
        assert ran_from.parent.name.startswith("rlstack_verifier_marker_verifier_")


def test_verifier_files_outside_the_working_dir_are_staged_as_modules(
    experiment_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    plugin = tmp_path_factory.mktemp("plugins") / "my check.py"
    plugin.write_text("def score(prompt, response, reference, **extras):\n    return 1.0\n")
    (experiment_dir / "inside.py").write_text(plugin.read_text())
    config = TINY_CONFIG.replace("[pretrain]", "[pretrain, grpo, ppo]")
    config += f"grpo: {{verifier: '{plugin}:score'}}\n"
    config += (
        f"ppo: {{reward_source: verifier, verifier: '{experiment_dir / 'inside.py'}:score'}}\n"
    )
    (experiment_dir / "rl.yaml").write_text(config)
    staging = tmp_path_factory.mktemp("staging")

    modules, overrides = stage_verifier_files(
        experiment_dir / "rl.yaml", experiment_dir, [], staging
    )

    assert (
        len(modules) == 1 and (Path(modules[0]) / "my_check.py").read_text() == plugin.read_text()
    )
    package = Path(modules[0]).name
    assert package.startswith("rlstack_verifier_my_check_")
    assert overrides == [
        f'grpo.verifier="{package}.my_check:score"',
        'ppo.verifier="inside.py:score"',
    ]


def test_job_past_its_timeout_is_stopped_and_fails(
    ray_jobs_address: str, experiment_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    start = time.monotonic()

    with caplog.at_level(logging.ERROR, logger="rlstack.submit"):
        code = submit_job("tiny.yaml", ray_jobs_address, [], str(experiment_dir / "run"), True, 1)

    assert code == 1
    assert time.monotonic() - start < 30
    assert any("did not end within 1 s; stopped it" in r.getMessage() for r in caplog.records)


def test_missing_config_raises_naming_the_file(experiment_dir: Path, unused_port: int) -> None:
    with pytest.raises(ConfigError, match="missing.yaml"):
        submit_job("missing.yaml", f"http://127.0.0.1:{unused_port}", [], None)


def test_unreachable_address_raises_quickly_naming_it(
    experiment_dir: Path, unused_port: int
) -> None:
    address = f"http://127.0.0.1:{unused_port}"
    start = time.monotonic()

    with pytest.raises(RLStackError, match=f"cannot reach the Ray cluster at {address}"):
        submit_job("tiny.yaml", address, [], str(experiment_dir / "run"))

    assert time.monotonic() - start < 5


def test_address_that_is_not_a_dashboard_url_is_refused(experiment_dir: Path) -> None:
    with pytest.raises(RLStackError, match="not the dashboard URL"):
        submit_job("tiny.yaml", "ray://127.0.0.1:10001", [], None)


def test_config_outside_the_current_directory_is_refused(
    experiment_dir: Path, tmp_path_factory: pytest.TempPathFactory, unused_port: int
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "tiny.yaml"
    elsewhere.write_text(TINY_CONFIG)

    with pytest.raises(ConfigError, match="outside the current directory"):
        submit_job(str(elsewhere), f"http://127.0.0.1:{unused_port}", [], None)


def test_config_in_a_left_out_folder_is_refused(experiment_dir: Path, unused_port: int) -> None:
    (experiment_dir / "runs").mkdir()
    (experiment_dir / "runs" / "tiny.yaml").write_text(TINY_CONFIG)

    with pytest.raises(ConfigError, match="leaves out"):
        submit_job("runs/tiny.yaml", f"http://127.0.0.1:{unused_port}", [], None)


def test_malformed_override_is_refused(experiment_dir: Path, unused_port: int) -> None:
    with pytest.raises(ConfigError, match="dotted.key=value"):
        submit_job("tiny.yaml", f"http://127.0.0.1:{unused_port}", ["pretrain.steps"], None)


def test_paths_the_job_does_not_carry_and_a_relative_run_dir_are_warned_about(
    experiment_dir: Path, unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    outside = experiment_dir.parent / "outside.jsonl"
    outside.write_text("{}\n")
    (experiment_dir / "inside.jsonl").write_text("{}\n")
    config = TINY_CONFIG + f"data: {{train: inside.jsonl, eval: {outside}}}\n"
    (experiment_dir / "tiny.yaml").write_text(config)

    with caplog.at_level(logging.WARNING, logger="rlstack"):
        with pytest.raises(RLStackError):
            submit_job("tiny.yaml", f"http://127.0.0.1:{unused_port}", ["x=../outside.jsonl"], "r")

    warnings = [record.getMessage() for record in caplog.records]
    assert sum(str(outside) in message for message in warnings) == 1
    assert sum("../outside.jsonl" in message for message in warnings) == 1
    assert not any("inside.jsonl" in message for message in warnings)
    assert any("run directory r is relative" in message for message in warnings)


def test_entrypoint_runs_rlstack_run_with_quoted_arguments() -> None:
    entrypoint = job_entrypoint("configs/my run.yaml", "/shared/runs/a", ["grpo.lr=3e-4"])

    assert shlex.split(entrypoint) == [
        "python",
        "-m",
        "rlstack",
        "run",
        "--run-dir",
        "/shared/runs/a",
        "configs/my run.yaml",
        "grpo.lr=3e-4",
    ]


def test_runtime_env_carries_working_dir_rlstack_source_and_base_env(tmp_path: Path) -> None:
    env = job_runtime_env(tmp_path)

    assert env["working_dir"] == str(tmp_path)
    assert [Path(module).name for module in env["py_modules"]] == ["rlstack"]
    assert (Path(env["py_modules"][0]) / "submit.py").is_file()
    assert {".venv", ".git", "/runs/", "__pycache__"} <= set(env["excludes"])
    assert env["env_vars"].keys() == {*runtime.BASE_ENV, "RAY_OVERRIDE_JOB_RUNTIME_ENV"}


@pytest.mark.parametrize(
    "argv",
    [
        ["c.yaml", "--address", "http://h:8265", "a.b=1", "c=2"],
        ["c.yaml", "a.b=1", "c=2", "--address", "http://h:8265"],
        ["--address", "http://h:8265", "c.yaml", "a.b=1", "c=2"],
    ],
)
def test_overrides_parse_before_or_after_the_options(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_submit_arguments(parser.add_subparsers().add_parser("submit"))

    args = parser.parse_args(["submit", *argv])

    assert (args.config, args.overrides, args.wait) == ("c.yaml", ["a.b=1", "c=2"], True)


def test_no_overrides_and_no_wait_parse() -> None:
    parser = argparse.ArgumentParser()
    add_submit_arguments(parser)

    args = parser.parse_args(["c.yaml", "--no-wait", "--address", "http://h:8265"])

    assert (args.overrides, args.wait, args.run_dir, args.timeout) == ([], False, None, None)


@pytest.fixture
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as a stopped pretrain run leaves it: its config and one saved state."""
    run = tmp_path_factory.mktemp("shared") / "run"
    run.mkdir()
    cfg = load_config(None, ["stages=[pretrain]", f"run_dir={run}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    write_state(run, "pretrain", 4, {"data": {}})
    return run


def submit_resume(run: Path, address: str, *args: str, cwd: Path):
    """`rlstack submit --resume RUN --address ADDRESS [args]` in a subprocess."""
    return rlstack("submit", "--resume", str(run), "--address", address, *args, cwd=cwd)


def test_submit_takes_either_a_config_or_resume(
    experiment_dir: Path, stopped_run: Path, unused_port: int
) -> None:
    address = f"http://127.0.0.1:{unused_port}"

    result = rlstack("submit", "--address", address, cwd=experiment_dir)
    assert_one_clear_error(result, "give a CONFIG file to run, or --resume RUN_DIR")
    result = submit_resume(stopped_run, address, "tiny.yaml", cwd=experiment_dir)
    assert_one_clear_error(result, "submit --resume", "a config file (tiny.yaml) cannot be given")
    with pytest.raises(ConfigError, match="--run-dir cannot be given"):
        submit_job(None, address, [], "elsewhere", resume=str(stopped_run))
    with pytest.raises(ConfigError, match="give the run directory"):
        submit_job(None, address, [], None, resume="")
    result = submit_resume(stopped_run, address, "ray.address", cwd=experiment_dir)
    assert_one_clear_error(result, "override 'ray.address' is not of the form dotted.key=value")


def test_resume_of_a_local_directory_is_checked_before_submitting(
    experiment_dir: Path, stopped_run: Path, unused_port: int
) -> None:
    """A RUN_DIR that exists here is refused as `run --resume` would refuse it, naming it; the
    first override lands in CONFIG's place when parsed and still counts as an override."""
    address = f"http://127.0.0.1:{unused_port}"

    result = submit_resume(
        stopped_run, address, "ray.start_timeout_s=60", "pretrain.steps=9", cwd=experiment_dir
    )
    assert_one_clear_error(result, "pretrain.steps=9", "would change the run's results")
    with pytest.raises(ConfigError, match="no config.yaml; it is not a run directory"):
        submit_job(None, address, [], None, resume=str(experiment_dir))
    (stopped_run / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="finished .summary.json.; nothing to resume"):
        submit_job(None, address, [], None, resume=str(stopped_run))


def test_resume_of_a_directory_only_the_cluster_has_is_submitted_absolute(
    experiment_dir: Path, unused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"http://127.0.0.1:{unused_port}"
    with pytest.raises(ConfigError, match="relative path that does not exist here"):
        submit_job(None, address, [], None, resume="runs/gone")

    with caplog.at_level(logging.INFO, logger="rlstack.submit"):
        with pytest.raises(RLStackError, match="cannot reach the Ray cluster"):
            submit_job(None, address, [], None, resume="/cluster/only/run")

    assert any("the job checks it on the cluster" in r.getMessage() for r in caplog.records)
    assert shlex.split(resume_entrypoint("/shared/my run", ["ray.start_timeout_s=60"])) == [
        "python",
        "-m",
        "rlstack",
        "run",
        "--resume",
        "/shared/my run",
        "ray.start_timeout_s=60",
    ]


def test_resume_of_a_run_whose_verifier_file_travelled_alone_needs_a_copy(
    experiment_dir: Path, stopped_run: Path, unused_port: int
) -> None:
    """The first job named a verifier file outside the working_dir by its staged package; a
    resumed job carries no such package, so the working_dir must hold a copy of it."""
    package, address = "rlstack_verifier_check_0123456789", f"http://127.0.0.1:{unused_port}"
    cfg = load_config(
        None, ["stages=[grpo]", f"run_dir={stopped_run}", f"grpo.verifier={package}.check:score"]
    )
    (stopped_run / "config.yaml").write_text(to_yaml(cfg))
    write_state(stopped_run, "grpo", 2, {"data": {}})

    copy = experiment_dir / package / "check.py"
    with pytest.raises(ConfigError, match=f"copy that same file to {copy}"):
        submit_job(None, address, [], None, resume=str(stopped_run))
    copy.parent.mkdir()
    copy.write_text("def score(prompt, response, reference, **extras):\n    return 1.0\n")
    with pytest.raises(RLStackError, match="cannot reach the Ray cluster"):
        submit_job(None, address, [], None, resume=str(stopped_run))
