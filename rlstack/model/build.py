"""Building, loading and saving the models every stage trains.

The built-in model is a small decoder with rotary attention over grouped KV heads, routed top-k
mixture-of-experts feed-forward layers and RMSNorm, expressed as an HF architecture that vLLM
also serves, so one checkpoint directory works in transformers, DeepSpeed and vLLM:

- `llama4`: text-only Llama 4 (routed experts plus a shared expert, QK-norm, RoPE layers
  interleaved with no-RoPE layers);
- `qwen3_moe`: Qwen3-MoE (routed top-k experts, QK-norm);
- `llama`: a dense Llama (used to check engines on a model without experts).

Scalar models (the reward model and the PPO critic) are the same backbone with a one-output
linear head (`*ForSequenceClassification`), which scores the last non-padding token.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Llama4TextConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3MoeConfig,
)
from transformers.modeling_layers import GenericForSequenceClassification
from transformers.models.llama4.modeling_llama4 import Llama4PreTrainedModel, Llama4TextModel

from rlstack.errors import ConfigError, one_line
from rlstack.model.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

ARCHITECTURES = ("llama4", "qwen3_moe", "llama")
SCALAR_MARKER = "rlstack_scalar_head"


class Llama4TextForSequenceClassification(GenericForSequenceClassification, Llama4PreTrainedModel):
    """Text-only Llama 4 with a scalar head; transformers ships no such class."""

    config_class = Llama4TextConfig
    base_model_prefix = "model"
    _no_split_modules = ["Llama4TextDecoderLayer"]

    def __init__(self, config: Llama4TextConfig) -> None:
        Llama4PreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = Llama4TextModel(config)
        self.score = torch.nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()


AutoModelForSequenceClassification.register(
    Llama4TextConfig, Llama4TextForSequenceClassification, exist_ok=True
)


def make_config(model_cfg: Any, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """An HF config for a new model from the `model` section of the run config."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_kv_heads,
        head_dim=model_cfg.hidden_size // model_cfg.num_heads,
        max_position_embeddings=model_cfg.max_seq_len,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rope_parameters={"rope_theta": model_cfg.rope_theta, "rope_type": "default"},
        initializer_range=0.02,
    )
    if model_cfg.arch == "llama4":
        return Llama4TextConfig(
            **common,
            intermediate_size=model_cfg.expert_size,
            intermediate_size_mlp=model_cfg.ffn_size,
            num_local_experts=model_cfg.num_experts,
            num_experts_per_tok=model_cfg.experts_per_token,
            interleave_moe_layer_step=1,
            use_qk_norm=True,
            # Chunked local attention with one chunk covering every position is full
            # attention; vLLM needs the chunk to be a multiple of its KV block (128 on CPU).
            attention_chunk_size=-(-model_cfg.max_seq_len // 128) * 128,
            attn_temperature_tuning=False,
            no_rope_layer_interval=4,
            router_aux_loss_coef=0.0,
            architectures=["Llama4ForCausalLM"],
        )
    if model_cfg.arch == "qwen3_moe":
        return Qwen3MoeConfig(
            **common,
            intermediate_size=model_cfg.ffn_size,
            moe_intermediate_size=model_cfg.expert_size,
            num_local_experts=model_cfg.num_experts,
            num_experts_per_tok=model_cfg.experts_per_token,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            router_aux_loss_coef=0.0,
            architectures=["Qwen3MoeForCausalLM"],
        )
    if model_cfg.arch == "llama":
        return LlamaConfig(
            **common, intermediate_size=model_cfg.ffn_size, architectures=["LlamaForCausalLM"]
        )
    raise ConfigError(
        f"model.arch: unknown architecture {model_cfg.arch!r}; known: {ARCHITECTURES}"
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def new_causal_lm(model_cfg: Any, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A randomly initialised causal LM and the character tokenizer."""
    tokenizer = build_tokenizer(model_cfg.max_seq_len)
    config = make_config(model_cfg, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    logger.info("new %s model: %.2fM parameters", model_cfg.arch, count_parameters(model) / 1e6)
    return model, tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path) -> PreTrainedModel:
    """A causal LM from an HF checkpoint directory (a previous stage's, or any user model)."""
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def _config_json(path: str | Path) -> dict[str, Any]:
    """A checkpoint's config.json; ValueError unless it is a JSON object."""
    config = json.loads((Path(path) / "config.json").read_text())
    if not isinstance(config, dict):
        raise ValueError(f"a JSON {type(config).__name__}, not an object")
    return config


def is_scalar_checkpoint(path: str | Path) -> bool:
    """Whether a checkpoint is a reward model's; ValueError if its config.json is not an object."""
    if not (Path(path) / "config.json").exists():
        return False
    return bool(_config_json(path).get(SCALAR_MARKER, False))


def load_scalar_model(path: str | Path) -> PreTrainedModel:
    """A scalar-head model from a causal-LM or scalar checkpoint.

    From a causal LM the backbone is kept and the head starts at zero (so initial scores are 0);
    from a scalar checkpoint (a trained reward model) the head is loaded too.
    """
    config = AutoConfig.from_pretrained(str(path))
    config = getattr(config, "text_config", config)
    config.num_labels = 1
    setattr(config, SCALAR_MARKER, True)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), config=config, dtype=torch.float32
    )
    if not is_scalar_checkpoint(path):
        torch.nn.init.zeros_(model.score.weight)
    return model


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save an HF checkpoint directory (safetensors, config, tokenizer with chat template)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(str(path))


def check_checkpoint_files(key: str, checkpoint: Path, scalar: bool | None = None) -> None:
    """A ConfigError naming `key` unless `checkpoint` loads: its config, tokenizer and weights.

    Cheap enough for a preflight (nothing is read but headers; the model is built on the meta
    device): config.json must be a model config transformers knows, the tokenizer must load,
    every safetensors file must read whole, tensors named as the model names them must have its
    shapes, and a causal LM must hold its output layer (unless tied to the embeddings). Caught
    here, each would otherwise fail inside a learner or rollout engine after Ray started.
    """
    try:
        _config_json(checkpoint)
        config = AutoConfig.from_pretrained(str(checkpoint))
    except Exception as err:  # json, OSError, transformers' ValueError/KeyError
        raise ConfigError(
            f"{key}: {checkpoint}/config.json is not a model config ({one_line(err)})"
        ) from None
    try:
        AutoTokenizer.from_pretrained(str(checkpoint))
    except Exception as err:
        raise ConfigError(
            f"{key}: {checkpoint}: its tokenizer cannot be loaded ({one_line(err)})"
        ) from None
    shapes = _weight_shapes(key, checkpoint)
    text = getattr(config, "text_config", config)
    if scalar:
        text.num_labels = 1  # as load_scalar_model builds it
    try:
        with torch.device("meta"):
            model = (
                AutoModelForSequenceClassification.from_config(text)
                if scalar
                else AutoModelForCausalLM.from_config(config)
            )
    except Exception as err:
        raise ConfigError(
            f"{key}: {checkpoint}: no model can be built from its config.json ({one_line(err)})"
        ) from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name, shape in shapes.items():
        if name in expected and expected[name] != shape:
            raise ConfigError(
                f"{key}: {checkpoint}: tensor {name} has shape {list(shape)} but its config.json "
                f"makes it {list(expected[name])}; the weights belong to another model"
            )
    head = "score.weight" if scalar else "lm_head.weight"
    tied = not scalar and getattr(text, "tie_word_embeddings", False)
    if head in expected and not tied and not any(n.endswith(head) for n in shapes):
        raise ConfigError(
            f"{key}: {checkpoint}: the weights hold no {head} (the output layer); they belong "
            f"to another kind of model"
        )


def _weight_shapes(key: str, checkpoint: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape over the checkpoint's safetensors files (headers only)."""
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise ConfigError(
            f"{key}: {checkpoint} holds no weights (no *.safetensors file; other formats are not "
            f"read: save the model with save_pretrained(safe_serialization=True))"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:  # opening parses the header and checks the data covers every tensor it lists
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except Exception as err:  # safetensors raises its own error type, or OSError
            raise ConfigError(f"{key}: {file} cannot be read ({one_line(err)})") from None
    return shapes
