"""`rlstack submit`: a run submitted as a Ray job to a loopback cluster, and its fast failures."""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from pathlib import Path

import pytest

from rlstack import runtime
from rlstack.errors import ConfigError, RLStackError
from rlstack.submit import (
    add_submit_arguments,
    job_entrypoint,
    job_runtime_env,
    submit_job,
)

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

    with caplog.at_level(logging.WARNING, logger="rlstack.submit"):
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
