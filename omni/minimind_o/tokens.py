"""MiniMind-O token table: the one typed source of every id the family uses (spec "Vocabularies and tokens").

Rows of a sequence: Mimi codebooks 0..7 (rows 0..7, LOCAL audio ids 0..audio_vocab-1, one table per codebook)
then text (row 8, text ids 0..text_vocab-1). Audio ids: 0..codebook_size-1 are Mimi codes, then
`audio_specials` reserved ids of which PAD, STOP and SPEAKER are used. Text specials are fixed ids of the
MiniMind tokenizer (ChatML); the tiny tokenizer built for tests places them at the same ids.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100  # target value ignored by the loss (torch cross_entropy default ignore_index)


@dataclass(frozen=True)
class MiniMindOTokens:
    text_vocab: int = 6400        # MiniMind byte-level BPE
    pad: int = 0                  # <|endoftext|> (also the text-row filler)
    im_start: int = 1             # <|im_start|>
    im_end: int = 2               # <|im_end|>
    image_pad: int = 12           # <|image_pad|>: one per vision token, overwritten by projected features
    audio_pad: int = 16           # <|audio_pad|>: one per audio-encoder frame, overwritten likewise
    think_start: int = 25         # <think>
    think_end: int = 26           # </think>
    codebook_size: int = 2048     # Mimi codes per codebook
    audio_specials: int = 64      # reserved audio ids after the codes
    n_codebooks: int = 8          # first 8 Mimi codebooks
    stop_weight: float = 10.0     # loss weight of a STOP target (spec: 10x)

    def __post_init__(self) -> None:
        for name in ("text_vocab", "codebook_size", "n_codebooks"):
            if getattr(self, name) <= 0:
                raise ValueError(f"tokens.{name} must be positive, got {getattr(self, name)}")
        if self.audio_specials < 4:
            raise ValueError("tokens.audio_specials must be >= 4 (PAD, STOP and SPEAKER follow the codes)")
        specials = {n: getattr(self, n) for n in ("pad", "im_start", "im_end", "image_pad", "audio_pad",
                                                  "think_start", "think_end")}
        if len(set(specials.values())) != len(specials):
            raise ValueError(f"text special ids must be distinct, got {specials}")
        bad = {n: v for n, v in specials.items() if not 0 <= v < self.text_vocab}
        if bad:
            raise ValueError(f"text special ids {bad} are outside the text vocabulary [0, {self.text_vocab})")

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def audio_vocab(self) -> int:
        """Ids per codebook table (embedding rows / head columns): 2048 + 64 = 2112 released."""
        return self.codebook_size + self.audio_specials

    @property
    def n_rows(self) -> int:
        return self.n_codebooks + 1

    @property
    def text_row(self) -> int:
        return self.n_codebooks

    # -- audio specials (local ids, every codebook) ------------------------------------------------------------
    @property
    def a_pad(self) -> int:
        """Audio-row filler: before a codebook starts, after its STOP, in text-only rows. Never a loss target."""
        return self.codebook_size + 1

    @property
    def a_stop(self) -> int:
        """End of a codebook's stream; a target with weight `stop_weight`."""
        return self.codebook_size + 2

    @property
    def speaker(self) -> int:
        """Marks the speaker position; its code embedding is replaced by spk_proj(spk_emb)."""
        return self.codebook_size + 3

    def is_stop(self, code: int) -> bool:
        """Generation: any id >= codebook_size ends a codebook's stream (spec)."""
        return code >= self.codebook_size
