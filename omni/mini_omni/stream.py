"""Streaming speech out: (text piece, audio chunk) events while A1A2 / T1A2 decoding runs.

Frame t of the answer is complete once audio layer 6 has emitted it, at step t + 7 (layer i runs i+1 steps
behind the text). Complete frames are decoded by the codec `stride` frames at a time (released default 4 frames
= 8192 samples = ~341 ms at 24 kHz), each chunk on its own as in the released streaming code.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from omni.mini_omni.tokens import MiniOmniTokens


@dataclass
class StreamEvent:
    text: str                      # text decoded since the previous event ("" when none)
    audio: np.ndarray | None       # float32 chunk at the codec rate, or None
    frames: torch.Tensor | None    # (n, 7) SNAC frames behind `audio`
    done: bool = False


class FrameAssembler:
    """Delayed per-step audio tokens -> complete (7,) frames in spec stream order, stopping at EOA."""

    def __init__(self, tok: MiniOmniTokens) -> None:
        self.tok = tok
        self.layers: list[list[int]] = [[] for _ in range(tok.n_audio_layers)]
        self.next_frame = 0
        self.ended = False

    def push(self, audio: torch.Tensor) -> list[torch.Tensor]:
        """audio: (7,) local tokens of one step -> frames completed by this step (empty list or one frame)."""
        for i, token in enumerate(audio.tolist()):
            self.layers[i].append(int(token))
        out = []
        n = self.tok.n_audio_layers
        while not self.ended and len(self.layers[n - 1]) > self.next_frame + n:
            t = self.next_frame
            frame = torch.tensor([self.layers[i][t + i + 1] for i in range(n)], dtype=torch.long)
            if bool((frame >= self.tok.codebook_size).any()):  # EOA (or any special) ends the audio
                self.ended = True
                break
            out.append(frame)
            self.next_frame += 1
        return out


def stream_events(
    tok: MiniOmniTokens,
    columns: Iterable[torch.Tensor],
    decode_text: Callable[[list[int]], str],
    decode_audio: Callable[[torch.Tensor], np.ndarray],
    stride: int = 4,
) -> Iterator[StreamEvent]:
    """Turn decoded (1, 8) step columns into events: a text piece whenever the text grows, an audio chunk
    every `stride` complete frames, and a final event flushing what is left (done=True)."""
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    assembler = FrameAssembler(tok)
    text_ids: list[int] = []
    shown, pending, text_ended = "", [], False
    for column in columns:
        piece = ""
        t = int(column[0, tok.text_row])
        text_ended = text_ended or t == tok.eot
        if not text_ended:
            text_ids.append(t)
            full = decode_text(text_ids)
            piece, shown = full[len(shown):], full
        pending += assembler.push(column[0, : tok.n_audio_layers])
        if len(pending) >= stride:
            chunk, pending = torch.stack(pending[:stride]), pending[stride:]
            yield StreamEvent(text=piece, audio=decode_audio(chunk), frames=chunk)
        elif piece:
            yield StreamEvent(text=piece, audio=None, frames=None)
    chunk = torch.stack(pending) if pending else None
    yield StreamEvent(text="", audio=None if chunk is None else decode_audio(chunk), frames=chunk, done=True)
