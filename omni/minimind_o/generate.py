"""MiniMind-O generation: Thinker text + Talker Mimi frames, one position per step, KV caches for both.

Dims legend: P prompt length, s = P the first answer position, j the answer step (0, 1, ...), K = 8 codebooks,
V text vocabulary, V_a = 2112 audio ids, S speaker-embedding width.

The schedule is the training layout read forwards (omni/minimind_o/layout.py, spec "Sequence layout"):
- step j samples from the states of position s - 1 + j and feeds its column at position s + j;
- text: answer token j is sampled at step j; after `<|im_end|>` the layout's trailing newline ids are forced,
  then text pad (0), exactly the inputs the model saw in training;
- codebook c is active from step c + 1 (one step after the text, plus c): frame k of codebook c is sampled at
  step k + c + 1. Any id >= codebook_size ends that codebook (fed back as STOP, then PAD, as in training);
- frame k is complete at step k + K (un-delaying); frames are emitted until every codebook has stopped
  (`frames_until="all_stop"`, the spec) or only while all 8 are still running ("first_stop", the public
  inference code's behaviour). Ids >= codebook_size in an emitted frame are replaced by 0 before Mimi decoding.
Generation ends when the text has ended and (for speech) all 8 codebooks have stopped, at `max_new_tokens`, or
when the interrupt hook fires (barge-in), checked between steps.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from transformers import DynamicCache

from omni.minimind_o.encoders import AUDIO_SR
from omni.minimind_o.layout import build_layout, render_chat
from omni.minimind_o.model import MiniMindO
from omni.minimind_o.tokens import MiniMindOTokens
from omni.sampling import generator as make_generator
from omni.sampling import sample

FRAME_POLICIES = ("all_stop", "first_stop")


@dataclass(frozen=True)
class SamplingConfig:
    """Released defaults. Text (Thinker): temperature 0.7, top-p 0.85, repetition penalty 1.0 (off) over the prompt
    and the answer so far. Audio (Talker, per codebook): temperature 0.2, top-k 50, penalty 1.05 on the codebook's
    last 3 codes. A temperature of 0 is greedy (after penalties)."""

    temperature: float = 0.7
    top_p: float = 0.85
    top_k: int = 0
    repetition_penalty: float = 1.0
    audio_temperature: float = 0.2
    audio_top_k: int = 50
    audio_top_p: float = 1.0
    audio_penalty: float = 1.05
    audio_penalty_window: int = 3
    max_new_tokens: int = 512
    speech: bool = True                 # False: text only (audio rows stay PAD, no Talker sampling)
    frames_until: str = "all_stop"
    seed: int | None = None

    def __post_init__(self) -> None:
        bad = [n for n in ("temperature", "audio_temperature") if getattr(self, n) < 0]
        bad += [n for n in ("top_k", "audio_top_k", "audio_penalty_window") if getattr(self, n) < 0]
        bad += [n for n in ("top_p", "audio_top_p") if not 0 < getattr(self, n) <= 1]
        bad += [n for n in ("repetition_penalty", "audio_penalty") if getattr(self, n) <= 0]
        bad += ["max_new_tokens"] if self.max_new_tokens <= 0 else []
        if bad:
            raise ValueError(f"invalid sampling settings {bad} in {self}: temperatures >= 0, top_k >= 0, "
                             "0 < top_p <= 1, penalties > 0, max_new_tokens > 0")
        if self.frames_until not in FRAME_POLICIES:
            raise ValueError(f"frames_until={self.frames_until!r}; valid choices: {list(FRAME_POLICIES)}")

    @classmethod
    def greedy(cls, **overrides: Any) -> "SamplingConfig":
        """Argmax everywhere, no penalties (tests, reproducible evaluation)."""
        return cls(**{"temperature": 0.0, "audio_temperature": 0.0, "repetition_penalty": 1.0,
                      "audio_penalty": 1.0, **overrides})


def sample_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                  penalty: float = 1.0, penalize: Sequence[int] = (), generator: torch.Generator | None = None,
                  banned: Sequence[int] = ()) -> int:
    """(V,) logits -> one id: omni.sampling.sample (CTRL repetition penalty on the distinct `penalize` ids,
    `banned` ids never chosen, then greedy (temperature 0) or temperature + top-k + nucleus), on the logits'
    device; only the id comes back."""
    return int(sample(logits.reshape(-1), temperature, top_k, top_p, penalty, penalize, banned, generator))


# ------------------------------------------------------------------------------------------------ logits sources
@dataclass
class StepLogits:
    """Scores of the newest position: text (V,) and, per codebook on demand, audio (V_a,)."""

    text: torch.Tensor
    audio: Callable[[int], torch.Tensor]


class LogitsSource(Protocol):
    def prefill(self, batch: dict[str, Any]) -> StepLogits: ...

    def step(self, column: torch.Tensor) -> StepLogits: ...


class ModelSource:
    """A `MiniMindO` with its two KV caches (transformers DynamicCache): the Thinker's and the Talker's, whose
    positions are the Thinker's. Every call goes through `MiniMindO.hidden`, the training forward, so decoding
    uses the same bridge / code embedding / speaker computation. `h` (1, D) and `g` (1, H) hold the newest
    position's final Thinker / Talker states."""

    def __init__(self, model: MiniMindO) -> None:
        self.model = model
        self.thinker_cache: DynamicCache | None = None
        self.talker_cache: DynamicCache | None = None
        self.h = self.g = None

    @property
    def device(self) -> torch.device:
        return self.model.thinker.lm_head.weight.device

    @torch.no_grad()
    def prefill(self, batch: dict[str, Any]) -> StepLogits:
        """batch: input_ids (1, 9, P) + optional speaker_emb / audio_mels / audio_frames / pixel_values."""
        if batch["input_ids"].shape[0] != 1:
            raise ValueError(f"generation decodes one item at a time, got batch {tuple(batch['input_ids'].shape)}")
        self.thinker_cache, self.talker_cache = DynamicCache(), DynamicCache()
        return self._run(batch)

    @torch.no_grad()
    def step(self, column: torch.Tensor) -> StepLogits:
        """column (9,) ids fed at the next position."""
        return self._run({"input_ids": column.view(1, -1, 1).to(self.device)})

    def _run(self, batch: dict[str, Any]) -> StepLogits:
        h, g = self.model.hidden(batch, self.thinker_cache, self.talker_cache)
        self.h, self.g = h[:, -1], g[:, -1]  # (1, D), (1, H)
        head, g_last, base = self.model.talker.lm_head, self.g, []

        def audio(c: int) -> torch.Tensor:
            # logits_c = base + adapter_c (as MiniMindO.audio_logits); the shared base is scored once per step
            if not base:
                base.append(head.base(g_last)[0])
            return base[0] + head.adapters[c](g_last)[0]
        return StepLogits(text=self.model.text_logits(self.h)[0], audio=audio)


