"""The driver: runs the configured stages in order, each stage's checkpoint feeding the next.

    pretrain -> sft -> reward_model -> ppo -> grpo     (the default list; `dpo` may replace
                                                       or precede ppo)

The policy checkpoint passes from stage to stage (pretrain, sft, ppo and grpo each write one);
the reward model checkpoint feeds PPO's reward scorer and critic. The run directory holds the
resolved config, `metrics.jsonl`, `run.log`, TensorBoard events, `checkpoints/<stage>/` and the
resumable state of the stages (`state/`, rlstack.stages.state).

`resume_pipeline` (`rlstack run --resume RUN_DIR`) continues a stopped run with its saved
config: finished stages are skipped, the stage in progress restarts from its newest state, and
metrics.jsonl loses the rows of steps after that state, so every step appears once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from rlstack.config import Config, to_yaml
from rlstack.errors import RLStackError, user_error
from rlstack.metrics import MetricsWriter
from rlstack.resume import resume_config, resume_point
from rlstack.runtime import init_ray
from rlstack.stages import dpo, pretrain, reward_model, rl, sft
from rlstack.stages.context import StageContext
from rlstack.stages.state import BrokenStateError, keep_metrics, latest_state, mark_done

logger = logging.getLogger(__name__)
# For a message the command line prints itself (the resume hint): logged to run.log only.
RUN_LOG_ONLY = {"run_log_only": True}


def new_run_dir(base: str = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(base) / stamp
    n = 1
    while path.exists():
        path = Path(base) / f"{stamp}-{n}"
        n += 1
    return path


def _log_to_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def run_pipeline(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """Run every stage of `cfg.stages`; returns the run directory."""
    run_dir = Path(run_dir or cfg.run_dir or new_run_dir()).resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise RLStackError(f"run directory {run_dir} is a file; choose a directory")
    if (run_dir / "summary.json").exists():
        raise RLStackError(f"run directory {run_dir} holds a finished run; choose another")
    for name in ("metrics.jsonl", "config.yaml"):
        if (run_dir / name).exists():
            raise RLStackError(
                f"run directory {run_dir} already holds {name} (a run's or yours); choose "
                f"another, or continue a stopped run with `rlstack run --resume {run_dir}`"
            )
    cfg.run_dir = str(run_dir)
    # Bad input fails here, before the run directory or any actor exists.
    ctx = StageContext(cfg=cfg, run_dir=run_dir, metrics=None, env_vars={})
    ctx.preflight()
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_dir_lock(run_dir):
        if (run_dir / "config.yaml").exists():  # another run took the directory meanwhile
            raise RLStackError(f"run directory {run_dir} already holds config.yaml; choose another")
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        return _run_logged(ctx, run_dir, {})


def resume_pipeline(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Continue a stopped run in `run_dir`; returns the run directory.

    Finished stages (a done marker and their checkpoint) are skipped; the first unfinished stage
    restarts from its newest saved state (or from its start when it saved none, provided an
    earlier stage finished); metrics.jsonl keeps the rows up to that point.
    """
    run_dir = Path(run_dir).resolve()
    cfg = resume_config(run_dir, overrides)
    with _run_dir_lock(run_dir):
        return _resume_locked(run_dir, cfg)


def _resume_locked(run_dir: Path, cfg: Config) -> Path:
    finished, current, saved = resume_point(run_dir, cfg)
    ctx = StageContext(cfg=cfg, run_dir=run_dir, metrics=None, env_vars={}, resume=True)
    ctx.preflight()
    step = saved.step if saved else 0
    dropped = keep_metrics(run_dir, list(finished), current, step)
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(to_yaml(cfg))
    os.replace(tmp, run_dir / "config.yaml")
    where = f"step {step} ({saved.path})" if saved else "its start"
    note = (
        f"resuming {run_dir}: {', '.join(finished) or 'no stage'} finished; {current} restarts "
        f"from {where}; {dropped} metrics rows after that dropped"
    )
    return _run_logged(ctx, run_dir, finished, note)


