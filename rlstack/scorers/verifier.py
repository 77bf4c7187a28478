"""A pool of verifier workers (Ray actors) that scores responses beside the training loop.

Scoring never blocks training:
- Work goes out in small chunks (one verifier, a few samples) to whichever worker is free, so a
  slow verifier or sample holds up only its own chunk.
- Every worker streams each sample's outcome as soon as it has it, so the pool knows which call a
  worker is in. Each call has a deadline, `timeout_s`. Async verifiers are cancelled at it inside
  the worker (`asyncio.wait_for`); a plain call that returns late counts as late. A plain call
  that has not returned by its deadline plus `grace_s` cannot be interrupted (a regular
  expression that backtracks forever even holds the GIL), so the pool kills that worker, scores
  the call `failure_score` as kind `timeout`, starts a replacement, and the chunk's remaining
  samples go to the next free worker. A worker that dies (a segfault, `os._exit`, out of memory)
  costs only the call it was in (kind `crashed`) and is replaced the same way.
- A failed call (raised, not a number, NaN, timeout, crashed) scores `failure_score`, is counted
  by kind and logged; a run's metrics.jsonl has `verifier_failures/<kind>` per step.

Several verifiers combine by weight (`rlstack.verifiers.combine`); each worker loads all of them.
Known limit: when a hung call was one of several async calls of a chunk (a coroutine that blocks
its event loop), which one is not known; the chunk's unfinished samples are then retried one per
chunk, which finds it at the cost of one more deadline.

With `num_workers=0` there is no pool: the verifiers run in the calling process, one chunk after
another, chunked as a pool of one worker would (a batched verifier gets the whole batch, up to
`MAX_CONCURRENT_CHUNK` samples, in one call), with the same outcome kinds; but a plain call that
never returns cannot be ended (it stalls its caller). The pool's own cost (about 0.4 ms a
sample, in the worker and the driver) buys that protection; a cheap, trusted check such as the
built-in `numeric` (about 10 us a sample) is faster in-process.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import ray

from rlstack.errors import ANSI_CODE, PluginError, RLStackError, user_error
from rlstack.scorers.verifier_worker import Item, VerifierWorker, call_mode, column_names
from rlstack.verifiers import check_options, load_verifier
from rlstack.verifiers.api import Outcome, failed
from rlstack.verifiers.combine import VerifierEntry, combine, parse_verifier_entries

logger = logging.getLogger(__name__)

MAX_CHUNK = 16  # samples per chunk of a plain verifier (async and batched ones get more)
MAX_CONCURRENT_CHUNK = 256  # samples per chunk of an async or batched verifier
# Thread counts for libraries a verifier may import (numpy, torch): one per worker.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass
class ScoreResult:
    """Scores of one batch of samples."""

    scores: list[float]  # the weighted sum over verifiers, per sample
    components: dict[str, list[float]]  # per verifier label: its score per sample
    outcomes: dict[str, list[Outcome]]  # per verifier label: what each call gave
    failures: dict[str, int]  # by kind, over all verifiers
    seconds: float = 0.0


@dataclass
class _Task:
    verifier: int
    indices: list[int]  # sample indices, in the order sent
    mode: str  # "sync", "async" or "batch"
    stream: Any  # the worker's ObjectRefGenerator
    deadline: float
    reported: set[int] = field(default_factory=set)  # positions with an outcome


@dataclass
class _Slot:
    actor: Any
    ready_ref: Any  # the worker's `ready` call while it starts; None once it has started
    started: float
    pid: int | None = None
    task: _Task | None = None


def _check_resources(count: int, each: dict[str, float]) -> None:
    """Fail at once, instead of waiting forever, when the cluster lacks custom resources."""
    total = ray.cluster_resources()
    for kind, amount in each.items():
        if count * amount > total.get(kind, 0) + 1e-9:
            raise RLStackError(
                f"verifier: {count} actor(s) x {amount:g} {kind} = {count * amount:g}, but the "
                f"cluster offers {total.get(kind, 0):g} {kind}; start nodes with that resource "
                "or lower verifier_workers / verifier_resources"
            )


class VerifierScorer:
    """A pool of `num_workers` verifier actors.

    Args:
        verifier: a verifier spec, or a list of `{name, weight, args, label}` entries (see
            `rlstack.verifiers.combine`).
        failure_score: the score of a failed call.
        num_workers: verifier actors in the pool; 0 scores in this process, without a pool.
        cpus_per_worker: Ray logical CPUs each actor reserves (fractional).
        timeout_s: the deadline of one call (one sample, or one batched call).
        grace_s: how long past a deadline the pool waits for a plain call before it kills the
            worker (None: 1 s + 10% of `timeout_s`).
        env_vars: environment of the actors (thread counts are set to 1 unless given here).
        start_timeout_s: fail when a worker has not started by then.
        resources: custom Ray resources each actor needs (e.g. to place verifiers on chosen
            nodes); checked against the cluster at once.

    Raises:
        ConfigError, PluginError: the entries are invalid or a verifier does not load (checked
            here, in the driver, before any actor starts).
    """

    def __init__(
        self,
        verifier: str | list[Any],
        failure_score: float,
        num_workers: int = 2,
        cpus_per_worker: float = 0.1,
        timeout_s: float = 10.0,
        grace_s: float | None = None,
        env_vars: dict[str, str] | None = None,
        start_timeout_s: float = 600.0,
        resources: dict[str, float] | None = None,
    ) -> None:
        if isinstance(verifier, list) and verifier and isinstance(verifier[0], VerifierEntry):
            self.entries = list(verifier)
        else:
            self.entries = parse_verifier_entries(verifier)
        self.modes = []
        for entry in self.entries:
            fn = load_verifier(entry.spec)  # fails here, in the driver, with a clear message
            check_options(fn, entry.args, entry.spec)
            self.modes.append(call_mode(fn))
        self.failure_score = failure_score
        self.timeout_s = timeout_s
        self.grace_s = grace_s if grace_s is not None else 1.0 + 0.1 * timeout_s
        self.start_timeout_s = start_timeout_s
        self.restarts = 0
        self.local: VerifierWorker | None = None
        self.slots: list[_Slot] = []
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        if num_workers == 0:
            self.local = VerifierWorker(self.entries, timeout_s, own_process=False)
            return
        env = {**THREAD_ENV, **(env_vars or {})}
        _check_resources(num_workers, resources or {})
        self._actor_class = ray.remote(VerifierWorker).options(
            num_cpus=cpus_per_worker,
            resources=dict(resources or {}),
            runtime_env={"env_vars": env},
        )
        self.slots = [self._new_slot() for _ in range(num_workers)]

    @property
    def in_process(self) -> bool:
        """Whether the verifiers run in this process (`num_workers=0`)."""
        return self.local is not None

    def start(self, timeout_s: float | None = None) -> VerifierScorer:
        """Wait until every worker has loaded its verifiers."""
        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        for slot in self.slots:
            if slot.ready_ref is not None:
                ray.wait([slot.ready_ref], timeout=max(0.0, deadline - time.monotonic()))
                self._check_started(slot)
        return self

    def pids(self) -> list[int | None]:
        """Process ids of the workers that have started."""
        return [slot.pid for slot in self.slots]

    # ------------------------------------------------------------------ scoring
    def score(self, items: list[Item]) -> ScoreResult:
        """Score every sample with every verifier.

        Args:
            items: `{"prompt", "response", "reference", "extras": {column: value}}` per sample.

        Returns:
            The combined scores, each verifier's scores and outcomes, and failures by kind.
        """
        t0 = time.monotonic()
        n = len(items)
        outcomes: list[list[Outcome | None]] = [[None] * n for _ in self.entries]
        columns = column_names(items) if "batch" in self.modes else None
        if self.local is not None:  # in this process, in the chunks of a one-worker pool
            for v, indices in self._chunks(n):
                chunk = self.local.score_all(v, [items[i] for i in indices], columns)
                for i, outcome in zip(indices, chunk):
                    outcomes[v][i] = outcome
            return self._result(outcomes, time.monotonic() - t0)
        queue: deque[tuple[int, list[int]]] = deque(self._chunks(n))
        missing = n * len(self.entries)
        while missing:
            self._dispatch(queue, items, columns)
            missing -= self._wait_and_collect(outcomes, queue)
        return self._result(outcomes, time.monotonic() - t0)

    def _chunks(self, n: int) -> list[tuple[int, list[int]]]:
        workers = max(1, len(self.slots))  # in-process scoring is chunked as one worker's
        chunks = []
        for v, mode in enumerate(self.modes):
            if mode == "sync":
                size = min(MAX_CHUNK, max(1, math.ceil(n / (4 * workers))))
            else:
                size = min(MAX_CONCURRENT_CHUNK, max(1, math.ceil(n / workers)))
            chunks += [(v, list(range(a, min(n, a + size)))) for a in range(0, n, size)]
        return chunks

    def _dispatch(self, queue: deque, items: list[Item], columns: list[str] | None) -> None:
        for slot in self.slots:
            if not queue:
                return
            if slot.ready_ref is None and slot.task is None:
                v, indices = queue.popleft()
                chunk = [items[i] for i in indices]
                names = columns if self.modes[v] == "batch" else None
                stream = slot.actor.score.remote(v, chunk, names)
                deadline = time.monotonic() + self.timeout_s + self.grace_s
                slot.task = _Task(v, indices, self.modes[v], stream, deadline)

    def _wait_and_collect(self, outcomes: list[list[Outcome | None]], queue: deque) -> int:
        """Wait for the next outcome, start-up or deadline; returns the outcomes recorded."""
        waiting = {}
        deadlines = []
        for slot in self.slots:
            if slot.ready_ref is not None:
                waiting[id(slot.ready_ref)] = (slot.ready_ref, slot)
                deadlines.append(slot.started + self.start_timeout_s)
            elif slot.task is not None:
                waiting[id(slot.task.stream)] = (slot.task.stream, slot)
                deadlines.append(slot.task.deadline)
        refs = [ref for ref, _ in waiting.values()]
        timeout = max(0.0, min(deadlines) - time.monotonic())
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)

        recorded = 0
        for ref in ready:
            slot = waiting[id(ref)][1]
            if slot.ready_ref is not None:
                self._check_started(slot)
            else:
                recorded += self._collect(slot, outcomes, queue)

        now = time.monotonic()
        for slot in self.slots:
            if slot.task is not None and now > slot.task.deadline:
                waited = self.timeout_s + self.grace_s
                message = f"no result within {waited:.1f}s (limit {self.timeout_s:g}s)"
                recorded += self._lose(slot, "timeout", message, outcomes, queue)
            elif slot.ready_ref is not None and now > slot.started + self.start_timeout_s:
                raise RLStackError(
                    f"verifier worker did not start within {self.start_timeout_s:.0f}s; "
                    f"free resources now: {ray.available_resources()}"
                )
        return recorded

    def _collect(self, slot: _Slot, outcomes: list[list[Outcome | None]], queue: deque) -> int:
        """Record every outcome the slot's worker has streamed so far."""
        task = slot.task
        recorded = 0
        while True:
            try:
                ref = next(task.stream)
            except StopIteration:
                slot.task = None
                unreported = [i for p, i in enumerate(task.indices) if p not in task.reported]
                if unreported:  # cannot happen unless the worker has a bug; score them again
                    logger.error(
                        "verifier worker ended a chunk early; rescoring %d", len(unreported)
                    )
                    queue.appendleft((task.verifier, unreported))
                return recorded
            try:
                position, outcome = ray.get(ref)
            except Exception as exc:  # the worker died (or broke) during the call
                first = ANSI_CODE.sub("", str(exc)).strip().split(".")[0]
                message = f"worker died ({type(exc).__name__}: {first[:200]})"
                return recorded + self._lose(slot, "crashed", message, outcomes, queue)
            outcomes[task.verifier][task.indices[position]] = outcome
            task.reported.add(position)
            recorded += 1
            if task.mode == "sync":  # the next call starts now
                task.deadline = time.monotonic() + self.timeout_s + self.grace_s
            if not ray.wait([task.stream], timeout=0)[0]:
                return recorded

    def _lose(
        self,
        slot: _Slot,
        kind: str,
        message: str,
        outcomes: list[list[Outcome | None]],
        queue: deque,
    ) -> int:
        """Kill a worker whose call hung or died; score that call; requeue the rest."""
        task = slot.task
        label = self.entries[task.verifier].label
        unreported = [i for p, i in enumerate(task.indices) if p not in task.reported]
        if task.mode == "sync" or len(unreported) == 1:
            # The rest of the chunk is split, so that another hang in it meets a free worker.
            culprits, rest = unreported[:1], _split(unreported[1:], len(self.slots))
        elif task.mode == "batch":
            culprits, rest = unreported, []  # the hung call was the batch itself
        else:  # async: which coroutine blocked the loop is unknown; retry them one by one
            culprits, rest = [], [[i] for i in unreported]
        for i in culprits:
            outcomes[task.verifier][i] = failed(kind, message)
        for chunk in reversed([c for c in rest if c]):
            queue.appendleft((task.verifier, chunk))
        logger.warning(
            "verifier %s: %s on sample(s) %s (%s); killing worker pid %s and starting another",
            label,
            kind,
            culprits or unreported,
            message,
            slot.pid,
        )
        ray.kill(slot.actor, no_restart=True)
        fresh = self._new_slot()
        slot.actor, slot.ready_ref, slot.started = fresh.actor, fresh.ready_ref, fresh.started
        slot.pid, slot.task = None, None
        self.restarts += 1
        return len(culprits)

    def _result(self, outcomes: list[list[Outcome | None]], seconds: float) -> ScoreResult:
        components, by_label, failures = {}, {}, Counter()
        for entry, column in zip(self.entries, outcomes):
            by_label[entry.label] = column
            components[entry.label] = [
                o.score if o.failure is None else self.failure_score for o in column
            ]
            kinds = Counter(o.failure for o in column if o.failure is not None)
            failures.update(kinds)
            for kind, count in kinds.items():
                example = next(o.message for o in column if o.failure == kind)
                logger.warning(
                    "verifier %s: %d of %d sample(s) failed (%s), e.g. %s",
                    entry.label,
                    count,
                    len(column),
                    kind,
                    example,
                )
        weights = [e.weight for e in self.entries]
        scores = combine(weights, [components[e.label] for e in self.entries])
        return ScoreResult(scores, components, by_label, dict(failures), seconds)

    # ------------------------------------------------------------------ workers
    def _new_slot(self) -> _Slot:
        actor = self._actor_class.remote(self.entries, self.timeout_s)
        return _Slot(actor=actor, ready_ref=actor.ready.remote(), started=time.monotonic())

    def _check_started(self, slot: _Slot) -> None:
        ready, _ = ray.wait([slot.ready_ref], timeout=0)
        if not ready:
            raise RLStackError(
                f"verifier worker did not start within {self.start_timeout_s:.0f}s; "
                f"free resources now: {ray.available_resources()}"
            )
        try:
            slot.pid = ray.get(slot.ready_ref)
        except Exception as exc:
            cause = user_error(exc)
            if cause is not None:
                raise PluginError(f"a verifier worker could not start: {cause}") from exc
            raise
        slot.ready_ref = None

    def shutdown(self) -> None:
        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)


def _split(indices: list[int], parts: int) -> list[list[int]]:
    size = max(1, math.ceil(len(indices) / parts))
    return [indices[a : a + size] for a in range(0, len(indices), size)]
