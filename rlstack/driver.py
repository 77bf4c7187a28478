"""The driver: runs the configured stages in order, each stage's checkpoint feeding the next.

    pretrain -> sft -> reward_model -> ppo -> grpo     (the default list; `dpo` may replace
                                                       or precede ppo)

The policy checkpoint passes from stage to stage (pretrain, sft, ppo and grpo each write one);
the reward model checkpoint feeds PPO's reward scorer and critic. The run directory holds the
resolved config, `metrics.jsonl`, `run.log`, TensorBoard events and `checkpoints/<stage>/`.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

from rlstack.config import Config, to_yaml
from rlstack.errors import RLStackError
from rlstack.metrics import MetricsWriter
from rlstack.runtime import init_ray
from rlstack.stages import dpo, pretrain, reward_model, rl, sft
from rlstack.stages.context import StageContext

logger = logging.getLogger(__name__)


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
    for name in ("metrics.jsonl", "config.yaml", "summary.json"):
        if (run_dir / name).exists():
            raise RLStackError(
                f"run directory {run_dir} already holds {name} (a run's or yours); choose another"
            )
    cfg.run_dir = str(run_dir)
    # Bad input fails here, before the run directory or any actor exists.
    ctx = StageContext(cfg=cfg, run_dir=run_dir, metrics=None, env_vars={})
    ctx.preflight()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    handler = _log_to_file(run_dir)
    try:
        return _run_stages(ctx, run_dir)
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


def _run_stages(ctx: StageContext, run_dir: Path) -> Path:
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
            logger.info("stage %s: starting", stage)
            if stage == "pretrain":
                ctx.policy_path = pretrain.run(ctx)
            elif stage == "sft":
                ctx.policy_path = sft.run(ctx)
            elif stage == "reward_model":
                ctx.reward_model_path = reward_model.run(ctx)
            elif stage == "dpo":
                ctx.policy_path = dpo.run(ctx)
            else:
                ctx.policy_path = rl.run(ctx, stage, start_label=policy_label)
            if stage != "reward_model":
                policy_label = stage
            ctx.outputs[stage] = ctx.checkpoint_dir(stage)
            durations[stage] = round(time.time() - t0, 1)
            logger.info("stage %s: done in %.1fs", stage, durations[stage])
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