@contextlib.contextmanager
def _run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN_DIR/.lock while a run or a resume works there: a second one is refused instead
    of both writing the same metrics, states and checkpoints."""
    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RLStackError(
                f"run directory {run_dir} is in use by another rlstack run (pid {holder}); "
                f"wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _run_logged(
    ctx: StageContext, run_dir: Path, finished: dict[str, dict], note: str | None = None
) -> Path:
    """Run the stages with the run's log file attached; a failure is logged there too."""
    handler = _log_to_file(run_dir)
    if note:
        logger.info("%s", note)
    try:
        return _run_stages(ctx, run_dir, finished)
    except BaseException as err:
        # The command line prints the error; the run's own log keeps it too.
        text = f"{type(err).__name__}: {err}" if not isinstance(err, RLStackError) else str(err)
        record = logging.LogRecord(
            __name__, logging.ERROR, __file__, 0, "run stopped: %s", (text,), None
        )
        handler.handle(record)
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _stopped(ctx: StageContext, stage: str, err: BaseException) -> RLStackError | None:
    """Say where a stage stopped and from which step `rlstack run --resume` continues: as a
    one-line RLStackError to raise instead when the cause is one (bad input, a reward server
    that stopped answering), in the log otherwise (None: re-raise `err` with its traceback)."""
    saved = latest_state(ctx.run_dir, stage)
    command = f"rlstack run --resume {ctx.run_dir}"
    if saved is not None:
        hint = f"the run can resume from {stage} step {saved.step}: {command}"
    elif ctx.outputs:
        hint = f"the run can resume at the start of {stage}: {command}"
    else:
        every = getattr(ctx.cfg, stage).save_every
        hint = (
            f"no state was saved yet ({stage}.save_every={every}); start the run again in "
            f"another run directory (or remove {ctx.run_dir} first)"
        )
    where = f"at step {ctx.step}" if ctx.step else "while starting"
    if isinstance(err, BrokenStateError):  # its message says how to continue
        return RLStackError(f"stage {stage} stopped {where}: {err}")
    if isinstance(err, KeyboardInterrupt):
        logger.error("stage %s interrupted %s; %s", stage, where, hint, extra=RUN_LOG_ONLY)
        err.add_note(f"rlstack: stage {stage} interrupted {where}; {hint}")
        return None
    user = user_error(err)
    if user is None:  # a bug or an engine failure: keep its traceback, say how to continue
        logger.error(
            "stage %s stopped %s (%s); %s",
            stage,
            where,
            type(err).__name__,
            hint,
            extra=RUN_LOG_ONLY,
        )
        # The note ends the printed traceback, so the way on is the last thing a user reads.
        err.add_note(f"rlstack: stage {stage} stopped {where}; {hint}")
        return None
    return RLStackError(f"stage {stage} stopped {where}: {user}; {hint}")


def _run_stage(ctx: StageContext, stage: str, policy_label: str | None) -> str:
    if stage == "pretrain":
        return pretrain.run(ctx)
    if stage == "sft":
        return sft.run(ctx)
    if stage == "reward_model":
        return reward_model.run(ctx)
    if stage == "dpo":
        return dpo.run(ctx)
    return rl.run(ctx, stage, start_label=policy_label)


def _run_stages(ctx: StageContext, run_dir: Path, finished: dict[str, dict]) -> Path:
    cfg = ctx.cfg
    logger.info("run directory: %s", run_dir)
    t_start = time.time()

    import ray

    owns_ray = not ray.is_initialized()  # a caller's Ray (tests, notebooks) stays up
    ctx.env_vars = init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.loopback)
    ctx.metrics = MetricsWriter(run_dir)
    if cfg.model.init != "random":
        ctx.policy_path = cfg.model.init
    policy_label = "init" if cfg.model.init != "random" else None
    durations = {}
    try:
        for stage in cfg.stages:
            t0 = time.time()
            if stage in finished:
                path, durations[stage] = finished[stage]["checkpoint"], finished[stage]["seconds"]
                logger.info("stage %s: finished before (%s); skipped", stage, path)
            else:
                logger.info("stage %s: starting", stage)
                ctx.step = 0
                try:
                    path = _run_stage(ctx, stage, policy_label)
                except BaseException as err:
                    stopped = _stopped(ctx, stage, err)
                    if stopped is None:
                        raise
                    raise stopped from err
                ctx.resume = False  # only the stage in progress continues from a state
                durations[stage] = round(time.time() - t0, 1)
                mark_done(run_dir, stage, path, durations[stage])
                logger.info("stage %s: done in %.1fs", stage, durations[stage])
            if stage == "reward_model":
                ctx.reward_model_path = path
            else:
                ctx.policy_path, policy_label = path, stage
            ctx.outputs[stage] = path
    finally:
        ctx.metrics.close()
        if owns_ray:
            ray.shutdown()
    summary = {
        "checkpoints": ctx.outputs,
        "stage_seconds": durations,
        "total_seconds": round(time.time() - t_start, 1),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("all stages done in %.1fs; run directory: %s", summary["total_seconds"], run_dir)
    return run_dir
