"""What the RL loop samples: prompts in shuffled passes, and the scored rollouts they produce.

`PromptSampler`'s position is part of a run's resumable state; `Rollout` holds one step's
samples (several rollouts' worth under dynamic sampling) with their rewards; `PendingRollout` is
a rollout being generated and scored while the driver does something else.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from rlstack.stages.batches import rollout_batch


class PromptSampler:
    """Shuffled passes over the training prompts; its position is part of the run state."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.index = n, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.index])
            self.index += 1
        return out

    def state(self) -> dict[str, int]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        """Continue from a position `state()` returned (for the same prompts and seed)."""
        if (state["n"], state["seed"]) != (self.n, self.seed):
            raise ValueError(
                f"sampler state of {state['n']} prompts (seed {state['seed']}) does not fit "
                f"{self.n} prompts (seed {self.seed})"
            )
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._shuffle()


@dataclass
class Rollout:
    """Scored samples of one or more rollouts; samples of a prompt are adjacent."""

    prompt_ids: list[list[int]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # "prompt_index" indexes prompt_ids
    scores: list[float] = field(default_factory=list)
    components: dict[str, list[float]] = field(default_factory=dict)  # reward parts per sample
    failures: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0
    version: int = 0
    # The samples as a learner batch (`learner_batch`), with what was added to it since (the
    # reference's logprobs, the reward model's inputs); None until first asked for.
    batch: dict | None = None

    def learner_batch(self, pad_id: int) -> dict:
        """The samples as a learner batch (`rlstack.stages.batches.rollout_batch`), built once:
        the reference, the reward model and the update all read the same tensors."""
        if self.batch is None:
            self.batch = rollout_batch(self.prompt_ids, self.samples, pad_id)
        return self.batch

    def extend(self, other: Rollout) -> None:
        self.batch = None  # no longer these samples
        offset = len(self.prompt_ids)
        self.prompt_ids += other.prompt_ids
        self.rows += other.rows
        self.samples += [dict(s, prompt_index=s["prompt_index"] + offset) for s in other.samples]
        self.scores += other.scores
        for name, values in other.components.items():
            self.components[name] = self.components.get(name, []) + values
        for kind, n in other.failures.items():
            self.failures[kind] = self.failures.get(kind, 0) + n
        self.tokens += other.tokens
        self.seconds += other.seconds
        self.version = min(self.version, other.version)

    def groups(self, size: int) -> list[list[int]]:
        return [list(range(i, i + size)) for i in range(0, len(self.samples), size)]

    def select(self, group_indices: list[list[int]]) -> Rollout:
        """A rollout of the given sample groups, each group's prompt kept once."""
        out = Rollout(
            failures=dict(self.failures),
            tokens=self.tokens,
            seconds=self.seconds,
            version=self.version,
        )
        for group in group_indices:
            prompt = self.samples[group[0]]["prompt_index"]
            out.prompt_ids.append(self.prompt_ids[prompt])
            out.rows.append(self.rows[prompt])
            for i in group:
                out.samples.append(dict(self.samples[i], prompt_index=len(out.prompt_ids) - 1))
                out.scores.append(self.scores[i])
                for name, values in self.components.items():
                    out.components.setdefault(name, []).append(values[i])
        return out


class PendingRollout:
    """A started rollout, collected and scored by a driver thread as soon as the engines finish
    it, so that scoring overlaps the learner's update instead of delaying the next one.

    `indices` are its prompts (part of the resumable state); `result()` waits for the scored
    `Rollout` and raises what collecting or scoring raised. The thread is a daemon: an
    interrupted run does not wait for it. `then`, if given, runs on the thread's result in the
    caller's thread, inside `result()` (scoring that must run in the main thread).
    """

    def __init__(
        self,
        indices: list[int],
        finish: Callable[[], Rollout],
        then: Callable[[Rollout], Rollout] | None = None,
    ) -> None:
        self.indices = indices
        self._then = then
        self._rollout: Rollout | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(finish,), name="rlstack-rollout", daemon=True
        )
        self._thread.start()

    def _run(self, finish: Callable[[], Rollout]) -> None:
        try:
            self._rollout = finish()
        except BaseException as err:  # handed to the caller of result()
            self._error = err

    def result(self) -> Rollout:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._rollout is not None
        if self._then is not None:
            self._rollout, self._then = self._then(self._rollout), None
        return self._rollout
