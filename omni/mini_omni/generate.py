"""Mini-Omni decoding with a KV cache: greedy / temperature / top-k / top-p (omni.sampling), delayed audio layers,
batch-parallel A1A2.

Dims legend: B batch, R = 8 rows, P prompt length, D width, V row vocabulary.
At answer step k the text row emits token k and audio layer i emits frame k - i - 1; steps k <= i of layer i are
its fill. As in the released decoder, every audio layer is sampled at every step and what it emits is fed back, in
its fill steps and after its EOA too (the training layout makes PAD_A the target there, so a trained model emits it
by itself); `SamplingConfig.force_pad_a` forces PAD_A at those steps instead. The text row is PAD_T after EOT (forced,
as in the release).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from omni.mini_omni.layout import undelay
from omni.mini_omni.model import MiniOmni
from omni.mini_omni.tokens import MiniOmniTokens
from omni.sampling import check, generator as make_generator
from omni.sampling import sample as sample_ids


@dataclass
class SamplingConfig:
    temperature: float = 0.9
    top_k: int = 1               # released: 1 (greedy)
    top_p: float = 1.0           # off (omni.sampling)
    max_new_tokens: int = 2048
    seed: int | None = None
    ctc_weight: float = 0.0  # ASR only: hybrid CTC/attention greedy decoding with the model's CTC head (omni/ctc.py)
    # False (released behaviour): audio layer i's fill steps (k <= i) and its steps after EOA are sampled and fed
    # back; True: PAD_A is forced there (not the released decoder; for models trained without those targets)
    force_pad_a: bool = False

    def __post_init__(self) -> None:
        check(self.temperature, self.top_k, self.top_p, 1.0, "Mini-Omni sampling")
        if self.max_new_tokens <= 0 or not 0 <= self.ctc_weight <= 1:
            raise ValueError(f"invalid sampling config {self}: max_new_tokens>0, 0<=ctc_weight<=1")


def sample(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) ids on the logits' device (omni.sampling.sample with the config's settings)."""
    return sample_ids(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator=generator)


@dataclass
class Generation:
    """Per item: text ids (without EOT), per-layer audio streams (delayed, fill included), frames (N, 7)."""

    text_ids: list[list[int]]
    audio_layers: list[list[list[int]]] = field(default_factory=list)
    steps: int = 0

    def frames(self, item: int = 0, n_layers: int = 7) -> torch.Tensor:
        """(N, 7) frames of `item` with each layer's fill dropped (may end in EOA / padding columns)."""
        return undelay(self.audio_layers[item], n_layers)


@dataclass
class StepState:
    """Hidden states of the newest position: `text` (B, D) scores the text row, `audio` (B, D) the audio rows
    (the TTS adapter's output when the model has one, else the same states)."""

    text: torch.Tensor
    audio: torch.Tensor

    def __getitem__(self, idx: Any) -> "StepState":
        return StepState(self.text[idx], self.audio[idx])

    @property
    def shape(self) -> torch.Size:
        return self.text.shape

    @property
    def device(self) -> torch.device:
        return self.text.device


