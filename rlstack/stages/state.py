"""Resumable state of a stage, saved every `save_every` steps under the run directory.

    RUN_DIR/state/<stage>/step-000040/   one of the newest KEEP_STATES states of a stage
        meta.json       step, data position, KL coefficient, RNG state, digests (written last)
        policy/         the policy learner's DeepSpeed checkpoint: weights, optimizer, LR schedule
        critic/         PPO's critic, likewise
    RUN_DIR/state/<stage>/done.json      the stage finished: its checkpoint and seconds
    RUN_DIR/state/resumes.jsonl          one line per resumed stage: what was restored

A state is written into a hidden temporary directory next to its final place and renamed into
place when complete, so a run stopped while saving keeps its previous state. When a stage
finishes its states are removed: its final checkpoint (checkpoints/<stage>/) replaces them.
`rlstack run --resume RUN_DIR` (rlstack.driver) skips finished stages and restarts the stage in
progress from its newest state.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlstack.errors import ConfigError, DataError, RLStackError
from rlstack.model.build import check_checkpoint_files

logger = logging.getLogger(__name__)

STATE_DIR = "state"
KEEP_STATES = 2  # newest states kept per stage; the older one is a fallback if the newest breaks
META = "meta.json"
DONE = "done.json"


class BrokenStateError(RLStackError):
    """A saved state that cannot be restored; its message says what to remove."""


@dataclass
class SavedState:
    """One saved state of a stage: its step, directory and meta.json contents."""

    step: int
    path: Path
    meta: dict[str, Any]


def stage_state_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / STATE_DIR / stage


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def _write_json(path: Path, value: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_state(
    run_dir: str | Path,
    stage: str,
    step: int,
    meta: dict[str, Any],
    write_parts: Callable[[Path], dict[str, Any] | None] | None = None,
    keep: int = KEEP_STATES,
) -> Path:
    """Save the state of `stage` after `step`, atomically; keep the newest `keep` states.

    `write_parts(tmp_dir)` writes the large parts (learner checkpoints) into the temporary
    directory and may return more entries for meta.json. meta.json is written last, then the
    directory is renamed to `step-NNNNNN`. If anything raises, no new state appears.
    """
    root = stage_state_dir(run_dir, stage)
    root.mkdir(parents=True, exist_ok=True)
    final = _step_dir(root, step)
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left over by a run stopped while saving
    tmp.mkdir()
    meta = {"stage": stage, "step": step, "time": round(time.time(), 3), **meta}
    if write_parts is not None:
        meta.update(write_parts(tmp) or {})
    _write_json(tmp / META, meta)
    if final.exists():  # the same step saved by an earlier attempt of this stage
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _saved_steps(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(_step_dir(root, old), ignore_errors=True)
    return final


def _saved_steps(root: Path) -> list[int]:
    steps = []
    for path in root.glob("step-*") if root.is_dir() else []:
        try:
            steps.append(int(path.name.removeprefix("step-")))
        except ValueError:
            continue
    return sorted(steps)


def latest_state(run_dir: str | Path, stage: str) -> SavedState | None:
    """The newest complete state of `stage`, or None; an unreadable one falls back to the
    next older (with a warning). Temporary directories of interrupted saves are ignored."""
    root = stage_state_dir(run_dir, stage)
    for step in reversed(_saved_steps(root)):
        path = _step_dir(root, step)
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError) as err:
            logger.warning("%s: state unreadable (%s); trying an older one", path, err)
            continue
        return SavedState(step=step, path=path, meta=meta)
    return None


def mark_done(run_dir: str | Path, stage: str, checkpoint: str, seconds: float) -> None:
    """Record that `stage` finished with `checkpoint`; its step states are no longer needed."""
    root = stage_state_dir(run_dir, stage)
    root.mkdir(parents=True, exist_ok=True)
    path = Path(checkpoint)
    if path.is_absolute() and path.is_relative_to(Path(run_dir).resolve()):
        path = path.relative_to(Path(run_dir).resolve())  # the run directory may move
    _write_json(root / DONE, {"checkpoint": str(path), "seconds": seconds})
    clear_states(run_dir, stage)


def clear_states(run_dir: str | Path, stage: str) -> None:
    """Remove every step state (and temporary leftover) of `stage`."""
    root = stage_state_dir(run_dir, stage)
    for path in root.iterdir() if root.is_dir() else []:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def read_done(run_dir: str | Path, stage: str) -> dict[str, Any] | None:
    """The done record of `stage` (checkpoint as an absolute path, seconds) when it finished;
    None when it did not. A done record that cannot be read, or whose checkpoint is gone, is a
    ConfigError naming the file: rerunning the stage would throw away the later stages' work."""
    path = stage_state_dir(run_dir, stage) / DONE
    if not path.exists():
        return None
    try:
        done = json.loads(path.read_text())
        checkpoint = Path(run_dir).resolve() / done["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"--resume: {path} cannot be read ({type(err).__name__}: {err}); it records that "
            f"stage {stage} finished"
        ) from None
    if not (checkpoint / "config.json").is_file():
        raise ConfigError(
            f"--resume: stage {stage} finished, but its checkpoint {checkpoint} is gone; put it "
            f"back, or start a new run"
        )
    what = f"--resume: stage {stage} finished, but its checkpoint"
    check_checkpoint_files(what, checkpoint, scalar=stage == "reward_model")
    return {**done, "checkpoint": str(checkpoint)}


