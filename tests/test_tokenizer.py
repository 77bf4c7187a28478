"""The character tokenizer: exact round trip on ASCII, defined handling of unseen characters."""

import string

import pytest
from transformers import AutoTokenizer

from rlstack.model.tokenizer import EOS, UNK, build_tokenizer, format_prompt


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_printable_ascii_round_trips_one_token_per_character(tokenizer):
    text = string.ascii_letters + string.digits + string.punctuation + " \t\n" + "To be, or not"
    ids = encode(tokenizer, text)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert UNK not in tokenizer.convert_ids_to_tokens(ids)


def test_unseen_characters_become_unk_and_typographic_ones_map_to_ascii(tokenizer):
    ids = encode(tokenizer, "caf\u00e9 \u201cquoted\u201d \u2014 \ufb01 \u4f60\r\n")
    # Accents are stripped, curly quotes and dashes map to ASCII, the ligature splits, CRLF is
    # a newline, and a character with no ASCII form is one <unk>.
    assert tokenizer.decode(ids) == 'cafe "quoted" - fi <unk>\n'
    assert tokenizer.convert_ids_to_tokens(ids).count(UNK) == 1


def test_chat_template_marks_prompt_and_generation_start(tokenizer):
    text = format_prompt(tokenizer, "3+4")
    assert text == "<|user|>3+4<|end|><|assistant|>"
    tokens = tokenizer.convert_ids_to_tokens(encode(tokenizer, text))
    assert tokens == ["<|user|>", "3", "+", "4", EOS, "<|assistant|>"]
    assert tokenizer.eos_token == EOS


def test_saved_tokenizer_reloads_with_identical_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello, world!\n48/2=24 \u00e9\u4f60"
    assert encode(reloaded, text) == encode(tokenizer, text)
    assert reloaded.chat_template == tokenizer.chat_template
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()  # deterministic
