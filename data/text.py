"""Per-row text tokenization for the data loaders, without the Python wrapper's per-call overhead.

`encode_plain(tokenizer, text)` == `list(tokenizer.encode(text, add_special_tokens=False))`. A Hugging Face fast
tokenizer's `encode` builds a BatchEncoding around ONE call of its Rust `tokenizers.Tokenizer` (~65 us a text on the
2-core EPYC, ~6x the Rust call itself). The loaders tokenize 2-3 texts per row, so where the wrapper would only
forward to the backend (no truncation / padding left set on it, special tokens split as the wrapper would), the
backend is called directly; otherwise, and for any other tokenizer, the wrapper itself.
"""
from __future__ import annotations

from typing import Any


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens (tokenizer.encode(text, add_special_tokens=False)), as a list."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and _forwards_only(tokenizer, backend):
        return backend.encode(text, add_special_tokens=False).ids
    return list(tokenizer.encode(text, add_special_tokens=False))


def _forwards_only(tokenizer: Any, backend: Any) -> bool:
    """The wrapper's encode(text, add_special_tokens=False) would call `backend.encode_batch([text])` with nothing
    changed: no truncation / padding configured on the backend (a truncating call leaves them set until the next
    plain call resets them) and its special-token splitting already what the wrapper sets."""
    if not _plain_wrapper(type(tokenizer)):
        return False
    if backend.truncation is not None or backend.padding is not None:
        return False
    return bool(backend.encode_special_tokens) == bool(getattr(tokenizer, "split_special_tokens", False))


_PLAIN: dict[type, bool] = {}


def _plain_wrapper(cls: type) -> bool:
    """`cls` is transformers' Rust-backed tokenizer with its own encode / _encode_plus (a subclass overriding
    either may do more than forward to the backend)."""
    if cls not in _PLAIN:
        try:
            from tokenizers import Tokenizer  # noqa: F401
            from transformers.tokenization_utils_base import PreTrainedTokenizerBase
            from transformers.tokenization_utils_tokenizers import TokenizersBackend
        except ImportError:  # pragma: no cover - another transformers layout: always the wrapper
            _PLAIN[cls] = False
        else:
            _PLAIN[cls] = (issubclass(cls, TokenizersBackend) and cls.encode is PreTrainedTokenizerBase.encode
                           and cls._encode_plus is TokenizersBackend._encode_plus)
    return _PLAIN[cls]
