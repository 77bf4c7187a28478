"""The character-level tokenizer shared by every stage.

One token per character of printable ASCII plus newline and tab, and a few special tokens for
the chat format. Text is normalised first (accents stripped, full-width forms and ligatures
mapped to ASCII, curly quotes and dashes mapped to their ASCII look-alikes), and any character
still outside the vocabulary becomes `<unk>`: decoding never reproduces an unseen character, and
encoding never fails. A run logs one warning per stage data set holding such characters
(`rlstack.stages.batches.unknown_characters` finds them).

The tokenizer is built with `tokenizers` and saved as an HF fast tokenizer with a chat template,
so transformers and vLLM load it from any checkpoint directory.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, *ROLE_TOKENS)
# Printable ASCII with space, tab and newline (carriage returns are normalised to newlines).
CHARS = "".join(c for c in string.printable if c not in "\r\x0b\x0c")

# Typographic characters mapped to ASCII before lookup.
ASCII_LOOKALIKES = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u2026": "...",
    "\u00a0": " ",
    "\r\n": "\n",
    "\r": "\n",
}

# A prompt is one user turn; generation continues after the assistant marker and ends at EOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Build the character tokenizer; deterministic, so every stage gets identical ids."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKD(), normalizers.StripAccents(), normalizers.NFKC()]
        + [normalizers.Replace(src, dst) for src, dst in ASCII_LOOKALIKES.items()]
    )
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=model_max_length,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def format_prompt(tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    """The chat-formatted text of a one-turn prompt, ending with the assistant marker."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
