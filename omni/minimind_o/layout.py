"""MiniMind-O sequence layout: pure functions from chat messages / token lists / codes to (9, L) grids.

Legend: rows 0..7 = Mimi codebooks (LOCAL audio ids), row 8 = text; L = sequence length (input positions);
P = prompt tokens, s = P = index of the first answer token, m = answer tokens (content + `<|im_end|>` + "\\n"),
N = answer Mimi frames, R = reference frames, K = 8 codebooks.

One position carries one text token and one 80 ms Mimi frame. A "grid" G of length L + 1 holds every id;
inputs are G[:, :L] and targets G[:, 1:] where the spec says there is a loss (spec "Sequence layout"):
- text: answer tokens X[s .. s+m-1] (predicted at positions s-1 .. s+m-2);
- codebook l, frame k: target at position s + l + k (input at s + l + k + 1); then a STOP target (weight
  `stop_weight`); PAD (no loss) before and after;
- reference codes (no delay) on all 8 rows, right-aligned to end at s - 1; the SPEAKER id on all 8 rows one
  position before them (or at s - 1 when there is no reference). Both are inputs only.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from omni.minimind_o.tokens import IGNORE, MiniMindOTokens

ROLES = ("system", "user", "assistant")
IMAGE_PLACEHOLDER = "<image>"  # literal in I2T user content (released data)
EMPTY_THINK = "\n\n"           # text between <think> and </think> of the empty think block
IMAGE_SEPS = ("\n", "\n\n")     # released joints between the moved `<image>` and the user text


@dataclass
class Layout:
    """One example. inputs / targets: (9, L) long; weights: (8, L) float audio-target weights (0 where IGNORE);
    start: s, the first answer position (= prompt length P)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    start: int

    @property
    def length(self) -> int:
        return int(self.inputs.shape[1])


@dataclass
class ChatIds:
    """Rendered conversation: prompt ids (through `<|im_start|>assistant\\n`), the kept empty think block `think`
    (text targets, before the audio anchor s; empty when not kept) and the answer ids (last assistant content +
    `<|im_end|>` + "\\n")."""

    prompt: list[int]
    answer: list[int]
    think: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- chat rendering