# ------------------------------------------------------------------------------------------------ un-delaying
class FrameAssembler:
    """Fed audio ids per step (8,) -> complete un-delayed frames (8,). Codebook c's frame k is the id fed at step
    k + c + 1; frame k is complete at step k + K. Ids >= codebook_size mark a stopped codebook (STOP at its
    stop frame, PAD after). `frames_until`: "all_stop" emits every frame in which some codebook still runs;
    "first_stop" emits frames only until the first one holding a stopped codebook."""

    def __init__(self, tok: MiniMindOTokens, frames_until: str = "all_stop") -> None:
        if frames_until not in FRAME_POLICIES:
            raise ValueError(f"frames_until={frames_until!r}; valid choices: {list(FRAME_POLICIES)}")
        self.tok, self.policy = tok, frames_until
        self.rows: list[list[int]] = [[] for _ in range(tok.n_codebooks)]
        self.steps = 0
        self.emitted = 0
        self.ended = False

    def push(self, fed: Sequence[int]) -> list[torch.Tensor]:
        """fed: the K audio ids fed at this step -> frames completed by it (zero or one)."""
        K, j = self.tok.n_codebooks, self.steps
        for c in range(K):
            if j >= c + 1:
                self.rows[c].append(int(fed[c]))
        self.steps += 1
        out = []
        while not self.ended and len(self.rows[K - 1]) > self.emitted:
            frame = torch.tensor([self.rows[c][self.emitted] for c in range(K)], dtype=torch.long)
            special = frame >= self.tok.codebook_size
            if bool(special.all()) or (self.policy == "first_stop" and bool(special.any())):
                self.ended = True
                break
            out.append(frame)
            self.emitted += 1
        return out


def playable(frames: torch.Tensor, tok: MiniMindOTokens) -> torch.Tensor:
    """(N, K) frames -> the same with every special id (>= codebook_size: STOP / PAD of a stopped codebook)
    replaced by 0, as the released decoder does before Mimi (it names >= 2049; 2048 is not a Mimi code either)."""
    frames = torch.as_tensor(frames, dtype=torch.long)
    return torch.where(frames >= tok.codebook_size, torch.zeros_like(frames), frames)


