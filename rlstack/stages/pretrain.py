"""Pretraining: next-token loss on a text corpus, from random weights or a given checkpoint.

The corpus is cut into random windows of `seq_len` tokens; the held-out text (a separate
source, or the last `eval_fraction` of the corpus) gives `eval/val_loss` in nats per token,
logged next to the held-out text's unigram entropy (`eval/unigram_baseline`).
"""

from __future__ import annotations

import logging
import time

import torch

from rlstack.errors import DataError
from rlstack.stages.batches import (
    random_windows,
    sequential_windows,
    token_stream,
    unigram_entropy,
)
from rlstack.stages.context import StageContext
from rlstack.stages.evaluation import lm_val_loss, train_and_save
from rlstack.stages.state import tensor_from_state, tensor_state

logger = logging.getLogger(__name__)
STAGE = "pretrain"


def _corpus(ctx: StageContext) -> tuple[list[str], list[str]]:
    """Training texts and held-out texts; a single document is split by characters."""
    data = ctx.cfg.pretrain.data
    texts, held = ctx.load_data(STAGE)
    if not held and len(texts) == 1:
        text = texts[0]
        cut = int(len(text) * (1 - data.eval_fraction))
        return [text[:cut]], [text[cut:]]
    return texts, held


def streams(ctx: StageContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and held-out token streams (tokenized once: the preflight's check and the stage
    share them); a DataError when either is too short to use."""
    key = f"{STAGE}/streams@{ctx.policy_path}"  # the tokenizer is the policy's
    if key in ctx.data_cache:
        return ctx.data_cache[key]
    texts, held = _corpus(ctx)
    tokenizer = ctx.tokenizer()
    train_stream, val_stream = token_stream(tokenizer, texts), token_stream(tokenizer, held)
    seq_len, source = ctx.cfg.pretrain.seq_len, ctx.cfg.pretrain.data.train
    if len(train_stream) <= seq_len:
        raise DataError(
            f"pretrain.data: {source} gives {len(train_stream)} training tokens, too few for one "
            f"window of pretrain.seq_len={seq_len} (+1); give more text or a smaller seq_len"
        )
    if len(val_stream) < 2:
        raise DataError(
            f"pretrain.data: {source} leaves {len(val_stream)} held-out tokens; give more text, "
            "a larger eval_fraction, or a separate eval source"
        )
    ctx.data_cache[key] = (train_stream, val_stream)
    return train_stream, val_stream


def run(ctx: StageContext) -> str:
    c = ctx.cfg.pretrain
    train_stream, val_stream = streams(ctx)
    learner = ctx.learner(STAGE, "causal_lm", ctx.policy_path, c.optim, c.steps, c.batch_size)
    baseline = unigram_entropy(val_stream)
    logger.info(
        "pretrain: %d train / %d held-out tokens; held-out unigram entropy %.3f nats",
        len(train_stream),
        len(val_stream),
        baseline,
    )
    gen = torch.Generator().manual_seed(ctx.cfg.seed)

    def evaluate(step: int) -> None:
        batches = sequential_windows(val_stream, c.batch_size, c.seq_len, c.eval_batches)
        loss = lm_val_loss(learner, batches)
        ctx.log(STAGE, step, {"eval/val_loss": loss, "eval/unigram_baseline": baseline})

    def step(_: int) -> dict[str, float]:
        t0 = time.time()
        out = learner.train("lm_step", random_windows(train_stream, c.batch_size, c.seq_len, gen))
        out["tokens_per_s"] = out.pop("tokens") / (time.time() - t0)
        return out

    return train_and_save(
        ctx,
        STAGE,
        learner,
        step,
        evaluate,
        lambda: {"generator": tensor_state(gen.get_state())},
        lambda saved: gen.set_state(tensor_from_state(saved["generator"])),
        len(train_stream),
    )