def render_chat(
    tok: MiniMindOTokens,
    encode: Callable[[str], list[int]],
    messages: Sequence[dict],
    *,
    audio_frames: Sequence[int] = (),
    n_image_tokens: int = 64,
    keep_think: bool = False,
    image_front: bool = True,
    image_sep: str = "\n",
) -> ChatIds:
    """ChatML: each turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n`; the LAST message (an assistant turn)
    is the answer and the prompt ends with `<|im_start|>assistant\\n`. `keep_think` renders the empty think block
    `<think>\\n\\n</think>\\n\\n` into `think`: released, it is part of the answer's TEXT targets, not the prompt;
    the audio anchor s stays after it (spec "Let s be ... after the empty think block when it is kept").
    `encode` turns plain text into ids (no specials added).

    A2A: only the LAST user turn is spoken (released): `audio_frames` is () for text questions or [n], and that
    turn carries n `<|audio_pad|>` ids (one per encoder frame) instead of its text; earlier user turns stay
    text. I2T: the `<image>` placeholder is moved to the front (`image_front`) or the back of the user text,
    joined by `image_sep` ("\\n" or "\\n\\n"; front + "\\n" is the deterministic evaluation choice), and
    becomes `n_image_tokens` `<|image_pad|>` ids.
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a conversation must end with an assistant turn (the training target)")
    if len(audio_frames) > 1:
        raise ValueError(f"{len(audio_frames)} audio clips: only the last user turn is spoken (pass () or [frames])")
    if image_sep not in IMAGE_SEPS:
        raise ValueError(f"image_sep={image_sep!r} is not one of {list(IMAGE_SEPS)}")
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if audio_frames and last_user is None:
        raise ValueError("an audio clip but no user turn to speak it")
    newline = encode("\n")
    prompt: list[int] = []
    for i, msg in enumerate(messages[:-1]):
        role = msg.get("role")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; valid roles: {list(ROLES)}")
        if i == last_user and audio_frames:
            content = [tok.audio_pad] * int(audio_frames[0])
        else:
            text = str(msg.get("content", ""))
            if role == "user":
                text = place_image(text, image_front, image_sep)
            content = _content_ids(tok, encode, text, n_image_tokens)
        prompt += [tok.im_start, *encode(f"{role}\n"), *content, tok.im_end, *newline]
    prompt += [tok.im_start, *encode("assistant\n")]
    think = [tok.think_start, *encode(EMPTY_THINK), tok.think_end, *encode("\n\n")] if keep_think else []
    answer = [*encode(str(messages[-1].get("content", ""))), tok.im_end, *newline]
    return ChatIds(prompt=prompt, answer=answer, think=think)


def place_image(text: str, front: bool = True, sep: str = "\n") -> str:
    """Released I2T rendering: a user text holding `<image>` -> the text without it (stripped), with one
    `<image>` at its front or back joined by `sep`; text without a placeholder is returned unchanged.
    ("what is <image> this", front, "\\n") -> "<image>\\nwhat is  this"."""
    if IMAGE_PLACEHOLDER not in text:
        return text
    rest = text.replace(IMAGE_PLACEHOLDER, "").strip()
    return f"{IMAGE_PLACEHOLDER}{sep}{rest}" if front else f"{rest}{sep}{IMAGE_PLACEHOLDER}"


def _content_ids(tok: MiniMindOTokens, encode: Callable[[str], list[int]], text: str, n_image: int) -> list[int]:
    pieces = text.split(IMAGE_PLACEHOLDER)
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            ids += [tok.image_pad] * n_image
        if piece:
            ids += encode(piece)
    return ids


# ----------------------------------------------------------------------------------------------- the 9 x L grid
def build_layout(
    tok: MiniMindOTokens,
    prompt: Sequence[int],
    answer: Sequence[int],
    answer_codes: torch.Tensor | None = None,
    ref_codes: torch.Tensor | None = None,
    speaker: bool = False,
    think: Sequence[int] = (),
) -> Layout:
    """prompt (P ids), answer (m ids), answer_codes (N, K) Mimi codes or None (text-only answer, e.g. I2T),
    ref_codes (R, K) reference-voice codes or None, speaker: place the SPEAKER id, think: the kept empty think
    block (between prompt and answer; text targets, released) -> Layout (see module doc). s = P + len(think):
    the audio delay, reference and speaker are anchored after the think block.

    L = max(P + m - 1, P + N + K) so every target has a position. A reference longer than the room before s
    (s, or s - 1 with a speaker) is cut from the left.
    """
    if len(prompt) < 1:
        raise ValueError(f"need a prompt and an answer, got P={len(prompt)}, m={len(answer)}")
    t0 = len(prompt)  # first text target position + 1 (the think block, when kept, is a text target)
    prompt = [*prompt, *think]
    K, s, m = tok.n_codebooks, len(prompt), len(answer)
    if s < 1 or m < 1:
        raise ValueError(f"need a prompt and an answer, got P={s}, m={m}")
    n = 0 if answer_codes is None else int(answer_codes.shape[0])
    length = max(s + m - 1, s + n + K if n else 0)
    # built in numpy (a handful of vectorised writes, not ~40 small tensor ops: this runs once per loaded row)
    grid = np.full((tok.n_rows, length + 1), tok.a_pad, dtype=np.int64)  # (9, L + 1)
    grid[tok.text_row] = tok.pad
    grid[tok.text_row, : s + m] = np.fromiter((*prompt, *answer), dtype=np.int64, count=s + m)
    weights = np.zeros((K, length), dtype=np.float32)
    targets = np.full((tok.n_rows, length), IGNORE, dtype=np.int64)
    targets[tok.text_row, t0 - 1 : s + m - 1] = grid[tok.text_row, t0 : s + m]

    room = s - int(speaker)
    ref = ref_codes[-room:] if ref_codes is not None and room > 0 else None
    r = 0 if ref is None else int(ref.shape[0])
    if r:
        grid[:K, s - r : s] = _checked(tok, ref, "ref_codes").T
    if speaker:
        grid[:K, s - r - 1] = tok.speaker
    if n:
        codes = _checked(tok, answer_codes, "answer_codes")
        lvl = np.arange(K)[:, None]
        # codebook lvl, frame k: grid column s + lvl + 1 + k (= target position + 1); STOP at column s + lvl + 1 + n
        cols = s + 1 + lvl + np.arange(n)[None, :]  # (K, n)
        grid[lvl, cols] = codes.T
        grid[lvl[:, 0], s + 1 + n + lvl[:, 0]] = tok.a_stop
        span = s + lvl + np.arange(n + 1)[None, :]  # (K, n + 1) target positions: the frames and the STOP
        targets[lvl, span] = grid[lvl, span + 1]
        weights[lvl, cols - 1] = 1.0
        weights[lvl[:, 0], s + n + lvl[:, 0]] = tok.stop_weight
    return Layout(inputs=torch.from_numpy(np.ascontiguousarray(grid[:, :length])), targets=torch.from_numpy(targets),
                  weights=torch.from_numpy(weights), start=s)


def _checked(tok: MiniMindOTokens, codes: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    """(N, K) codes with values in [0, codebook_size), as an int64 numpy array."""
    codes = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != tok.n_codebooks:
        raise ValueError(f"{name}: expected (frames, {tok.n_codebooks}) codes, got shape {tuple(codes.shape)}")
    if codes.size:
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= tok.codebook_size:
            raise ValueError(f"{name}: code values in [{lo}, {hi}] outside [0, {tok.codebook_size})")
    return codes.astype(np.int64, copy=False)


def frames_from_flat(flat: Sequence[int], n_codebooks: int = 8, stored_codebooks: int | None = None) -> torch.Tensor:
    """Released flat frame-major codes [f0c0..f0c7, f1c0, ...] -> (N, K) long; a trailing partial frame is
    dropped (spec). `stored_codebooks` (default K) is the per-frame stride when files hold more codebooks."""
    stride = stored_codebooks or n_codebooks
    arr = np.asarray(flat, dtype=np.int64)
    n = arr.size // stride
    return torch.from_numpy(arr[: n * stride].reshape(n, stride)[:, :n_codebooks].copy())


def frames_to_flat(frames: torch.Tensor) -> list[int]:
    """(N, K) codes -> flat frame-major list (the released parquet layout)."""
    return [int(x) for x in torch.as_tensor(frames).reshape(-1).tolist()]


def undelay(audio_rows: torch.Tensor, start: int) -> torch.Tensor:
    """Generated / target audio rows (K, L) aligned as in a grid's INPUTS -> (N, K) frames: codebook l frame k
    sits at input position start + l + k + 1. N = frames for which every codebook is present."""
    K, length = audio_rows.shape
    n = length - start - K
    if n <= 0:
        return audio_rows.new_zeros((0, K))
    return torch.stack([audio_rows[lvl, start + lvl + 1 : start + lvl + 1 + n] for lvl in range(K)], dim=1)


# ------------------------------------------------------------------------------------------------ augmentation
@dataclass(frozen=True)
class Augment:
    """Released training augmentations (spec), all optional; evaluation passes `augment=None`.

    keep_ref: probability to keep the reference codes (released 0.5); system_prompt: probability to add a
    random system prompt from `system_prompts` when the conversation has none (0.2); keep_think: probability
    to keep the empty think block at the start of the answer, as text targets (0.2); scheduled_sampling: fraction of answer input positions (text and
    audio) replaced by random ids (0.05); random_turn: truncate a multi-turn conversation at a random
    assistant turn; waveform / spec_augment: probabilities of question-audio augmentation (see
    `augment_waveform`, `spec_augment`)."""

    keep_ref: float = 0.5
    system_prompt: float = 0.2
    keep_think: float = 0.2
    scheduled_sampling: float = 0.05
    random_turn: bool = True
    waveform: float = 0.0         # probability of gain + noise on a question clip (released rate not in the spec)
    spec_augment: float = 0.0     # probability of time / frequency masks on a clip's features (likewise)
    system_prompts: tuple[str, ...] = field(default=(
        "You are a helpful assistant.",
        "You are a friendly voice assistant. Answer briefly.",
        "You are MiniMind, a small omni model that can listen, see and speak.",
    ))

    def __post_init__(self) -> None:
        for name in ("keep_ref", "system_prompt", "keep_think", "scheduled_sampling", "waveform", "spec_augment"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be a probability in [0, 1], got {getattr(self, name)}")


def pick_turn(messages: Sequence[dict], rng: np.random.Generator | None) -> list[dict]:
    """Conversation up to (and including) its last assistant turn, or a random one when `rng` is given."""
    ends = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not ends:
        raise ValueError("conversation has no assistant turn")
    end = ends[int(rng.integers(len(ends)))] if rng is not None and len(ends) > 1 else ends[-1]
    return list(messages[: end + 1])


def add_system_prompt(messages: list[dict], prompts: Sequence[str], rng: np.random.Generator) -> list[dict]:
    if messages and messages[0].get("role") == "system" or not prompts:
        return messages
    return [{"role": "system", "content": prompts[int(rng.integers(len(prompts)))]}, *messages]


def scheduled_sampling(tok: MiniMindOTokens, inputs: torch.Tensor, start: int, p: float,
                       rng: np.random.Generator) -> torch.Tensor:
    """(9, L) inputs -> copy with a fraction `p` of answer positions (>= start) replaced by random ids. Audio
    (released): WHOLE frames: at a chosen position all K codebook inputs are replaced together, with ids drawn
    from the full audio vocabulary (0..audio_vocab-1, specials included). Text, drawn separately: ordinary text
    ids (above the named specials) where the answer is. Models the model's own mistakes at training time."""
    if p <= 0:
        return inputs.clone()
    out = inputs.detach().cpu().numpy().copy()  # numpy: the same draws in the same order, without per-op tensor overhead
    K, L = tok.n_codebooks, out.shape[1]
    cols = np.flatnonzero(rng.random(L) < p)  # audio frame positions
    cols = cols[cols >= start]
    out[:K, cols] = rng.integers(0, tok.audio_vocab, (K, len(cols)))  # (K, n) whole frames
    hit_t = rng.random(L) < p  # (L,) text positions, a separate draw
    hit_t[:start] = False
    text = out[tok.text_row]
    lo = max(tok.pad, tok.im_start, tok.im_end, tok.image_pad, tok.audio_pad, tok.think_start, tok.think_end) + 1
    sel_t = hit_t & (text != tok.pad) & (text >= lo)
    text[sel_t] = rng.integers(lo, tok.text_vocab, int(sel_t.sum()))
    return torch.from_numpy(out)


