"""Scoring responses with a verifier, in Ray actors beside the training loop.

A verifier is a callable `fn(prompt, response, reference, **extras) -> float` loaded from a
spec (built-in name, `package.module:function` or `path/to/file.py:function`). A verifier that
raises or returns something that is not a finite number gives `failure_score` for that sample
and is counted by kind; it never stops training.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import ray

from rlstack.errors import RLStackError

logger = logging.getLogger(__name__)


class VerifierWorker:
    """Loads a verifier once and scores batches of samples."""

    def __init__(self, spec: str, failure_score: float) -> None:
        from rlstack.verifiers import load_verifier

        self.spec = spec
        self.fn = load_verifier(spec)
        self.failure_score = failure_score

    def score(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Scores of `items`; failures by kind: raised, not_a_number, nan."""
        scores, failures = [], {}
        for item in items:
            kind, value = self._score_one(item)
            if kind is not None:
                failures[kind] = failures.get(kind, 0) + 1
                if failures[kind] == 1:
                    logger.warning("verifier %s failed (%s): %s", self.spec, kind, value)
                value = self.failure_score
            scores.append(value)
        return {"scores": scores, "failures": failures}

    def _score_one(self, item: dict[str, Any]) -> tuple[str | None, Any]:
        extras = item.get("extras") or {}
        try:
            result = self.fn(item["prompt"], item["response"], item["reference"], **extras)
        except Exception as err:
            return "raised", f"{type(err).__name__}: {err}"
        try:
            value = float(result)
        except (TypeError, ValueError):
            return "not_a_number", f"returned {result!r}"
        if not math.isfinite(value):
            return "nan", f"returned {value}"
        return None, value


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
    """A pool of `num_workers` verifier actors; a batch is split across them."""

    def __init__(
        self,
        spec: str,
        failure_score: float,
        num_workers: int = 1,
        cpus_per_worker: float = 0.1,
        env_vars: dict[str, str] | None = None,
        resources: dict[str, float] | None = None,
    ) -> None:
        # Fail early, in the driver, with a clear message when the spec does not load.
        from rlstack.verifiers import load_verifier

        load_verifier(spec)
        _check_resources(num_workers, resources or {})
        actor = ray.remote(VerifierWorker).options(
            num_cpus=cpus_per_worker,
            resources=dict(resources or {}),
            runtime_env={"env_vars": dict(env_vars or {})},
        )
        self.workers = [actor.remote(spec, failure_score) for _ in range(num_workers)]

    def score(self, items: list[dict[str, Any]]) -> tuple[list[float], dict[str, int]]:
        k = len(self.workers)
        bounds = [round(i * len(items) / k) for i in range(k + 1)]
        refs = [w.score.remote(items[a:b]) for w, a, b in zip(self.workers, bounds, bounds[1:])]
        scores, failures = [], {}
        for result in ray.get(refs):
            scores += result["scores"]
            for kind, n in result["failures"].items():
                failures[kind] = failures.get(kind, 0) + n
        return scores, failures

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
