"""One rank of a learner group: a model in a DeepSpeed engine, or a frozen model for inference.

The same class serves every model role, chosen by `ModelSpec`:
- `causal_lm` + trainable: the policy (pretraining, SFT, PPO/GRPO updates);
- `scalar` + trainable: the reward model (pairwise loss) and the PPO critic (value loss);
- frozen (`trainable=False`): the reference policy for KL and the reward-model scorer, plain
  torch without DeepSpeed or an optimizer.

Batches arrive as dicts of CPU tensors. Per-token tensors of a sequence batch `[batch, L]` are
`[batch, L-1]` aligned to the predicted token: position t holds the logprob (or value) of
token t+1 given tokens 0..t, and `mask` marks the response tokens among them.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from rlstack.learner.objectives import Objectives

logger = logging.getLogger(__name__)

STATE_TAG = "engine"  # the DeepSpeed checkpoint tag of a resumable state


@dataclass
class ModelSpec:
    """What a learner rank holds and how it trains."""

    kind: str  # "causal_lm" or "scalar"
    init_path: str | None  # HF checkpoint directory; None builds a new model from `model_cfg`
    model_cfg: dict[str, Any] = field(default_factory=dict)
    trainable: bool = True
    optim: dict[str, Any] = field(default_factory=dict)
    total_steps: int = 1
    zero_stage: int = 0
    bf16: bool = False
    micro_batch_size: int = 16
    grad_accum: int = 1
    threads: int = 2
    seed: int = 0


def _lr_lambda(optim: dict[str, Any], total_steps: int):
    warmup = max(0, optim.get("warmup_steps", 0))
    floor = optim.get("min_lr_ratio", 1.0)

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


class LearnerWorker(Objectives):
    """One rank; the Ray actor class is made from this in `rlstack.learner.group`."""

    def __init__(self, rank: int, world_size: int, spec: ModelSpec) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        torch.set_num_threads(max(1, spec.threads))
        torch.manual_seed(spec.seed + rank)
        self.rank, self.world_size, self.spec = rank, world_size, spec
        self.model, self.tokenizer = self._build_model(spec)
        self.engine = None
        self.steps = 0
        if not spec.trainable:
            self.model.eval()

    def rendezvous(self) -> tuple[str, int, str | None]:
        """Where the ranks meet: rank 0's address, a free port, and on a one-machine (loopback)
        run a file store path, so no rendezvous server listens on any interface."""
        import socket
        import tempfile

        import ray

        host = os.environ.get("MASTER_ADDR") or ray.util.get_node_ip_address()
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        store = None
        if host == "127.0.0.1":
            store = os.path.join(tempfile.mkdtemp(prefix="rlstack-rdzv-"), "store")
        return host, port, store

    def init_engine(self, master_addr: str, master_port: int, store: str | None) -> int:
        """Join the process group and wrap the model in a DeepSpeed engine."""
        self.engine = self._init_deepspeed(master_addr, master_port, store)
        return self.ready()

    # ----------------------------------------------------------------- setup
    def _build_model(self, spec: ModelSpec):
        from types import SimpleNamespace

        from rlstack.model.build import (
            load_causal_lm,
            load_scalar_model,
            load_tokenizer,
            new_causal_lm,
        )

        if spec.init_path is None:
            model, tokenizer = new_causal_lm(SimpleNamespace(**spec.model_cfg), spec.seed)
        else:
            tokenizer = load_tokenizer(spec.init_path)
            if spec.kind == "scalar":
                model = load_scalar_model(spec.init_path)
            else:
                model = load_causal_lm(spec.init_path)
        model.config.use_cache = False
        return model, tokenizer

    def _init_deepspeed(self, master_addr: str, master_port: int, store: str | None):
        import deepspeed
        import deepspeed.ops

        os.environ.update(
            RANK=str(self.rank),
            LOCAL_RANK="0" if not torch.cuda.is_available() else os.environ.get("LOCAL_RANK", "0"),
            WORLD_SIZE=str(self.world_size),
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        # DeepSpeed JIT-compiles a shared-memory all-reduce for CPU at every init (30-55 s on a
        # fresh machine); gloo alone is enough for the CPU path.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            init_method=f"file://{store}" if store else None,
            rank=self.rank,
            world_size=self.world_size,
        )

        o = self.spec.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"]
        )
        # DeepSpeed steps the scheduler once per optimizer step (not per micro-batch).
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(o, self.spec.total_steps)
        )
        ds_config = {
            "train_micro_batch_size_per_gpu": self.spec.micro_batch_size,
            "gradient_accumulation_steps": self.spec.grad_accum,
            "gradient_clipping": o["grad_clip"],
            "zero_optimization": {"stage": self.spec.zero_stage},
            "bf16": {"enabled": self.spec.bf16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        engine, *_ = deepspeed.initialize(
            model=self.model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        return engine

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module if self.engine is not None else self.model

    def ready(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    # --------------------------------------------------------------- forward
    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.module(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits[:, :-1].float()

    def _head_outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The scalar head at every position, `[batch, L]`."""
        base = getattr(self.module, self.module.base_model_prefix)
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.module.score(hidden).squeeze(-1).float()

    def _token_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Values before each next token, `[batch, L-1]` (aligned to predicted tokens)."""
        return self._head_outputs(input_ids, attention_mask)[:, :-1]

    def _sequence_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The scalar head at each sequence's last real token: `[batch]`."""
        values = self._head_outputs(input_ids, attention_mask)
        last = attention_mask.sum(dim=1) - 1
        return values.gather(1, last.unsqueeze(1)).squeeze(1)

    def _backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def _lr(self) -> float:
        return float(self.engine.get_lr()[0])

    # ------------------------------------------------------- weights & saving
    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """Consolidated weights under HF checkpoint names (collective under ZeRO-3)."""
        from transformers.core_model_loading import revert_weight_conversion

        module = self.module
        if self.engine is not None and self.spec.zero_stage == 3:
            import deepspeed

            params = list(module.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            state = {k: v.detach() for k, v in module.state_dict().items()}
        return revert_weight_conversion(module, state)

    def weights_blob(self) -> bytes | None:
        """The policy weights as safetensors bytes for the rollout engines (rank 0 only)."""
        from safetensors.torch import save

        state = self._full_state_dict()
        if self.rank != 0:
            return None
        return save({k: v.float().contiguous() for k, v in state.items()})

    # ------------------------------------------------------- resumable state
    def save_state(self, path: str) -> dict[str, Any]:
        """Write this rank's training state (weights, optimizer, LR schedule, step count, RNG)
        as a DeepSpeed checkpoint under `path`; every rank must call it. Returns the digest of
        what was saved (`state_digest`)."""
        client = {"steps": self.steps, "torch_rng": torch.get_rng_state()}
        self.engine.save_checkpoint(path, tag=STATE_TAG, client_state=client, save_latest=False)
        return self.state_digest()

    def load_state(self, path: str) -> dict[str, Any]:
        """Restore what `save_state` wrote (same world size and ZeRO stage); every rank must
        call it. Returns the digest of the restored state, before any further update."""
        from rlstack.errors import RLStackError

        loaded, client = self.engine.load_checkpoint(
            path, tag=STATE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if loaded is None:
            raise RLStackError(f"{path}: no learner state to restore (rank {self.rank})")
        self.steps = client["steps"]
        torch.set_rng_state(client["torch_rng"])
        return self.state_digest()

    def state_digest(self) -> dict[str, Any]:
        """SHA-256 digests of the weights (all ranks' consolidated weights) and of this rank's
        optimizer state, with the optimizer's step count and the LR schedule's position."""
        import hashlib

        weights = hashlib.sha256()
        for name, tensor in sorted(self._full_state_dict().items()):
            weights.update(name.encode())
            weights.update(tensor.detach().float().contiguous().numpy().tobytes())
        optimizer = self.engine.optimizer
        while hasattr(optimizer, "optimizer"):  # ZeRO / bf16 wrappers hold the torch optimizer
            optimizer = optimizer.optimizer
        moments, adam_steps = hashlib.sha256(), 0
        for group in optimizer.param_groups:
            for param in group["params"]:
                for key, value in sorted(optimizer.state.get(param, {}).items()):
                    value = value if torch.is_tensor(value) else torch.tensor(value)
                    moments.update(key.encode())
                    moments.update(value.detach().float().contiguous().numpy().tobytes())
                    if key == "step":
                        adam_steps = int(value.item())
        scheduler = self.engine.lr_scheduler
        return {
            "weights_sha256": weights.hexdigest(),
            "optimizer_sha256": moments.hexdigest(),
            "optimizer_steps": adam_steps,
            "lr_schedule_step": getattr(scheduler, "last_epoch", None),
            "rank": self.rank,
        }

    def save(self, path: str) -> None:
        """Write an HF checkpoint directory (rank 0 writes; every rank must call it)."""
        from rlstack.model.build import SCALAR_MARKER, save_model

        state = self._full_state_dict()
        if self.rank != 0:
            return
        module = self.module
        if self.spec.kind == "scalar":
            setattr(module.config, SCALAR_MARKER, True)
        module.config.use_cache = True
        save_model(
            module, self.tokenizer, path, state_dict={k: v.float() for k, v in state.items()}
        )
        module.config.use_cache = False
