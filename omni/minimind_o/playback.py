"""Streaming playback: events (text pieces, audio chunks) while MiniMind-O decodes, and incremental Mimi decoding
((n, 8) frames in as they are generated, 24 kHz audio out).

transformers' `MimiModel.decode` streams only its decoder transformer (`decoder_past_key_values`); its upsampling
transposed convolution and SEANet decoder take no streaming state in transformers 5.23. Mimi's decoder is
causal, so this decoder runs the three parts separately:
- codes -> latents (`quantizer.decode`, per frame);
- latents -> upsample (causal transposed conv) over `context` previous latent frames + the new ones;
- the new upsampled steps -> decoder transformer with its KV cache (exact, causal);
- transformer outputs -> SEANet over `context` previous steps + the new ones, keeping only the new samples.
Every output sample depends on a bounded past, its receptive field (`receptive_frames`: 4 frames for the
released architecture: first conv kernel 7 -> 6 transformer steps, 1 step per causal transposed conv at its
input rate, fractions for the rest; with 1 frame or fewer of context the chunks are audibly wrong). With
`context` covering it the chunks concatenate to the one-shot `decode` within float tolerance (tested). A chunk
of n frames costs convolutions over context + n frames and attention over n new steps.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, MimiModel

from omni.minimind_o.codec import N_CODEBOOKS, samples_per_frame
from omni.minimind_o.generate import ModelSource, SamplingConfig, Step, decode_steps, playable
from omni.minimind_o.model import MiniMindO
from omni.minimind_o.tokens import MiniMindOTokens


def receptive_frames(config) -> int:
    """Latent frames of past that one output sample of Mimi's causal decoder can depend on (MimiConfig)."""
    steps, rate = float(config.kernel_size - 1), 1  # in decoder-transformer steps
    for ratio in config.upsampling_ratios:
        steps += 1 / rate  # a causal transposed conv reads the previous input sample
        rate *= ratio
        steps += sum((config.residual_kernel_size - 1) * config.dilation_growth_rate ** j
                     for j in range(config.num_residual_layers)) / rate
    steps += (config.last_kernel_size - 1) / rate
    latent_stride = max(1, round(config.encodec_frame_rate / config.frame_rate))
    return max(1, math.ceil(steps / latent_stride))


