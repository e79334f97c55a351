"""data.text.encode_plain == tokenizer.encode(text, add_special_tokens=False) on the shipped tiny tokenizer, and
the cases where calling the Rust backend directly would NOT be the same (a truncation left set on it by an earlier
call; split_special_tokens) fall back to the wrapper. Negative controls: the naive backend call differs there."""
from pathlib import Path

import pytest

from data.text import encode_plain

TOKENIZER = Path(__file__).resolve().parents[1] / "omni" / "assets" / "tiny_tokenizer"
TEXTS = ["what is three plus four", "  leading and trailing  ", "Ünïcödé → 東京 🙂", "a\nb\tc", "x" * 300,
         "<|im_end|> literal specials <|endoftext|>", "seven."]


@pytest.fixture()
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def test_same_ids_as_the_wrapper(tokenizer):
    for text in TEXTS:
        want = list(tokenizer.encode(text, add_special_tokens=False))
        got = encode_plain(tokenizer, text)
        assert got == want and type(got) is list, text
    assert len(encode_plain(tokenizer, "x" * 300)) > 3  # the long text is several tokens (used below)


def test_truncation_left_on_the_backend_falls_back(tokenizer):
    long = "x" * 300
    full = list(tokenizer.encode(long, add_special_tokens=False))
    tokenizer(long, truncation=True, max_length=3)  # leaves truncation configured on the Rust tokenizer
    backend = tokenizer._tokenizer
    assert backend.truncation is not None
    assert len(backend.encode(long, add_special_tokens=False).ids) == 3  # control: the naive direct call cuts
    assert encode_plain(tokenizer, long) == full


def test_split_special_tokens_follows_the_wrapper(tokenizer):
    tokenizer.add_tokens(["<|sep|>"], special_tokens=True)
    text = "a <|sep|> b"
    assert encode_plain(tokenizer, text) == list(tokenizer.encode(text, add_special_tokens=False))
    tokenizer.split_special_tokens = True  # the wrapper now splits "<|sep|>" into ordinary tokens
    want = list(tokenizer.encode(text, add_special_tokens=False))
    tokenizer._tokenizer.encode_special_tokens = False  # as a wrapper call on an earlier setting leaves it
    assert tokenizer._tokenizer.encode(text, add_special_tokens=False).ids != want  # control: naive call differs
    assert encode_plain(tokenizer, text) == want