def augment_waveform(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 clip -> gain in [-6, +6] dB and white noise at an SNR in [15, 40] dB (a copy)."""
    out = wav * np.float32(10 ** (rng.uniform(-6, 6) / 20))
    power = float(np.mean(out ** 2)) + 1e-10
    noise = rng.standard_normal(out.shape).astype(np.float32) * np.float32(np.sqrt(power / 10 ** (rng.uniform(15, 40) / 10)))
    return np.clip(out + noise, -1.0, 1.0).astype(np.float32)


def spec_augment(feats: torch.Tensor, n_valid: int, rng: np.random.Generator, n_time: int = 2, max_time: float = 0.05,
                 n_freq: int = 2, max_freq: int = 8) -> torch.Tensor:
    """(n_mels, F) features -> copy with `n_time` time masks (each <= max_time of the n_valid frames) and `n_freq`
    frequency masks (each <= max_freq bins) set to the clip's mean (SpecAugment without time warping)."""
    out = feats.clone()
    fill = out[:, :n_valid].mean() if n_valid > 0 else out.mean()
    for _ in range(n_time):
        w = int(rng.integers(0, max(1, int(max_time * n_valid)) + 1))
        t0 = int(rng.integers(0, max(1, n_valid - w + 1)))
        out[:, t0 : t0 + w] = fill
    for _ in range(n_freq):
        w = int(rng.integers(0, max_freq + 1))
        f0 = int(rng.integers(0, max(1, out.shape[0] - w + 1)))
        out[f0 : f0 + w, :] = fill
    return out
