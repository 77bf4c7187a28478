"""`rlstack run --resume` refuses what it cannot resume with one clear line and exit status 2,
before anything starts (no Ray, no engines)."""

from __future__ import annotations

import json

import pytest
from test_cli_errors import assert_one_clear_error, rlstack

from rlstack.config import load_config, to_yaml
from rlstack.stages.state import write_state


@pytest.fixture
def stopped_run(tmp_path):
    """A run directory as a stopped GRPO-only run leaves it: its config, no state yet."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, ["stages=[grpo]", f"run_dir={run}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "metrics.jsonl").write_text(json.dumps({"stage": "grpo", "step": 0}) + "\n")
    return run


def test_resume_of_a_missing_directory_is_refused(tmp_path):
    missing = tmp_path / "nowhere"
    result = rlstack("run", "--resume", str(missing), cwd=tmp_path)
    assert_one_clear_error(result, "--resume", str(missing), "does not exist")


def test_resume_without_a_directory_or_with_a_key_lacking_a_value_is_refused(tmp_path):
    assert_one_clear_error(rlstack("run", "--resume", "", cwd=tmp_path), "give the run directory")
    result = rlstack("run", "--resume", str(tmp_path), "ray.address", cwd=tmp_path)
    assert_one_clear_error(result, "override 'ray.address': expected dotted.key=value")


def test_resume_of_a_directory_that_is_not_a_run_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    result = rlstack("run", "--resume", str(tmp_path), cwd=tmp_path)
    assert_one_clear_error(result, "--resume", "no config.yaml")


def test_resume_of_a_run_without_any_saved_state_is_refused(stopped_run):
    result = rlstack("run", "--resume", str(stopped_run), cwd=stopped_run.parent)
    line = assert_one_clear_error(result, "nothing to resume", "grpo.save_every=10")
    assert "Ray" not in result.stderr, line
    # Nothing was rewritten.
    assert (stopped_run / "metrics.jsonl").read_text() == '{"stage": "grpo", "step": 0}\n'


def test_resume_refuses_overrides_that_change_results(stopped_run):
    write_state(stopped_run, "grpo", 10, {"data": {}})
    for override in ("grpo.optim.lr=1", "seed=3", "grpo.steps=50"):
        result = rlstack("run", "--resume", str(stopped_run), override, cwd=stopped_run.parent)
        assert_one_clear_error(result, override, "would change the run's results")
    result = rlstack(
        "run", "--resume", str(stopped_run), "grpo.reward_model=/x/rm", cwd=stopped_run.parent
    )
    assert_one_clear_error(result, "grpo.reward_model may only move from one server URL")


def test_resume_takes_no_config_file_or_run_dir(stopped_run, tmp_path):
    result = rlstack("run", "configs/smoke.yaml", "--resume", str(stopped_run), cwd=tmp_path)
    assert_one_clear_error(result, "--resume", "a config file cannot be given")
    result = rlstack("run", "--resume", str(stopped_run), "--run-dir", "x", cwd=tmp_path)
    assert_one_clear_error(result, "--resume", "--run-dir cannot be given")


def test_resume_of_a_finished_run_is_refused(stopped_run):
    (stopped_run / "summary.json").write_text("{}")
    result = rlstack("run", "--resume", str(stopped_run), cwd=stopped_run.parent)
    assert_one_clear_error(result, "finished", "nothing to resume")


def test_a_plain_run_into_a_used_directory_points_at_resume(stopped_run):
    result = rlstack("run", "--run-dir", str(stopped_run), cwd=stopped_run.parent)
    assert_one_clear_error(result, "already holds", f"rlstack run --resume {stopped_run}")


def test_a_second_run_in_a_directory_in_use_is_refused(stopped_run):
    import fcntl
    import os

    write_state(stopped_run, "grpo", 10, {"data": {}})
    before = (stopped_run / "metrics.jsonl").read_text()
    fd = os.open(stopped_run / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run working there holds it
        os.write(fd, b"4242")
        result = rlstack("run", "--resume", str(stopped_run), cwd=stopped_run.parent)
        assert_one_clear_error(result, "is in use by another rlstack run (pid 4242)")
    finally:
        os.close(fd)
    assert (stopped_run / "metrics.jsonl").read_text() == before


def test_unreadable_done_record_or_missing_checkpoint_of_a_finished_stage_is_named(stopped_run):
    done = stopped_run / "state" / "grpo" / "done.json"
    done.parent.mkdir(parents=True)
    done.write_text("")
    result = rlstack("run", "--resume", str(stopped_run), cwd=stopped_run.parent)
    assert_one_clear_error(result, str(done), "cannot be read")
    done.write_text(json.dumps({"checkpoint": "checkpoints/grpo", "seconds": 1.0}))
    result = rlstack("run", "--resume", str(stopped_run), cwd=stopped_run.parent)
    assert_one_clear_error(result, "stage grpo finished", "checkpoints/grpo is gone")


def test_bad_timeouts_are_refused_before_anything_is_written(stopped_run, tmp_path):
    write_state(stopped_run, "grpo", 10, {"data": {}})
    config = (stopped_run / "config.yaml").read_text()
    for override in ("ray.start_timeout_s=-5", "rollout.sync_timeout_s=0"):
        result = rlstack("run", "--resume", str(stopped_run), override, cwd=tmp_path)
        assert_one_clear_error(result, override.split("=")[0], "must be at least 1")
        assert (stopped_run / "config.yaml").read_text() == config
    result = rlstack(
        "run", "--run-dir", str(tmp_path / "new"), "ray.start_timeout_s=-5", cwd=tmp_path
    )
    assert_one_clear_error(result, "ray.start_timeout_s", "must be at least 1")
    assert not (tmp_path / "new").exists()