# ------------------------------------------------------------------------------------------------ the step loop
@dataclass
class Step:
    """One answer step j. fed (9,): the column fed at position s + j (last step: never fed). sampled: per row the
    id drawn from the logits, None where the schedule forced it. frames: frames completed by this step."""

    index: int
    fed: torch.Tensor
    sampled: list[int | None]
    frames: list[torch.Tensor] = field(default_factory=list)
    text_ended: bool = False
    audio_stopped: tuple[bool, ...] = ()
    interrupted: bool = False           # the interrupt hook fired: this is the last step


def _interrupt_check(interrupt: Callable[[], bool] | threading.Event | None) -> Callable[[], bool]:
    if interrupt is None:
        return lambda: False
    if isinstance(interrupt, threading.Event):
        return interrupt.is_set
    if not callable(interrupt):
        raise TypeError(f"interrupt must be a callable returning bool or a threading.Event, got {type(interrupt)}")
    return interrupt


def decode_steps(source: LogitsSource, tok: MiniMindOTokens, batch: dict[str, Any], cfg: SamplingConfig,
                 newline: Sequence[int] = (), generator: torch.Generator | None = None,
                 interrupt: Callable[[], bool] | threading.Event | None = None) -> Iterator[Step]:
    """Run the schedule of the module doc over a logits source; yields every step. `newline`: ids forced after
    `<|im_end|>` (the layout's answer suffix, `encode("\\n")`). `interrupt` is checked after every step that
    does not end the answer; when it fires that step is the last (`interrupted=True`) and no further model
    call is made."""
    stop_now = _interrupt_check(interrupt)
    K, cs = tok.n_codebooks, tok.codebook_size
    history_text = [int(t) for t in batch["input_ids"][0, tok.text_row].tolist()]  # prompt + answer (penalty)
    history_audio: list[list[int]] = [[] for _ in range(K)]
    banned = (tok.audio_pad, tok.image_pad)  # placeholders need encoder features: never valid answer ids
    stopped = [False] * K
    text_end: int | None = None
    assembler = FrameAssembler(tok, cfg.frames_until)
    logits = source.prefill(batch)
    if generator is None and cfg.seed is not None:  # on the logits' device (omni.sampling)
        generator = make_generator(cfg.seed, logits.text.device)
    for j in range(cfg.max_new_tokens):
        fed = torch.full((tok.n_rows,), tok.a_pad, dtype=torch.long)
        sampled: list[int | None] = [None] * tok.n_rows
        if text_end is None:
            t = sample_logits(logits.text, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty,
                              history_text, generator, banned)
            sampled[tok.text_row] = t
            history_text.append(t)
            text_end = j if t == tok.im_end else None
        else:
            t = newline[j - text_end - 1] if j - text_end - 1 < len(newline) else tok.pad
        fed[tok.text_row] = t
        for c in range(K):
            if not cfg.speech or j < c + 1 or stopped[c]:
                continue
            code = sample_logits(logits.audio(c), cfg.audio_temperature, cfg.audio_top_k, cfg.audio_top_p,
                                 cfg.audio_penalty, history_audio[c][-cfg.audio_penalty_window:] if
                                 cfg.audio_penalty_window else (), generator)
            sampled[c] = code
            history_audio[c].append(code)
            stopped[c] = code >= cs
            fed[c] = tok.a_stop if stopped[c] else code
        frames = assembler.push(fed[:K].tolist()) if cfg.speech else []
        done = text_end is not None and (not cfg.speech or all(stopped))
        cut = not done and stop_now()
        yield Step(j, fed, sampled, frames, text_end is not None, tuple(stopped), cut)
        if done or cut:
            return
        logits = source.step(fed)


# ------------------------------------------------------------------------------------------------ prompts
def generation_prompt(tok: MiniMindOTokens, prompt: Sequence[int], ref_codes: torch.Tensor | None = None,
                      speaker: bool = False) -> torch.Tensor:
    """Prompt ids (P) + optional reference codes (R, K) / speaker flag -> (9, P) prompt columns: exactly the first
    P input columns of the training layout (reference right-aligned to end at s - 1, SPEAKER one before it)."""
    lay = build_layout(tok, list(prompt), [tok.im_end], None, ref_codes, speaker)
    return lay.inputs[:, : len(prompt)].clone()


@dataclass
class Voice:
    """Voice conditioning: reference Mimi codes (R, K) and/or a speaker embedding (S,)."""

    ref_codes: torch.Tensor | None = None
    speaker_emb: torch.Tensor | None = None


