"""Mini-Omni token table: the one typed source of every id the family uses.

Rows of a Mini-Omni sequence: audio layers 0..6 (rows 0..6) then text (row 7). Audio rows hold LOCAL ids
(0..audio_padded-1) in layouts and targets; `global_id` maps them into the single shared embedding table.
Defaults are the released Mini-Omni / Mini-Omni2 values (../shared/spec/mini_omni.md); the tiny test model
changes only the vocabulary sizes and keeps the same offsets scheme.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # target value ignored by the loss (torch cross_entropy default ignore_index)


@dataclass(frozen=True)
class MiniOmniTokens:
    text_vocab: int = 151936      # backbone tokenizer vocabulary
    text_specials: int = 64       # reserved text ids after the tokenizer's
    codebook_size: int = 4096     # SNAC codebook
    audio_specials: int = 64      # reserved local ids after the codebook
    n_audio_layers: int = 7       # SNAC codes per coarse frame (1 + 2 + 4)

    def __post_init__(self) -> None:
        if self.text_specials < 5 or self.audio_specials < 7:
            raise ValueError("text_specials must be >= 5 and audio_specials >= 7 (the specials below need them)")
        for name in ("text_vocab", "codebook_size", "n_audio_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def text_padded(self) -> int:
        return self.text_vocab + self.text_specials

    @property
    def audio_padded(self) -> int:
        return self.codebook_size + self.audio_specials

    @property
    def total_vocab(self) -> int:
        return self.text_padded + self.n_audio_layers * self.audio_padded

    @property
    def n_rows(self) -> int:
        return self.n_audio_layers + 1

    @property
    def text_row(self) -> int:
        return self.n_audio_layers

    # -- text specials (global ids, text row only) -------------------------------------------------------------
    @property
    def eot(self) -> int:
        return self.text_vocab

    @property
    def pad_t(self) -> int:
        return self.text_vocab + 1

    @property
    def input_t(self) -> int:
        return self.text_vocab + 2

    @property
    def answer_t(self) -> int:
        return self.text_vocab + 3

    @property
    def asr(self) -> int:
        return self.text_vocab + 4

    # -- audio specials (local ids, any audio layer) ------------------------------------------------------------
    @property
    def eoa(self) -> int:
        return self.codebook_size

    @property
    def pad_a(self) -> int:
        return self.codebook_size + 1

    @property
    def input_a(self) -> int:
        return self.codebook_size + 2

    @property
    def answer_a(self) -> int:
        return self.codebook_size + 3

    @property
    def split(self) -> int:
        return self.codebook_size + 4

    @property
    def image(self) -> int:
        return self.codebook_size + 5

    @property
    def end_image(self) -> int:
        return self.codebook_size + 6

    # -- vocabulary arithmetic ---------------------------------------------------------------------------------
    def audio_offset(self, layer: int) -> int:
        """Global id of local id 0 on audio `layer` (0-based)."""
        if not 0 <= layer < self.n_audio_layers:
            raise ValueError(f"audio layer must be in [0, {self.n_audio_layers}), got {layer}")
        return self.text_padded + layer * self.audio_padded

    def head_slice(self, row: int) -> slice:
        """Columns of the shared output head that score `row` (text row: the padded text vocab)."""
        if row == self.text_row:
            return slice(0, self.text_padded)
        start = self.audio_offset(row)
        return slice(start, start + self.audio_padded)

    def row_offsets(self) -> torch.Tensor:
        """(8,) offsets that turn a layout of local ids into global embedding ids (text row: 0)."""
        return torch.tensor([self.audio_offset(i) for i in range(self.n_audio_layers)] + [0], dtype=torch.long)

    def to_global(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., 8, L) local-id layout -> global ids for the shared embedding."""
        return ids + self.row_offsets().to(ids.device).view(-1, 1)