class MiniOmniDecoder:
    """Stateful step decoder around a `MiniOmni` model; the KV caches (LLM, and TTS adapter when configured)
    live here, never on the model."""

    def __init__(self, model: MiniOmni) -> None:
        self.model = model
        self.tok = model.tokens

    def _run(self, x: torch.Tensor, caches: tuple[DynamicCache, DynamicCache | None]) -> StepState:
        h = self.model.hidden(x, past_key_values=caches[0], use_cache=True).last_hidden_state  # (B, L, D)
        h_audio = h if caches[1] is None else \
            self.model.audio_hidden(h, past_key_values=caches[1], use_cache=True)
        return StepState(h[:, -1], h_audio[:, -1])

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor, audio_mels: torch.Tensor | None = None, audio_start: int = 1,
                audio_len: int = 0, image_pixels: torch.Tensor | None = None, image_start: int = 1,
                image_len: int = 0, audio_features: torch.Tensor | None = None,
                ) -> tuple[StepState, tuple[DynamicCache, DynamicCache | None]]:
        """prompt (B, 8, P) local ids, same length for all items; audio_mels (B, n_mels, F) or None, or their
        `encode_audio` output `audio_features` (B, T_max, D) when the caller already has it; image_pixels
        (B, 3, H, W) or None. Returns the last position's states and the filled caches."""
        B = prompt.shape[0]
        idx = torch.arange(B, device=prompt.device)

        def span(start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.full((B,), start, device=prompt.device), torch.full((B,), length, device=prompt.device))

        audio = image = None
        if audio_features is not None and audio_len > 0:
            audio = audio_features
        elif audio_mels is not None and audio_len > 0:
            audio = self.model.encode_audio(audio_mels)
        if image_pixels is not None and image_len > 0:
            image = self.model.encode_image(image_pixels)
        x = self.model.embed(prompt, audio, idx if audio is not None else None, *span(audio_start, audio_len),
                             image, idx if image is not None else None, *span(image_start, image_len))
        caches = (DynamicCache(), DynamicCache() if self.model.tts_adapter is not None else None)
        return self._run(x, caches), caches

    @torch.no_grad()
    def step(self, column: torch.Tensor, caches: tuple[DynamicCache, DynamicCache | None]) -> StepState:
        """column (B, 8) local ids fed at the next position -> its states."""
        return self._run(self.model.embed(column.unsqueeze(-1)), caches)

    @torch.no_grad()
    def iter_columns(self, prompt: torch.Tensor, audio_out: bool, cfg: SamplingConfig,
                     audio_mels: torch.Tensor | None = None, audio_start: int = 1,
                     audio_len: int = 0, text_picker: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     **inputs: Any) -> Iterator[torch.Tensor]:
        """Yield each decoded step as a (B, 8) column (CPU), the stopping one included. B items decode in
        lock-step; text-only answers stop at EOT, audio answers when layer 6 emits EOA (for every item).
        `text_picker`: (B, V_text) text-row logits -> (B,) ids, replacing sampling of the text row (e.g. the joint
        CTC/attention picker of omni/ctc.py). `inputs`: `prefill`'s image_pixels / image_start / image_len /
        audio_features."""
        tok = self.tok
        B = prompt.shape[0]
        h, cache = self.prefill(prompt, audio_mels, audio_start, audio_len, **inputs)
        gen = make_generator(cfg.seed, h.device)  # on the logits' device (omni.sampling)
        text_done = torch.zeros(B, dtype=torch.bool)
        audio_done = torch.zeros(B, tok.n_audio_layers, dtype=torch.bool)
        for k in range(cfg.max_new_tokens):
            column = self._next_column(h, k, audio_out, text_done, audio_done, cfg, gen, text_picker)  # (B, 8)
            yield column.cpu()
            text_done |= column[:, tok.text_row].cpu() == tok.eot
            audio_done |= column[:, : tok.n_audio_layers].cpu() == tok.eoa
            if bool(audio_done[:, -1].all()) if audio_out else bool(text_done.all()):
                return
            h = self.step(column, cache)

    def generate(self, prompt: torch.Tensor, audio_out: bool, cfg: SamplingConfig,
                 audio_mels: torch.Tensor | None = None, audio_start: int = 1, audio_len: int = 0) -> Generation:
        """Decode B items to completion (see `iter_columns`)."""
        columns = self.iter_columns(prompt, audio_out, cfg, audio_mels, audio_start, audio_len)
        return collect(self.tok, columns, prompt.shape[0], audio_out)

    def _next_column(self, h: StepState, k: int, audio_out: bool, text_done: torch.Tensor,
                     audio_done: torch.Tensor, cfg: SamplingConfig, gen: torch.Generator | None,
                     text_picker: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Sample step k's 8 tokens from the states (B, D); PAD_T after EOT; PAD_A in layer i's fill (k <= i) and
        after its EOA only under `cfg.force_pad_a`."""
        tok = self.tok
        B = h.shape[0]
        column = torch.full((B, tok.n_rows), tok.pad_a, dtype=torch.long)
        logits = self.model.row_logits(h.text, tok.text_row)
        text = (sample(logits, cfg, gen) if text_picker is None else text_picker(logits)).cpu()
        column[:, tok.text_row] = torch.where(text_done, torch.full_like(text, tok.pad_t), text)
        if audio_out:
            for i in range(tok.n_audio_layers):
                if cfg.force_pad_a and k <= i:
                    continue  # fill before layer i starts, forced
                a = sample(self.model.row_logits(h.audio, i), cfg, gen).cpu()
                ended = audio_done[:, i] & cfg.force_pad_a
                column[:, i] = torch.where(ended, torch.full_like(a, tok.pad_a), a)
        return column.to(h.device)


@torch.no_grad()
def iter_batch_parallel(model: MiniOmni, a1a2_prompt: torch.Tensor, a1t2_prompt: torch.Tensor,
                        audio_mels: torch.Tensor, audio_len: int, cfg: SamplingConfig, audio_start: int = 1,
                        image_pixels: torch.Tensor | None = None, image_start: int = 1, image_len: int = 0,
                        ) -> Iterator[torch.Tensor]:
    """Spec 'batch-parallel decoding': item 0 = A1A2 prompt, item 1 = A1T2 prompt of the same audio (1, 8, P).
    Audio tokens come from item 0's audio logits, the text token from item 1's text logits; the text token is fed
    to both, item 0 gets its own audio tokens back, item 1 gets PAD_A. Yields the answer's (1, 8) columns.
    Mini-Omni2 image QA decodes the same way (spec pin 2026-12): item 0 = image_a1a2 prompt, item 1 = image_a1t2
    prompt, both with the image `image_pixels` (1, 3, H, W) at image_start.. and the audio at audio_start (52)."""
    tok = model.tokens
    dec = MiniOmniDecoder(model)
    prompt = torch.cat([a1a2_prompt, a1t2_prompt], dim=0)  # (2, 8, P)
    pixels = None if image_pixels is None else image_pixels.expand(2, *image_pixels.shape[1:])
    h, cache = dec.prefill(prompt, audio_mels.expand(2, -1, -1), audio_start, audio_len, image_pixels=pixels,
                           image_start=image_start, image_len=image_len)
    gen = make_generator(cfg.seed, h.device)  # on the logits' device (omni.sampling)
    text_done = False
    audio_done = torch.zeros(tok.n_audio_layers, dtype=torch.bool)
    for k in range(cfg.max_new_tokens):
        t = tok.pad_t if text_done else int(sample(model.row_logits(h.text[1:2], tok.text_row), cfg, gen))
        column = torch.full((2, tok.n_rows), tok.pad_a, dtype=torch.long)
        for i in range(tok.n_audio_layers):
            if not cfg.force_pad_a or (k > i and not audio_done[i]):  # released: sampled and fed back at every step
                column[0, i] = int(sample(model.row_logits(h.audio[0:1], i), cfg, gen))
        column[:, tok.text_row] = t
        yield column[:1].clone()
        text_done = text_done or t == tok.eot
        audio_done |= column[0, : tok.n_audio_layers] == tok.eoa
        if audio_done[-1]:
            return
        h = dec.step(column.to(h.device), cache)


def generate_batch_parallel(model: MiniOmni, a1a2_prompt: torch.Tensor, a1t2_prompt: torch.Tensor,
                            audio_mels: torch.Tensor, audio_len: int, cfg: SamplingConfig, **inputs: Any
                            ) -> Generation:
    """Batch-parallel A1A2 (or image_a1a2) decoding to completion (see `iter_batch_parallel`); one item."""
    columns = iter_batch_parallel(model, a1a2_prompt, a1t2_prompt, audio_mels, audio_len, cfg, **inputs)
    return collect(model.tokens, columns, 1, audio_out=True)


def collect(tok: MiniOmniTokens, columns: Iterable[torch.Tensor], batch: int, audio_out: bool) -> Generation:
    """Accumulate (B, 8) step columns into per-item text ids (up to EOT) and per-layer audio streams."""
    text: list[list[int]] = [[] for _ in range(batch)]
    layers: list[list[list[int]]] = [[[] for _ in range(tok.n_audio_layers)] for _ in range(batch)]
    ended = [False] * batch
    steps = 0
    for column in columns:
        steps += 1
        for b in range(batch):
            t = int(column[b, tok.text_row])
            ended[b] = ended[b] or t == tok.eot
            if not ended[b]:
                text[b].append(t)
            for i in range(tok.n_audio_layers):
                layers[b][i].append(int(column[b, i]))
    return Generation(text_ids=text, audio_layers=layers if audio_out else [], steps=steps)


def frames_until_eoa(frames: torch.Tensor, eoa: int) -> torch.Tensor:
    """(N, 7) undelayed frames -> frames before the first that contains EOA or any special (>= codebook)."""
    bad = (frames >= eoa).any(dim=1)
    n = int(bad.nonzero()[0]) if bad.any() else frames.shape[0]
    return frames[:n]