def prompt_batch(model: MiniMindO, prompt: Sequence[int], voice: Voice | None = None,
                 question_audio: Sequence[np.ndarray] = (), image: bytes | None = None) -> dict[str, Any]:
    """Prompt ids (already rendered, placeholders included) -> the prefill batch of `MiniMindO.hidden` on the
    model's device: input_ids (1, 9, P), speaker_emb (1, S) or None, audio_mels / audio_frames (one clip per
    `question_audio` 16 kHz waveform), pixel_values (one image)."""
    tok, cfg = model.tokens, model.cfg
    voice = voice or Voice()
    weight = model.thinker.lm_head.weight
    spk = voice.speaker_emb
    if spk is not None:
        spk = torch.as_tensor(spk, dtype=torch.float32).reshape(1, -1)
        if spk.shape[1] != cfg.spk_dim:
            raise ValueError(f"speaker embedding has {spk.shape[1]} dims but model.cfg.spk_dim = {cfg.spk_dim}")
    ids = generation_prompt(tok, prompt, voice.ref_codes, speaker=spk is not None).unsqueeze(0)
    batch: dict[str, Any] = {"input_ids": ids.to(weight.device),
                             "speaker_emb": None if spk is None else spk.to(weight.device, weight.dtype)}
    if question_audio:
        spec = cfg.audio_encoder
        for i, w in enumerate(question_audio):
            if not 0 < len(w) <= spec.window_s * AUDIO_SR:
                raise ValueError(f"question audio {i}: {len(w) / AUDIO_SR:.2f} s; the audio encoder takes "
                                 f"(0, {spec.window_s:g}] s of 16 kHz audio")
        batch["audio_mels"] = torch.stack([spec.features(np.asarray(w, dtype=np.float32)) for w in question_audio]
                                          ).to(weight.device, weight.dtype)
        batch["audio_frames"] = torch.tensor([spec.frames(len(w)) for w in question_audio], device=weight.device)
    if image is not None:
        batch["pixel_values"] = cfg.vision_encoder.pixels(image).unsqueeze(0).to(weight.device, weight.dtype)
    return batch


def chat_batch(model: MiniMindO, encode: Callable[[str], list[int]], messages: Sequence[dict],
               voice: Voice | None = None, question_audio: Sequence[np.ndarray] = (), image: bytes | None = None
               ) -> dict[str, Any]:
    """Chat messages (ending with the user turn) -> prefill batch, rendered by the training chat template
    (`layout.render_chat`, evaluation choices): `question_audio` holds the row's clips, one per user turn; as in
    training (released), only the LAST user turn is spoken (its clip's encoder frames as `<|audio_pad|>`), the
    earlier ones stay text, and fewer clips than user turns means text questions. `<image>` goes to the front of
    its user text joined by "\\n" and becomes the image tokens."""
    spec = model.cfg.audio_encoder
    n_user = sum(m.get("role") == "user" for m in messages)
    if len(question_audio) > n_user:
        raise ValueError(f"{len(question_audio)} question clips for {n_user} user turns")
    spoken = list(question_audio[-1:]) if question_audio and len(question_audio) == n_user else []
    chat = render_chat(model.tokens, encode, [*messages, {"role": "assistant", "content": ""}],
                       audio_frames=[spec.frames(len(w)) for w in spoken],
                       n_image_tokens=model.cfg.vision_encoder.n_tokens)
    return prompt_batch(model, chat.prompt, voice, spoken, image)


# ------------------------------------------------------------------------------------------------ results
@dataclass
class Generation:
    """text_ids: answer ids up to and including `<|im_end|>`; frames (N, K) emitted frames (specials kept; use
    `playable`); columns (9, J) the fed columns; interrupted: the hook stopped it."""

    text_ids: list[int]
    frames: torch.Tensor
    columns: torch.Tensor
    steps: list[Step]
    interrupted: bool = False


def collect(steps: Iterator[Step], tok: MiniMindOTokens) -> Generation:
    out = list(steps)
    text = [s.sampled[tok.text_row] for s in out if s.sampled[tok.text_row] is not None]
    frames = [f for s in out for f in s.frames]
    return Generation(
        text_ids=[int(t) for t in text],
        frames=torch.stack(frames) if frames else torch.zeros((0, tok.n_codebooks), dtype=torch.long),
        columns=torch.stack([s.fed for s in out], dim=1) if out else torch.zeros((tok.n_rows, 0), dtype=torch.long),
        steps=out, interrupted=bool(out) and out[-1].interrupted)


def generate(model: MiniMindO, batch: dict[str, Any], cfg: SamplingConfig | None = None, newline: Sequence[int] = (),
             generator: torch.Generator | None = None,
             interrupt: Callable[[], bool] | threading.Event | None = None) -> Generation:
    """Decode one prompt batch (see `prompt_batch` / `chat_batch`) to completion."""
    steps = decode_steps(ModelSource(model.eval()), model.tokens, batch, cfg or SamplingConfig(), newline,
                         generator, interrupt)
    return collect(steps, model.tokens)