class MimiStreamDecoder:
    """push(frames (n, 8) Mimi codes in [0, codebook_size)) -> (n * samples_per_frame,) float32 waveform."""

    def __init__(self, mimi: MimiModel, context: int | None = None) -> None:
        context = receptive_frames(mimi.config) if context is None else context
        if context < 1:
            raise ValueError(f"context must be >= 1 latent frame, got {context}")
        if not mimi.config.use_causal_conv:
            raise ValueError("incremental decoding needs a causal Mimi (config.use_causal_conv=True)")
        self.mimi, self.context = mimi.eval(), int(context)
        self.step = samples_per_frame(mimi)
        self.reset()

    def reset(self) -> None:
        self._latents: torch.Tensor | None = None   # (1, C, <= context) last latent frames
        self._steps: torch.Tensor | None = None     # (1, C, <= context * stride) last transformer outputs
        self._cache = DynamicCache(config=self.mimi.config)
        self.frames = 0

    @torch.no_grad()
    def push(self, frames: torch.Tensor) -> np.ndarray:
        frames = torch.as_tensor(frames, dtype=torch.long)
        if frames.ndim != 2 or frames.shape[1] != N_CODEBOOKS:
            raise ValueError(f"expected (frames, {N_CODEBOOKS}) codes, got shape {tuple(frames.shape)}")
        if frames.numel() and (frames.min() < 0 or frames.max() >= self.mimi.config.codebook_size):
            raise ValueError("codes outside the Mimi codebook; map specials with generate.playable() first")
        n = frames.shape[0]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        dec = self.mimi.decoder
        device = next(self.mimi.parameters()).device
        latents = self.mimi.quantizer.decode(frames.t().unsqueeze(0).to(device))  # (1, C, n)
        x = _cat(self._latents, latents)  # (1, C, ctx + n)
        up = dec.upsample(x) if dec.upsample is not None else x  # (1, C, (ctx + n) * stride)
        stride = up.shape[-1] // x.shape[-1]
        new = up[..., (x.shape[-1] - n) * stride:]  # (1, C, n * stride): exact, the transposed conv is causal
        out = dec.decoder_transformer(new.transpose(1, 2), past_key_values=self._cache, use_cache=True)
        steps = _cat(self._steps, out.last_hidden_state.transpose(1, 2))  # (1, C, sctx + n * stride)
        y = dec.decoder_seanet(steps)  # (1, 1, (sctx + n * stride) * hop)
        wav = y[0, 0, (steps.shape[-1] - n * stride) * (y.shape[-1] // steps.shape[-1]):]
        self._latents, self._steps = x[..., -self.context:], steps[..., -self.context * stride:]
        self.frames += n
        return wav[: n * self.step].float().cpu().numpy()


def _cat(past: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    return new if past is None else torch.cat([past, new], dim=-1)


# ------------------------------------------------------------------------------------------------ events
@dataclass
class StreamEvent:
    """What a streaming caller receives. text / text_ids: what the answer text grew by (text is "" without a
    detokenizer, or while the new bytes are an incomplete UTF-8 sequence); frames (n, K): the Mimi frames of
    this audio chunk as generated (specials kept); audio: their waveform at the codec rate (None without a
    codec); done: the last event; interrupted: the interrupt hook stopped generation."""

    text: str = ""
    text_ids: list[int] = field(default_factory=list)
    frames: torch.Tensor | None = None
    audio: np.ndarray | None = None
    done: bool = False
    interrupted: bool = False


def stream_events(steps: Iterable[Step], tok: MiniMindOTokens, decode_text: Callable[[list[int]], str] | None = None,
                  decoder: MimiStreamDecoder | None = None, chunk_frames: int = 4) -> Iterator[StreamEvent]:
    """Decoding steps -> events: one per step whose text grew, one per `chunk_frames` emitted frames (decoded
    incrementally by `decoder`), and a final `done` event flushing the remaining frames. `<|im_end|>` is not part
    of the text."""
    if chunk_frames <= 0:
        raise ValueError(f"chunk_frames must be positive, got {chunk_frames}")
    ids: list[int] = []
    shown, pending, interrupted = "", [], False
    for step in steps:
        new = [] if step.sampled[tok.text_row] in (None, tok.im_end) else [int(step.sampled[tok.text_row])]
        piece = ""
        if new:
            ids += new
            if decode_text is not None:
                full = decode_text(ids)
                if not full.endswith("\ufffd"):
                    piece, shown = full[len(shown):], full
        pending += step.frames
        interrupted = step.interrupted
        if len(pending) >= chunk_frames:
            chunk, pending = torch.stack(pending[:chunk_frames]), pending[chunk_frames:]
            yield StreamEvent(piece, new, chunk, _audio(decoder, chunk, tok))
        elif new:
            yield StreamEvent(piece, new)
    chunk = torch.stack(pending) if pending else None
    yield StreamEvent("", [], chunk, _audio(decoder, chunk, tok) if chunk is not None else None, done=True,
                      interrupted=interrupted)


def _audio(decoder: MimiStreamDecoder | None, chunk: torch.Tensor, tok: MiniMindOTokens) -> np.ndarray | None:
    return None if decoder is None else decoder.push(playable(chunk, tok))


def stream(model: MiniMindO, batch: dict[str, Any], cfg: SamplingConfig | None = None, mimi: MimiModel | None = None,
           decode_text: Callable[[list[int]], str] | None = None, newline: Sequence[int] = (),
           chunk_frames: int = 4, generator: torch.Generator | None = None,
           interrupt: Callable[[], bool] | threading.Event | None = None) -> Iterator[StreamEvent]:
    """Streaming Thinker text + Talker speech for one prefill batch (`generate.prompt_batch` / `chat_batch`):
    text pieces as they are sampled, 24 kHz audio chunks every `chunk_frames` frames (80 ms each), stopping
    between steps when `interrupt` fires (barge-in)."""
    steps = decode_steps(ModelSource(model.eval()), model.tokens, batch, cfg or SamplingConfig(), newline,
                         generator, interrupt)
    decoder = MimiStreamDecoder(mimi) if mimi is not None else None
    return stream_events(steps, model.tokens, decode_text, decoder, chunk_frames)
