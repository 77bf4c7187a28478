"""A group of learner ranks as Ray actors, driven as one.

`LearnerGroup` starts one `LearnerWorker` actor per rank, forms their DeepSpeed process group
(gloo on CPU, NCCL on GPU) and splits each batch across ranks. Training calls return the
ranks' metrics averaged; inference calls return the ranks' outputs concatenated in order.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import ray
import torch

from rlstack.errors import RLStackError
from rlstack.learner.microbatch import split_batch
from rlstack.learner.worker import LearnerWorker, ModelSpec

logger = logging.getLogger(__name__)


def check_fits(name: str, count: int, cpus: float, gpus: float) -> None:
    """Fail at once when the cluster as a whole cannot hold `count` actors of this size."""
    total = ray.cluster_resources()
    for kind, each in (("CPU", cpus), ("GPU", gpus)):
        if each > 0 and count * each > total.get(kind, 0) + 1e-9:
            raise RLStackError(
                f"{name}: {count} actor(s) x {each} {kind} = {count * each:g} {kind}, but the "
                f"cluster has {total.get(kind, 0):g}; lower the role's cpus/gpus per actor or "
                f"its count, or give Ray more (ray.num_cpus)"
            )


def wait_started(name: str, refs: list, request: str, timeout_s: float) -> None:
    """Wait for actors to come up; fail with the cluster's free resources instead of hanging."""
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        free = {
            k: round(v, 2)
            for k, v in ray.available_resources().items()
            if k in ("CPU", "GPU", "memory")
        }
        raise RLStackError(
            f"{name}: actors did not start within {timeout_s:.0f}s (asked for {request}; "
            f"free now: {free}); lower the per-role cpus/gpus in the config or add resources"
        )
    ray.get(refs)  # re-raise an actor's own start-up error


def combine_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over `results`; the maximum for keys ending in `_max`."""
    out = {}
    for key in results[0]:
        values = [r[key] for r in results if key in r]
        out[key] = max(values) if key.endswith("_max") else sum(values) / len(values)
    return out


class LearnerGroup:
    """`num_workers` ranks of one model role (policy, critic, reward model, reference)."""

    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        num_workers: int = 1,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        env_vars: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        threads = str(max(1, spec.threads))
        env = dict(env_vars or {})
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        check_fits(name, num_workers, cpus_per_worker, gpus_per_worker)
        actor = ray.remote(LearnerWorker).options(
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            runtime_env={"env_vars": env},
        )
        self.workers = [actor.remote(rank, num_workers, spec) for rank in range(num_workers)]
        self.request = f"{cpus_per_worker} CPU and {gpus_per_worker} GPU per rank"
        self._started = False

    def start(self, timeout_s: float = 600.0) -> LearnerGroup:
        """Wait for the ranks to load their model and form the DeepSpeed group."""
        if self._started:
            return self
        wait_started(self.name, [w.ready.remote() for w in self.workers], self.request, timeout_s)
        if self.spec.trainable:
            addr, port, store = ray.get(self.workers[0].rendezvous.remote())
            self._store = store
            ray.get([w.init_engine.remote(addr, port, store) for w in self.workers])
        params = ray.get(self.workers[0].ready.remote())
        logger.info(
            "%s: %d rank(s) ready, %.2fM parameters", self.name, self.world_size, params / 1e6
        )
        self._started = True
        return self

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def _scatter(self, method: str, batch: dict[str, torch.Tensor], *args: Any) -> list[Any]:
        shards = split_batch(batch, self.world_size)
        if len(shards) < self.world_size:
            raise ValueError(f"{self.name}: batch smaller than the {self.world_size} ranks")
        refs = [getattr(w, method).remote(s, *args) for w, s in zip(self.workers, shards)]
        return ray.get(refs)

    def train(self, method: str, batch: dict[str, torch.Tensor], *args: Any) -> dict[str, float]:
        """One optimizer step over `batch` split across ranks; returns the ranks' mean metrics
        (the maximum for keys ending in `_max`)."""
        return combine_metrics(self._scatter(method, batch, *args))

    def evaluate(self, method: str, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Summed statistics (e.g. loss_sum, tokens) over ranks."""
        results = self._scatter(method, batch)
        return {k: sum(r[k] for r in results) for k in results[0]}

    def infer(self, method: str, batch: dict[str, torch.Tensor], *args: Any) -> torch.Tensor:
        """Per-sample outputs (logprobs, values, scores) concatenated over ranks."""
        return torch.cat(self._scatter(method, batch, *args), dim=0)

    def weights_blob_ref(self) -> ray.ObjectRef:
        """Rank 0's weights as safetensors bytes, left in the object store."""
        refs = [w.weights_blob.remote() for w in self.workers]
        ray.get(refs[1:])
        return refs[0]

    def save_state(self, path: str) -> list[dict[str, Any]]:
        """Save every rank's training state (DeepSpeed checkpoint) under `path`; returns the
        ranks' digests of it."""
        return ray.get([w.save_state.remote(path) for w in self.workers])

    def load_state(self, path: str) -> list[dict[str, Any]]:
        """Restore every rank from `save_state`'s directory; returns the ranks' digests."""
        return ray.get([w.load_state.remote(path) for w in self.workers])

    def save(self, path: str) -> None:
        ray.get([w.save.remote(path) for w in self.workers])
        logger.info("%s: saved checkpoint to %s", self.name, path)

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.workers = []
        store = getattr(self, "_store", None)
        if store:  # a loopback run's file store, on this machine: remove its directory
            shutil.rmtree(os.path.dirname(store), ignore_errors=True)
            self._store = None
