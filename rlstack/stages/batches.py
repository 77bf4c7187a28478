"""Token batches for each stage, built from normalised rows and the shared tokenizer.

Every batch is a dict of CPU tensors, right-padded with the pad id. Sequence batches carry
`input_ids` and `attention_mask` `[batch, L]`; losses use masks that say which tokens count.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from transformers import PreTrainedTokenizerBase

from rlstack.model.tokenizer import format_prompt


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def unknown_characters(
    tokenizer: PreTrainedTokenizerBase, rows: list, fields: tuple[str, ...] = ()
) -> tuple[int, Counter[str]]:
    """How many rows hold characters the tokenizer reads as its unknown token, and those
    characters with their counts; `(0, Counter())` for a tokenizer without one.

    Rows are texts, or dicts whose `fields` are encoded (a field a row lacks is skipped). Each
    distinct character is encoded once, on its own (through the tokenizer's normaliser, so an
    accent it strips or a curly quote it maps to ASCII is not unknown); only when some are
    unknown are the rows read again to count them. A pass over the characters of ~10k rows takes
    milliseconds.
    """
    if tokenizer.unk_token_id is None:
        return 0, Counter()
    texts = [
        row if isinstance(row, str) else "".join(row[f] for f in fields if f in row) for row in rows
    ]
    seen: set[str] = set()
    for text in texts:
        seen.update(text)
    chars = sorted(seen)
    ids = tokenizer(chars, add_special_tokens=False, verbose=False)["input_ids"] if chars else []
    unknown = {c for c, c_ids in zip(chars, ids) if tokenizer.unk_token_id in c_ids}
    if not unknown:
        return 0, Counter()
    counts: Counter[str] = Counter()
    affected = 0
    for text in texts:
        if not unknown.isdisjoint(text):
            affected += 1
            counts.update(c for c in text if c in unknown)
    return affected, counts


def pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: `(input_ids, attention_mask)`, both `[batch, max_len]`."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    return ids, attn


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, max_len: int) -> list[int]:
    """The chat-formatted prompt; over-long prompts keep their tail (the latest turns)."""
    ids = encode(tokenizer, format_prompt(tokenizer, prompt))
    return ids[-max_len:]


# ------------------------------------------------------------------ pretraining
def token_stream(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> torch.Tensor:
    sep = [tokenizer.eos_token_id]
    ids: list[int] = []
    for text in texts:
        ids += encode(tokenizer, text) + sep
    return torch.tensor(ids, dtype=torch.long)


def random_windows(stream: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator):
    """`batch` random windows of `seq_len` tokens, every token counted in the loss."""
    starts = torch.randint(0, len(stream) - seq_len, (batch,), generator=gen)
    ids = torch.stack([stream[s : s + seq_len] for s in starts.tolist()])
    ones = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": ones, "loss_mask": ones}


def sequential_windows(stream: torch.Tensor, batch: int, seq_len: int, max_batches: int):
    """Consecutive windows covering the held-out stream (for a stable validation loss)."""
    n = min(max_batches * batch, max(1, (len(stream) - 1) // seq_len))
    windows = [stream[i * seq_len : (i + 1) * seq_len] for i in range(n)]
    for i in range(0, len(windows), batch):
        ids = torch.stack(windows[i : i + batch])
        ones = torch.ones_like(ids)
        yield {"input_ids": ids, "attention_mask": ones, "loss_mask": ones}


def unigram_entropy(stream: torch.Tensor) -> float:
    """Entropy (nats per token) of the stream's own token frequencies: the unigram baseline."""
    counts = Counter(stream.tolist())
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


# ---------------------------------------------------------------------- SFT
def sft_batch(tokenizer: PreTrainedTokenizerBase, rows: list[dict], max_len: int):
    """Prompt + response + end token; only response and end tokens are in `loss_mask`.
    Preference rows (no `response`) give their `chosen` reply."""
    seqs, masks = [], []
    for row in rows:
        p = prompt_ids(tokenizer, row["prompt"], max_len // 2)
        response = row["response"] if "response" in row else row["chosen"]
        r = encode(tokenizer, response) + [tokenizer.eos_token_id]
        seq = (p + r)[:max_len]
        seqs.append(seq)
        masks.append([0] * len(p) + [1] * (len(seq) - len(p)))
    ids, attn = pad(seqs, tokenizer.pad_token_id)
    loss_mask, _ = pad(masks, 0)
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}


