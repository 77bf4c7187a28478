"""One verifier worker: loads the verifiers of a combination once, then scores chunks of samples.

It runs as a Ray actor in the scorer pool (`scorers/verifier.py`), or in-process (the pool's
`num_workers=0` mode, a serial baseline, a test). `score` is a generator that yields each
sample's outcome as soon as it is known; as an actor method it streams (Ray's streaming
generators), so the pool always knows which call a worker is in and can kill the worker when
that call hangs.

How each kind of verifier runs (see `rlstack.verifiers.api`):
- plain functions, one sample after another, in the worker's main thread (so a built-in may use
  SIGALRM for its own time limits); a call that returns after its deadline counts as `timeout`,
  one that never returns is the pool's to end;
- `async def` functions, every sample of the chunk at once on one event loop, each under
  `asyncio.wait_for(..., timeout_s)`;
- `@batched` functions, one call for the whole chunk (sync, or async under `wait_for`), its
  deadline `timeout_s` for the call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import ray

from rlstack.verifiers import load_verifier
from rlstack.verifiers.api import Outcome, describe, failed, is_async, is_batched, read_result
from rlstack.verifiers.combine import VerifierEntry

logger = logging.getLogger(__name__)

Item = dict[str, Any]  # {"prompt", "response", "reference", "extras": {column: value}}


def call_mode(fn: Callable[..., Any]) -> str:
    """How a verifier is called: "batch", "async" (per sample, concurrently) or "sync"."""
    if is_batched(fn):
        return "batch"
    return "async" if is_async(fn) else "sync"


class VerifierWorker:
    """Scores chunks of samples with one verifier of a combination at a time.

    Args:
        entries: the verifiers (spec, weight, options, label); all are loaded here, once.
        timeout_s: the deadline of one call (one sample, or one batched call), in seconds.
        own_process: the worker is a process of its own (an actor), whose torch, if a verifier
            brings it, is kept to one thread; False leaves the host process's threads alone.
    """

    def __init__(
        self, entries: list[VerifierEntry], timeout_s: float, own_process: bool = True
    ) -> None:
        self.entries = list(entries)
        self.fns = [load_verifier(e.spec) for e in self.entries]
        self.timeout_s = timeout_s
        if own_process and "torch" in sys.modules:  # a verifier brought torch: one thread
            sys.modules["torch"].set_num_threads(1)

    def ready(self) -> int:
        """The worker's process id, once the verifiers are loaded."""
        return os.getpid()

    @ray.method(num_returns="streaming")
    def score(
        self, verifier: int, items: list[Item], columns: list[str] | None = None
    ) -> Iterator[tuple[int, Outcome]]:
        """Score `items` with verifier number `verifier`.

        `columns` are the extra columns a batched verifier receives as lists (None: those of
        these items); the pool passes those of the whole batch, so that every chunk's call has
        the same keywords.

        Yields:
            `(position in items, outcome)`, in order for plain verifiers, in completion order
            for async ones, all at the end of the call for batched ones.
        """
        fn, options = self.fns[verifier], self.entries[verifier].args
        mode = call_mode(fn)
        if mode == "batch":
            yield from self._score_batch(fn, options, items, columns)
        elif mode == "async":
            yield from self._score_async(fn, options, items)
        else:
            for position, item in enumerate(items):
                yield position, self._call(fn, options, item)

    def score_all(
        self, verifier: int, items: list[Item], columns: list[str] | None = None
    ) -> list[Outcome]:
        """Every outcome of `score`, in the order of `items` (for in-process use)."""
        out: list[Outcome | None] = [None] * len(items)
        for position, outcome in self.score(verifier, items, columns):
            out[position] = outcome
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ calls
    def _late(self, started: float) -> Outcome | None:
        elapsed = time.monotonic() - started
        if elapsed > self.timeout_s:
            return failed("timeout", f"took {elapsed:.1f}s, over the {self.timeout_s:g}s limit")
        return None

    def _call(self, fn: Callable[..., Any], options: dict[str, Any], item: Item) -> Outcome:
        started = time.monotonic()
        try:
            result = fn(
                item["prompt"], item["response"], item["reference"], **_keywords(item, options)
            )
        except (Exception, SystemExit) as exc:
            return self._late(started) or failed("raised", describe(exc))
        return self._late(started) or read_result(result)

    def _score_async(
        self, fn: Callable[..., Any], options: dict[str, Any], items: list[Item]
    ) -> Iterator[tuple[int, Outcome]]:
        async def one(position: int, item: Item) -> tuple[int, Outcome]:
            started = time.monotonic()
            try:
                call = fn(
                    item["prompt"], item["response"], item["reference"], **_keywords(item, options)
                )
                result = await asyncio.wait_for(call, self.timeout_s)
            except asyncio.TimeoutError:
                return position, failed("timeout", f"no result within {self.timeout_s:g}s")
            except (Exception, SystemExit) as exc:
                return position, self._late(started) or failed("raised", describe(exc))
            return position, self._late(started) or read_result(result)

        loop = asyncio.new_event_loop()
        pending = {loop.create_task(one(p, item)) for p, item in enumerate(items)}
        try:
            while pending:
                done, pending = loop.run_until_complete(
                    asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                )
                for task in done:
                    yield task.result()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def _score_batch(
        self,
        fn: Callable[..., Any],
        options: dict[str, Any],
        items: list[Item],
        names: list[str] | None,
    ) -> Iterator[tuple[int, Outcome]]:
        columns = _columns(items, names if names is not None else column_names(items))
        columns.update(options)
        args = (
            [item["prompt"] for item in items],
            [item["response"] for item in items],
            [item["reference"] for item in items],
        )
        started = time.monotonic()
        try:
            if is_async(fn):
                loop = asyncio.new_event_loop()
                try:
                    results = loop.run_until_complete(
                        asyncio.wait_for(fn(*args, **columns), self.timeout_s)
                    )
                finally:
                    loop.close()
            else:
                results = fn(*args, **columns)
        except asyncio.TimeoutError:
            outcome = failed("timeout", f"no result within {self.timeout_s:g}s")
            results = None
        except (Exception, SystemExit) as exc:
            outcome = self._late(started) or failed("raised", describe(exc))
            results = None
        else:
            outcome = self._late(started)
            if outcome is None and (
                not isinstance(results, (list, tuple)) or len(results) != len(items)
            ):
                got = (
                    f"{len(results)} results"
                    if isinstance(results, (list, tuple))
                    else (type(results).__name__)
                )
                outcome = failed("bad_batch", f"returned {got} for {len(items)} samples")
        for position in range(len(items)):
            yield position, outcome if outcome is not None else read_result(results[position])


def _keywords(item: Item, options: dict[str, Any]) -> dict[str, Any]:
    """A sample's extra columns and the verifier's bound options (an option wins a clash)."""
    extras = item.get("extras") or {}
    return {**extras, **options} if options else dict(extras)


def column_names(items: list[Item]) -> list[str]:
    """Every extra column of `items`, in order of first appearance."""
    names: dict[str, None] = {}
    for item in items:
        names.update(dict.fromkeys(item.get("extras") or {}))
    return list(names)


def _columns(items: list[Item], names: list[str]) -> dict[str, list[Any]]:
    """Extra columns as lists (None where a sample lacks one), for batched verifiers."""
    return {name: [(item.get("extras") or {}).get(name) for item in items] for name in names}
