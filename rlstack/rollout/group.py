"""The rollout engines as Ray actors: prompts are spread across engines, weights go to all."""

from __future__ import annotations

import logging
from typing import Any

import ray

from rlstack.errors import RLStackError
from rlstack.learner.group import check_fits, wait_started
from rlstack.rollout.engine import RolloutEngine

logger = logging.getLogger(__name__)


class RolloutGroup:
    def __init__(
        self,
        model_path: str,
        cfg: dict[str, Any],
        max_model_len: int,
        seed: int,
        env_vars: dict[str, str] | None = None,
        longest_prompt: int | None = None,
    ) -> None:
        """`longest_prompt`: the longest prompt the engines will see, in tokens, if known (it
        decides `prefix_caching: null`, see `rlstack.rollout.engine.use_prefix_caching`)."""
        threads = str(max(1, cfg["threads"]))
        env = dict(env_vars or {})
        env.update(OMP_NUM_THREADS=threads, VLLM_CPU_OMP_THREADS_BIND="nobind")
        if cfg["gpus_per_engine"] > 0:
            env.pop("VLLM_CPU_OMP_THREADS_BIND")
        check_fits("rollout", cfg["num_engines"], cfg["cpus_per_engine"], cfg["gpus_per_engine"])
        actor = ray.remote(RolloutEngine).options(
            num_cpus=cfg["cpus_per_engine"],
            num_gpus=cfg["gpus_per_engine"],
            runtime_env={"env_vars": env},
        )
        self.engines = [
            actor.remote(model_path, cfg, max_model_len, seed + i, longest_prompt)
            for i in range(cfg["num_engines"])
        ]
        self.request = f"{cfg['cpus_per_engine']} CPU and {cfg['gpus_per_engine']} GPU per engine"
        self.version = 0
        self.sync_timeout_s = cfg.get("sync_timeout_s", 300.0)
        self._started = False

    def start(self, timeout_s: float = 600.0) -> RolloutGroup:
        if not self._started:
            refs = [e.ready.remote() for e in self.engines]
            wait_started("rollout", refs, self.request, timeout_s)
            logger.info("rollout: %d vLLM engine(s) ready", len(self.engines))
            self._started = True
        return self

    def generate_async(
        self, prompt_ids: list[list[int]], n: int, sampling: dict[str, Any], seed: int
    ) -> list[tuple[int, ray.ObjectRef]]:
        """Start generation on every engine; collect with `collect`."""
        k = len(self.engines)
        bounds = [round(i * len(prompt_ids) / k) for i in range(k + 1)]
        refs = []
        for i, engine in enumerate(self.engines):
            chunk = prompt_ids[bounds[i] : bounds[i + 1]]
            if chunk:
                refs.append((bounds[i], engine.generate.remote(chunk, n, sampling, seed + i)))
        return refs

    @staticmethod
    def collect(pending: list[tuple[int, ray.ObjectRef]]) -> dict[str, Any]:
        """Wait for a `generate_async` call; prompt indices refer to the whole prompt list."""
        samples, tokens, seconds, versions = [], 0, 0.0, set()
        for offset, ref in pending:
            result = ray.get(ref)
            for s in result["samples"]:
                s["prompt_index"] += offset
                samples.append(s)
            tokens += result["tokens"]
            seconds = max(seconds, result["seconds"])
            versions.add(result["version"])
        return {"samples": samples, "tokens": tokens, "seconds": seconds, "version": min(versions)}

    def generate(self, prompt_ids, n, sampling, seed):
        return self.collect(self.generate_async(prompt_ids, n, sampling, seed))

    def update_weights(self, blob_ref: ray.ObjectRef, wait: bool = True) -> list[ray.ObjectRef]:
        """Send new weights to every engine (queued after any generation in flight)."""
        self.version += 1
        refs = [e.update_weights.remote(blob_ref, self.version) for e in self.engines]
        if wait:
            self.wait(refs)
        return refs

    def wait(self, refs: list[ray.ObjectRef]) -> None:
        """Wait for weight updates; an engine that does not answer in time is an error."""
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=self.sync_timeout_s)
        if pending:
            raise RLStackError(
                f"rollout: {len(pending)} engine(s) did not finish a weight update within "
                f"{self.sync_timeout_s:.0f}s (rollout.sync_timeout_s)"
            )
        ray.get(done)

    def shutdown(self) -> None:
        try:  # each engine removes its temporary files (on its own node)
            ray.get([e.close.remote() for e in self.engines], timeout=30)
        except Exception as err:  # a dead or hung engine: nothing more to wait for
            logger.warning("rollout: an engine did not close cleanly (%s)", type(err).__name__)
        for e in self.engines:
            ray.kill(e)
        self.engines = []
