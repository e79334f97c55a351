"""Real-time Mini-Omni3 session: feed audio, receive listen / reply events; one KV cache for the whole session.

Protocol (spec "Streaming session"): the online prefix is prefilled once. Each complete 0.4 s chunk is fed as
AUDIO_BEGIN PAD*10 ASSISTANT with its 10 encoder frames in place of the PADs, in ONE forward that also carries the
token that closed the previous step (KEEP_SILENCE or TEXT_END), so nothing is ever re-run. At ASSISTANT the model
chooses KEEP_SILENCE (keep listening) or TEXT_BEGIN (reply; sampled among those two only, at most one reply per
chunk). A reply is decoded token by token: an optional emotion token, text, TEXT_END; then listening resumes with
the next chunk (half-duplex: audio that arrives meanwhile waits in the buffer). Sampling defaults are the released
ones: temperature 0.3, top-k 3, at most 4096 generated tokens per session.

Log-mel (encoder.MelStream): the same whole-stream framing as training (encoder.LogMel.stream), computed
incrementally: a chunk's last mel frame reads 40 samples past its end, so chunk c is processed once 2.5 ms of
chunk c + 1 has arrived (`lookahead_ms`; at the end of the audio, `flush` reflects instead). That look-ahead adds
to every decision's latency on top of the compute time (`decision_seconds`).

Dims legend: M mel bins, E tower width, D LLM width, V vocabulary.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from omni.mini_omni3.encoder import FRAMES_PER_CHUNK, MEL_LOOKAHEAD_MS, LogMel, MelStream
from omni.mini_omni3.layout import chunk_head, online_prefix
from omni.sampling import check, generator, sample

EVENT_KINDS = ("silence", "reply_start", "text", "reply_end", "budget_exhausted")


@dataclass
class SessionConfig:
    temperature: float = 0.3
    top_k: int = 3
    top_p: float = 1.0           # off (omni.sampling)
    max_new_tokens: int = 4096   # generated tokens (decisions + replies) per session
    max_reply_tokens: int = 512  # one reply stops here even without TEXT_END
    seed: int | None = None

    def __post_init__(self) -> None:
        check(self.temperature, self.top_k, self.top_p, 1.0, "Mini-Omni3 session")
        if self.max_new_tokens <= 0 or self.max_reply_tokens <= 0:
            raise ValueError(f"invalid session config {self}: budgets>0")


@dataclass
class Event:
    """kind: silence (KEEP_SILENCE chosen), reply_start (TEXT_BEGIN; `emotion` set once known, i.e. on the
    first text event or reply_end), text (a decoded piece), reply_end (TEXT_END or the reply cap),
    budget_exhausted (the session stops generating). `chunk`: index of the chunk that led to the event."""

    kind: str
    chunk: int
    text: str = ""
    emotion: str | None = None
    tokens: list[int] = field(default_factory=list)


class StreamingSession:
    """One listening session over a `MiniOmni3`-like nn.Module (needs tokens, embed, hidden, logits,
    encode_chunks, project and cfg.n_mels / cfg.system_prompt). Text pieces are decoded with `tokenizer` when
    given. `history` / `frame_positions` record the fed sequence (for checks and debugging)."""

    def __init__(self, model: Any, tokenizer: Any = None, cfg: SessionConfig | None = None,
                 system_ids: list[int] | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.cfg = cfg or SessionConfig()
        self.tok = model.tokens
        if system_ids is None:
            if tokenizer is None:
                raise ValueError("StreamingSession needs system_ids or a tokenizer to encode the system prompt")
            system_ids = list(tokenizer.encode(model.cfg.system_prompt, add_special_tokens=False))
        self.mel = MelStream(LogMel(model.cfg.n_mels))
        self.lookahead_ms = MEL_LOOKAHEAD_MS  # samples past a chunk's end its mel needs (2.5 ms)
        self.ready: list[torch.Tensor] = []  # (M, 40) mels of complete chunks not processed yet
        self.device = next(model.parameters()).device
        self.generator = generator(self.cfg.seed, self.device)  # on the logits' device (omni.sampling)
        self.cache = DynamicCache()
        self.history: list[int] = []      # every id fed to the model so far (the session's sequence)
        self.frame_positions: list[int] = []  # positions in `history` that hold encoder frames
        self.pending: list[int] = []      # the closing token of the last step, fed with the next chunk
        self.chunks_seen = 0
        self.generated = 0
        self.done = False
        self.chunk_seconds: list[float] = []  # wall time per processed chunk (decision + any reply)
        self.decision_seconds: list[float] = []  # wall time from a chunk's arrival to its decision
        self._forward(online_prefix(self.tok, system_ids), need_logits=False)

    # -- public API ----------------------------------------------------------------------------------------------
    def feed(self, samples: np.ndarray) -> Iterator[Event]:
        """Append 16 kHz samples (now) and return an iterator that processes every chunk whose mel is complete
        (the chunk plus 40 look-ahead samples), yielding its events as they happen (consume it before the next
        feed for live latency)."""
        self.ready += list(self.mel.push(np.asarray(samples, dtype=np.float32)))
        return self._drain()

    def flush(self) -> Iterator[Event]:
        """End of audio: the stream is zero-padded to whole chunks and its end reflected (as in training), then
        everything buffered is processed."""
        self.ready += list(self.mel.end())
        return self._drain()

    def _drain(self) -> Iterator[Event]:
        while self.ready and not self.done:
            yield from self.process_mel(self.ready.pop(0))

    @torch.no_grad()
    def process_mel(self, mel: torch.Tensor) -> Iterator[Event]:
        """One chunk's (M, 40) whole-stream log-mel -> its decision (and reply) events."""
        start = time.perf_counter()
        frames = self.model.project(self.model.encode_chunks(mel[None].to(self.device)))  # (1, 10, D)
        frames = frames.reshape(FRAMES_PER_CHUNK, -1)
        yield from self.process_frames(frames, start)

    @torch.no_grad()
    def process_frames(self, frames: torch.Tensor, start: float | None = None) -> Iterator[Event]:
        """One chunk given as (10, D) LLM-width frames (precomputed features: use model.project first)."""
        start = time.perf_counter() if start is None else start
        c = self.chunks_seen
        self.chunks_seen += 1
        if self.done:
            return
        ids = self.pending + chunk_head(self.tok)
        offset = len(self.pending) + 1  # the 10 PADs follow AUDIO_BEGIN
        logits = self._forward(ids, frames, list(range(offset, offset + FRAMES_PER_CHUNK)))
        allowed = torch.full_like(logits, float("-inf"))
        for t in (self.tok.keep_silence, self.tok.text_begin):
            allowed[t] = logits[t]
        decision = self._sample(allowed)
        self.decision_seconds.append(time.perf_counter() - start)
        if decision == self.tok.keep_silence:
            self.pending = [self.tok.keep_silence]
            yield Event("silence", c, tokens=[decision])
        else:
            yield Event("reply_start", c, tokens=[decision])
            yield from self._reply(c)
        self.chunk_seconds.append(time.perf_counter() - start)
        if self.generated >= self.cfg.max_new_tokens and not self.done:
            self.done = True
            yield Event("budget_exhausted", c)

    # -- internals -----------------------------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor) -> int:
        self.generated += 1
        return int(sample(logits, self.cfg.temperature, self.cfg.top_k, self.cfg.top_p, generator=self.generator))

    def _forward(self, ids: list[int], frames: torch.Tensor | None = None, frame_at: list[int] | None = None,
                 need_logits: bool = True) -> torch.Tensor | None:
        """Feed `ids` (frames replace positions `frame_at` of them) through the cached LLM; -> (V,) last logits."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        pos = torch.tensor(frame_at or [], dtype=torch.long, device=self.device)
        embeds = self.model.embed(x, frames, pos if frames is not None else None)  # (1, n, D)
        base = len(self.history)
        self.history += ids
        self.frame_positions += [base + p for p in (frame_at or [])]
        out = self.model.hidden(embeds, past_key_values=self.cache, use_cache=True)
        return self.model.logits(out.last_hidden_state[0, -1]) if need_logits else None

    def _reply(self, c: int) -> Iterator[Event]:
        """SPEAKING after TEXT_BEGIN: emotion (optional) + text until TEXT_END; yields text events."""
        tok = self.tok
        nxt, text_ids, emotion, shown = tok.text_begin, [], None, ""
        for k in range(self.cfg.max_reply_tokens):
            if self.generated >= self.cfg.max_new_tokens:
                break
            t = self._sample(self._forward([nxt]))
            nxt = t
            if t == tok.text_end:
                break
            if k == 0 and tok.emotion_name(t) is not None:
                emotion = tok.emotion_name(t)
                continue
            text_ids.append(t)
            piece = self._decode(text_ids)
            new, shown = piece[len(shown):], piece
            yield Event("text", c, text=new, emotion=emotion or "normal", tokens=[t])
        self.pending = [tok.text_end]  # TEXT_END closes the reply (fed with the next chunk, also after a cap)
        yield Event("reply_end", c, text=self._decode(text_ids), emotion=emotion or "normal", tokens=text_ids)

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text[:-1] if text.endswith("\ufffd") else text  # an incomplete UTF-8 byte sequence waits


class MiniOmni3Inference:
    """Family inference helper (omni.families registry): builds sessions for a model + tokenizer."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def session(self, cfg: SessionConfig | None = None) -> StreamingSession:
        return StreamingSession(self.model, self.tokenizer, cfg)