# ------------------------------------------------------------- reward model
def pair_batch(tokenizer: PreTrainedTokenizerBase, rows: list[dict], max_len: int):
    """Chosen and rejected sequences of each pair: `<side>_ids`, `<side>_attention_mask` and
    `<side>_loss_mask` (1 on response and end tokens) for side in chosen, rejected."""
    batch = {}
    for side in ("chosen", "rejected"):
        seqs, masks = [], []
        for row in rows:
            p = prompt_ids(tokenizer, row["prompt"], max_len // 2)
            r = encode(tokenizer, row[side]) + [tokenizer.eos_token_id]
            seq = (p + r)[:max_len]
            seqs.append(seq)
            masks.append([0] * len(p) + [1] * (len(seq) - len(p)))
        ids, attn = pad(seqs, tokenizer.pad_token_id)
        batch[f"{side}_ids"], batch[f"{side}_attention_mask"] = ids, attn
        batch[f"{side}_loss_mask"], _ = pad(masks, 0)
    return batch


def reward_sequence(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    max_len: int,
    max_prompt: int | None = None,
    ended: bool = True,
) -> list[int]:
    """The token ids a reward model reads for one prompt/response text pair.

    The chat-formatted prompt keeps its last `max_prompt` tokens (default `max_len // 2`, as in
    `pair_batch`), then come the response's tokens and, when the response `ended`, the end
    token; the whole is cut to `max_len`. With the defaults this is `pair_batch`'s sequence; an
    RL run passes its own prompt limit and whether each sample stopped at the end token, which
    reproduces the ids its rollouts hold.
    """
    p = prompt_ids(tokenizer, prompt, max_len // 2 if max_prompt is None else max_prompt)
    r = encode(tokenizer, response) + ([tokenizer.eos_token_id] if ended else [])
    return (p + r)[:max_len]


def response_text(tokenizer: PreTrainedTokenizerBase, response_ids: list[int]) -> str:
    """The text of sampled response tokens, special tokens kept as their names and a trailing
    end token dropped (`reward_sequence`'s `ended` adds it back). With the character tokenizer
    the text encodes back to exactly the same ids; subword tokenizers may re-split it."""
    if response_ids and response_ids[-1] == tokenizer.eos_token_id:
        response_ids = response_ids[:-1]
    return tokenizer.decode(
        response_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
    )


# ----------------------------------------------------------------------- RL
def rollout_batch(
    prompts: list[list[int]], samples: list[dict], pad_id: int
) -> dict[str, torch.Tensor]:
    """Sequences of sampled responses with per-token tensors aligned to predicted tokens.

    Returns input_ids/attention_mask `[batch, L]`, and `mask` and `rollout_logprobs`
    `[batch, L-1]`, where position t refers to token t+1 (1.0 on response tokens).
    """
    seqs, masks, logps = [], [], []
    for s in samples:
        p, r = prompts[s["prompt_index"]], s["response_ids"]
        seqs.append(p + r)
        masks.append([0.0] * (len(p) - 1) + [1.0] * len(r))
        logps.append([0.0] * (len(p) - 1) + list(s["logprobs"]))
    ids, attn = pad(seqs, pad_id)
    width = ids.shape[1] - 1
    mask = torch.zeros((len(samples), width))
    rollout_logprobs = torch.zeros((len(samples), width))
    for i, (m, lp) in enumerate(zip(masks, logps)):
        mask[i, : len(m)] = torch.tensor(m)
        rollout_logprobs[i, : len(lp)] = torch.tensor(lp)
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "mask": mask,
        "rollout_logprobs": rollout_logprobs,
    }