def keep_metrics(run_dir: str | Path, finished: list[str], stage: str, step: int) -> int:
    """Rewrite metrics.jsonl with the rows of `finished` stages and those of `stage` up to
    `step` (none when `step` is 0); returns how many rows were dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short when the run stopped
            dropped += 1
            continue
        if row.get("stage") in finished or (
            row.get("stage") == stage and step > 0 and row.get("step", 0) <= step
        ):
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(".metrics.jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return dropped


def random_state(saved: list) -> tuple:
    """A `random.Random` state back from its JSON form (lists instead of tuples)."""
    version, internal, gauss = saved
    return version, tuple(internal), gauss


def tensor_state(state: Any) -> str:
    """A generator state (a byte tensor) as text for meta.json."""
    return base64.b64encode(state.numpy().tobytes()).decode()


def tensor_from_state(text: str) -> Any:
    """The byte tensor `tensor_state` wrote."""
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


@dataclass
class StageState:
    """Saves and restores one stage's state; used by the step loops of every stage.

    Args:
        ctx: the stage context (`ctx.resume` says whether to restore).
        stage: the stage name.
        save_every: steps between saves (0: never).
        learners: the trainable learner groups by part name ("policy", "critic").
        data_state: returns what picks the next batches (sampler position, RNG state), as JSON.
        load_data_state: restores that.
        train_rows: size of the training data; a resume on data of another size is refused.
    """

    ctx: Any
    stage: str
    save_every: int
    learners: dict[str, Any]
    data_state: Callable[[], dict[str, Any]]
    load_data_state: Callable[[dict[str, Any]], None]
    train_rows: int
    restored: dict[str, Any] = field(default_factory=dict)

    def due(self, step: int, last_step: int) -> bool:
        """Whether to save after `step` (never after the last: the checkpoint follows it)."""
        return self.save_every > 0 and step % self.save_every == 0 and step < last_step

    @functools.cached_property
    def _data_digest(self) -> str:
        """A digest of the stage's training rows, so a resume on changed data is refused
        (computed once: the rows do not change during the stage)."""
        train, _ = self.ctx.load_data(self.stage)
        text = json.dumps(train, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def save(self, step: int) -> Path:
        t0 = time.time()
        meta = {
            "train_rows": self.train_rows,
            "data_digest": self._data_digest,
            "data": self.data_state(),
        }

        def write_parts(tmp: Path) -> dict[str, Any]:
            digests = {}
            for name, learner in self.learners.items():
                digests[name] = learner.save_state(str(tmp / name))
            return {"digests": digests}

        path = write_state(self.ctx.run_dir, self.stage, step, meta, write_parts)
        logger.info(
            "%s: state of step %d saved to %s (%.1fs)", self.stage, step, path, time.time() - t0
        )
        return path

    def _broken(self, saved: SavedState, reason: str) -> BrokenStateError:
        older = [step for step in _saved_steps(saved.path.parent) if step < saved.step]
        then = (
            f"remove {saved.path} to resume from step {older[-1]}"
            if older
            else f"remove {saved.path} to restart {self.stage} from its start"
        )
        return BrokenStateError(
            f"{self.stage}: the saved state {saved.path} cannot be restored ({reason}); {then}, "
            f"or start a new run"
        )

    def restore(self) -> int:
        """Restore the newest saved state when the run resumes; returns its step (0: none).
        A stage that starts afresh removes states an earlier attempt left (they would belong
        to other weights)."""
        saved = latest_state(self.ctx.run_dir, self.stage) if self.ctx.resume else None
        if saved is None:
            clear_states(self.ctx.run_dir, self.stage)
            if self.ctx.resume:
                logger.info("%s: no saved state; the stage starts from step 0", self.stage)
            return 0
        missing = [k for k in ("train_rows", "data", "digests") if k not in saved.meta]
        if missing:
            raise self._broken(saved, f"its {META} lacks {', '.join(missing)}")
        rows = saved.meta["train_rows"]
        if rows != self.train_rows:
            raise DataError(
                f"{self.stage}.data: the training data has {self.train_rows} rows, but the state "
                f"in {saved.path} was saved with {rows}; the data changed since the run started"
            )
        if saved.meta.get("data_digest", self._data_digest) != self._data_digest:
            raise DataError(
                f"{self.stage}.data: the training data differs from the data the state in "
                f"{saved.path} was saved with (same {rows} rows, other contents); the data "
                f"changed since the run started"
            )
        expected, restored = saved.meta["digests"], {}
        for name, learner in self.learners.items():
            try:
                restored[name] = learner.load_state(str(saved.path / name))
            except Exception as err:  # a truncated or missing file, in the learner actor
                first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
                raise self._broken(saved, f"its {name} does not load: {first[:200]}") from None
            if restored[name] != expected.get(name):
                raise self._broken(saved, f"its {name} differs from the one saved (digests)")
        self.load_data_state(saved.meta["data"])
        self.restored = {
            "step": saved.step,
            "state": str(saved.path),
            "saved": expected,
            "restored": restored,
        }
        record = {"time": round(time.time(), 3), "stage": self.stage, **self.restored}
        with (Path(self.ctx.run_dir) / STATE_DIR / "resumes.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        logger.info(
            "%s: resumed from step %d (%s); weights and optimizer state match the saved digests",
            self.stage,
            saved.step,
            saved.path,
        )
        return saved.step
