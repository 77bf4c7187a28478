"""What `rlstack run --resume RUN_DIR` continues from: the run's config and its resume point.

A resumed run keeps the config.yaml of its run directory. Only keys that change where and how
patiently the run executes, never what it computes, may be overridden on the command line
(`RESUME_OVERRIDES`). Finished stages are those with a done marker and their checkpoint; the
first other stage is the one in progress, restarted from its newest saved state
(rlstack.stages.state). This module imports neither Ray nor torch: the command line reads the
config with it before setting the process environment.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from rlstack.config import Config, load_config
from rlstack.config.load import override_key
from rlstack.errors import ConfigError
from rlstack.scorers.reward_http import is_reward_url
from rlstack.stages.state import SavedState, latest_state, read_done

# Keys `--resume` accepts on the command line: where and how patiently the run executes, never
# what it computes. A reward-model server may move to another URL (it must serve the same
# checkpoint); every other key keeps the value in the run's config.yaml.
RESUME_OVERRIDES = (
    "ray.*",
    "rollout.sync_timeout_s",
    "*.save_every",
    "ppo.reward_timeout_s",
    "ppo.reward_retries",
    "ppo.reward_model",
    "grpo.reward_timeout_s",
    "grpo.reward_retries",
    "grpo.reward_model",
)


def resume_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...]) -> Config:
    """The run's saved config with the overrides `--resume` allows; errors name the key."""
    where = "--resume"
    for item in overrides:
        key = override_key(item).strip()
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUME_OVERRIDES):
            raise ConfigError(
                f"{where}: override {item!r} would change the run's results; a resumed run keeps "
                f"its config.yaml (allowed: {', '.join(RESUME_OVERRIDES)})"
            )
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        what = "is not a directory" if run_dir.exists() else "does not exist"
        raise ConfigError(f"{where}: {run_dir} {what}")
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"{where}: {run_dir} holds no config.yaml; it is not a run directory")
    if (run_dir / "summary.json").exists():
        raise ConfigError(
            f"{where}: the run in {run_dir} finished (summary.json); nothing to resume"
        )
    before = load_config(str(saved))
    cfg = load_config(str(saved), overrides)
    for stage in ("ppo", "grpo"):
        old, new = getattr(before, stage).reward_model, getattr(cfg, stage).reward_model
        if old != new and not (is_reward_url(old) and is_reward_url(new)):
            raise ConfigError(
                f"{where}: {stage}.reward_model may only move from one server URL to another "
                f"(was {old!r})"
            )
    cfg.run_dir = str(run_dir)
    return cfg


def resume_point(run_dir: Path, cfg: Config) -> tuple[dict[str, dict], str, SavedState | None]:
    """The finished stages (done records by name), the stage in progress and its newest saved
    state (None: it restarts from its start). A run with neither a finished stage nor a saved
    state has nothing to resume: a ConfigError."""
    finished = {}
    for stage in cfg.stages:
        done = read_done(run_dir, stage)
        if done is None:
            break
        finished[stage] = done
    current = next((s for s in cfg.stages if s not in finished), None)
    if current is None:
        raise ConfigError(f"--resume: every stage of the run in {run_dir} finished already")
    saved = latest_state(run_dir, current)
    if saved is None and not finished:
        raise ConfigError(
            f"--resume: nothing to resume in {run_dir}: no stage finished and {current} saved "
            f"no state ({current}.save_every={getattr(cfg, current).save_every}); start a new run "
            f"in another run directory (or remove {run_dir} first)"
        )
    return finished, current, saved
