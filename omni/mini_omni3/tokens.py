"""Mini-Omni3 control tokens: the one typed source of every id the streaming family uses.

The release reuses ordinary Qwen ids as controls (no vocabulary extension); the defaults below are those released
values (../shared/spec/mini_omni3.md), pinned by tests/test_mini_omni3_layout.py. Another backbone or tokenizer
uses other ids: either list them explicitly, or `MiniOmni3Tokens.after_vocab(n)` places every control right
after an n-token tokenizer (the tiny model: 512-token BPE -> controls 512..529, table padded to 576 rows).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

IGNORE = -100  # label ignored by the loss (torch cross_entropy default ignore_index)

EMOTIONS: tuple[str, ...] = ("happy", "sad", "angry", "surprise", "normal", "urgent")
# control fields in the order `after_vocab` assigns them (every id field of the dataclass)
CONTROL_FIELDS: tuple[str, ...] = (
    "user", "assistant", "keep_silence", "pad", "online", "offline", "english", *EMOTIONS,
    "text_end", "text_begin", "audio_pad", "audio_begin", "audio_end",
)


@dataclass(frozen=True)
class MiniOmni3Tokens:
    """Control ids plus the embedding-table size. `system` is an alias of `text_begin` (as released)."""

    user: int = 151601
    assistant: int = 151602
    keep_silence: int = 151605
    pad: int = 151608          # audio placeholder inside a chunk block; also batch padding
    online: int = 151609
    offline: int = 151610
    english: int = 151611
    happy: int = 151614
    sad: int = 151615
    angry: int = 151616
    surprise: int = 151617
    normal: int = 151618       # the default emotion
    urgent: int = 151619
    text_end: int = 151643
    text_begin: int = 151644   # also SYSTEM
    audio_pad: int = 151646    # offline audio placeholder
    audio_begin: int = 151647
    audio_end: int = 151648    # offline
    vocab_size: int = 151936   # embedding / head rows (Qwen2.5 padded vocabulary)
    frames_per_chunk: int = 10  # encoder frames per 0.4 s chunk (PAD placeholders per chunk block)

    def __post_init__(self) -> None:
        ids = {name: getattr(self, name) for name in CONTROL_FIELDS}
        bad = {k: v for k, v in ids.items() if not 0 <= int(v) < self.vocab_size}
        if bad:
            raise ValueError(f"control ids outside [0, vocab_size={self.vocab_size}): {bad}")
        seen: dict[int, str] = {}
        for name, value in ids.items():
            if value in seen:
                raise ValueError(f"control ids must be distinct: {seen[value]} and {name} are both {value}")
            seen[value] = name
        if self.frames_per_chunk <= 0:
            raise ValueError(f"frames_per_chunk must be positive, got {self.frames_per_chunk}")

    # -- derived -----------------------------------------------------------------------------------------------
    @property
    def system(self) -> int:
        return self.text_begin

    @property
    def controls(self) -> dict[str, int]:
        """{name: id} of every control token."""
        return {name: getattr(self, name) for name in CONTROL_FIELDS}

    @property
    def first_control(self) -> int:
        return min(self.controls.values())

    def emotion(self, name: str | None) -> int:
        """Id of an emotion by name (None -> normal); unknown names fail listing the valid ones."""
        name = "normal" if name is None else str(name).lower()
        if name not in EMOTIONS:
            raise ValueError(f"unknown emotion {name!r}; valid: {list(EMOTIONS)}")
        return getattr(self, name)

    def emotion_name(self, token: int) -> str | None:
        """Inverse of `emotion`; None when `token` is not an emotion id."""
        for name in EMOTIONS:
            if getattr(self, name) == token:
                return name
        return None

    def check_text_ids(self, ids: list[int], what: str = "text") -> None:
        """Reply / prompt text must not contain control ids (they would read as protocol tokens)."""
        controls = set(self.controls.values())
        clash = sorted({i for i in ids if i in controls})
        if clash:
            names = {v: k for k, v in self.controls.items()}
            raise ValueError(f"{what} tokenizes to control ids {[(i, names[i]) for i in clash]}")
        big = [i for i in ids if not 0 <= i < self.vocab_size]
        if big:
            raise ValueError(f"{what} has ids outside the table [0, {self.vocab_size}): {big[:5]}")

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def after_vocab(cls, text_vocab: int, pad_to: int = 64, frames_per_chunk: int = 10) -> "MiniOmni3Tokens":
        """Controls appended right after a `text_vocab`-token tokenizer, table padded to a multiple of `pad_to`."""
        ids = {name: text_vocab + i for i, name in enumerate(CONTROL_FIELDS)}
        size = text_vocab + len(CONTROL_FIELDS)
        size = -(-size // pad_to) * pad_to if pad_to > 0 else size
        return cls(**ids, vocab_size=size, frames_per_chunk=frames_per_chunk)

    @classmethod
    def from_config(cls, raw: "MiniOmni3Tokens | Mapping[str, Any] | None") -> "MiniOmni3Tokens":
        """A tokens instance, a mapping of fields, or `{after_vocab: n, [pad_to: m]}`; unknown keys fail naming the
        valid ones; None -> the released table."""
        if isinstance(raw, cls):
            return raw
        raw = dict(raw or {})
        if "after_vocab" in raw:
            n = raw.pop("after_vocab")
            allowed = {"pad_to", "frames_per_chunk"}
            if set(raw) - allowed:
                raise ValueError(f"tokens.after_vocab takes only {sorted(allowed)}; got {sorted(raw)}")
            return cls.after_vocab(int(n), **{k: int(v) for k, v in raw.items()})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise ValueError(f"unknown tokens field(s) {unknown}; valid: {sorted(valid) + ['after_vocab']}")
        return cls(**{k: int(v) for k, v in raw.items()})
