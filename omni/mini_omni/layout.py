"""Mini-Omni sequence layouts: pure functions from token lists to (8, L) id grids.

Legend: rows 0..6 = SNAC audio layers (LOCAL ids), row 7 = text (global text ids); L = sequence length,
T = audio-encoder frames, n = question text tokens, m = answer text tokens, N = answer SNAC frames.

A training sequence is `prompt ++ answer` where the answer grid is delayed MusicGen-style: at answer step k the
text row holds answer token k and audio layer i holds frame k - i - 1 (spec: "layer i runs i+1 steps behind").
Inputs are the grid without its last column, targets are the grid shifted left by one, with IGNORE wherever the
spec says no loss (prompt, text padding after EOT, rows the task does not train). For audio-output tasks every
answer step of every audio layer is a target, its PAD_A fill before the layer starts (steps k <= i) and its PAD_A
padding after its EOA included: the released decoding feeds back whatever the model emits there (spec, "Facts
pinned ... 2026-12"), so the model must learn to emit PAD_A by itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from omni.mini_omni.tokens import IGNORE, MiniOmniTokens


@dataclass(frozen=True)
class TaskSpec:
    audio_in: bool        # question is audio (encoder features injected) rather than text tokens
    text_task_token: str  # attribute of MiniOmniTokens for the text row's last prompt token
    audio_out: bool       # the answer carries SNAC frames (audio rows answer, A-task token ANSWER_A)
    text_loss: bool
    audio_loss: bool
    image_in: bool = False  # Mini-Omni2: an image (vision-adapter features) precedes the question


IMAGE_TOKENS = 50  # CLIP ViT-B/32 at 224 px: CLS + 7 x 7 patches (vision.n_image_tokens for other towers)


TASKS: dict[str, TaskSpec] = {
    "asr": TaskSpec(audio_in=True, text_task_token="asr", audio_out=False, text_loss=True, audio_loss=False),
    "a1t2": TaskSpec(audio_in=True, text_task_token="answer_t", audio_out=False, text_loss=True, audio_loss=False),
    "a1a2": TaskSpec(audio_in=True, text_task_token="answer_t", audio_out=True, text_loss=True, audio_loss=True),
    "t1t2": TaskSpec(audio_in=False, text_task_token="answer_t", audio_out=False, text_loss=True, audio_loss=False),
    "t1a2": TaskSpec(audio_in=False, text_task_token="answer_t", audio_out=True, text_loss=True, audio_loss=True),
    # TTS: no released prompt builder; trained as T1A2 whose answer text repeats the input, audio loss only.
    "tts": TaskSpec(audio_in=False, text_task_token="answer_t", audio_out=True, text_loss=False, audio_loss=True),
    # Mini-Omni2 image QA (spoken question about an image) and image-text pairs (caption: the image layout with
    # no question audio, T = 0).
    "image_a1t2": TaskSpec(audio_in=True, text_task_token="answer_t", audio_out=False, text_loss=True,
                           audio_loss=False, image_in=True),
    "image_a1a2": TaskSpec(audio_in=True, text_task_token="answer_t", audio_out=True, text_loss=True,
                           audio_loss=True, image_in=True),
    "caption": TaskSpec(audio_in=False, text_task_token="answer_t", audio_out=False, text_loss=True,
                        audio_loss=False, image_in=True),
}


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown Mini-Omni task {task!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[task]


@dataclass
class Layout:
    """One example laid out. inputs/targets: (8, L) long; audio_span: positions [start, start+T) that receive
    encoder features on the audio rows (T=0 for text-input tasks); prompt_len: P, positions before the answer."""

    inputs: torch.Tensor
    targets: torch.Tensor
    audio_start: int
    audio_len: int
    prompt_len: int
    image_start: int = 0
    image_len: int = 0


def _rows(tok: MiniOmniTokens, audio: list[int], text: list[int]) -> torch.Tensor:
    """(8, len) grid with the same `audio` list on all audio rows and `text` on the text row."""
    assert len(audio) == len(text)
    return torch.tensor([audio] * tok.n_audio_layers + [text], dtype=torch.long)


def audio_prompt(tok: MiniOmniTokens, n_frames: int, task: str) -> torch.Tensor:
    """(8, T+3): INPUT, T placeholder slots, EOA/EOT, task token (spec 'Audio input' table)."""
    spec = task_spec(task)
    if not spec.audio_in or spec.image_in:
        raise ValueError(f"task {task!r} does not take the audio-only prompt")
    a_task = tok.answer_a if spec.audio_out else tok.pad_a
    audio = [tok.input_a] + [tok.pad_a] * n_frames + [tok.eoa, a_task]
    text = [tok.input_t] + [tok.pad_t] * n_frames + [tok.eot, getattr(tok, spec.text_task_token)]
    return _rows(tok, audio, text)


def text_prompt(tok: MiniOmniTokens, text_ids: list[int], task: str) -> torch.Tensor:
    """(8, n+3): text row INPUT_T, tokens, EOT, ANSWER_T; audio rows PAD_A ... then ANSWER_A or PAD_A."""
    spec = task_spec(task)
    if spec.audio_in or spec.image_in:
        raise ValueError(f"task {task!r} does not take the text prompt")
    n = len(text_ids)
    audio = [tok.pad_a] * (n + 2) + [tok.answer_a if spec.audio_out else tok.pad_a]
    text = [tok.input_t] + list(text_ids) + [tok.eot, getattr(tok, spec.text_task_token)]
    return _rows(tok, audio, text)


def image_prompt(tok: MiniOmniTokens, n_frames: int, task: str, n_image: int = IMAGE_TOKENS) -> torch.Tensor:
    """(8, n_image + 5 + T), spec "Mini-Omni2 image QA" (55 + T for CLIP's 50 tokens): audio rows IMAGE,
    PAD_A x n_image, END_IMAGE, INPUT_A, PAD_A x T, EOA, ANSWER_A (audio answer) or PAD_A; text row
    PAD_T x (n_image + 4 + T) then ANSWER_T. Image features go to 1..n_image, encoder frames to
    n_image + 2 .. n_image + 1 + T (`image_spans`)."""
    spec = task_spec(task)
    if not spec.image_in:
        raise ValueError(f"task {task!r} takes no image")
    a_task = tok.answer_a if spec.audio_out else tok.pad_a
    audio = [tok.image] + [tok.pad_a] * n_image + [tok.end_image, tok.input_a] + [tok.pad_a] * n_frames \
        + [tok.eoa, a_task]
    text = [tok.pad_t] * (n_image + 4 + n_frames) + [getattr(tok, spec.text_task_token)]
    return _rows(tok, audio, text)


def image_spans(n_image: int = IMAGE_TOKENS) -> tuple[int, int]:
    """(image_start, audio_start) of the image layout: the released code injects vision features at
    1..n_image and Whisper features from n_image + 2 (52 for CLIP), i.e. from the INPUT_A slot on."""
    return 1, n_image + 2


def answer_grid(
    tok: MiniOmniTokens, text_ids: list[int], codes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Delayed answer grid (8, K) and its "is a real target" mask (8, K).

    codes: (N, 7) local SNAC ids in spec stream order, or None for a text-only answer (audio rows PAD_A, no target).
    Text row: tokens, EOT, then PAD_T (not a target: the released decoder forces PAD_T after EOT). Audio layer i:
    PAD_A fill for steps 0..i, frames 0..N-1, EOA, then PAD_A up to K - 1, ALL targets (the released decoder feeds
    back what the model emits in the fill and after EOA, it forces nothing). K = max(m + 1, N + n_layers + 1).
    """
    m = len(text_ids)
    n_layers = tok.n_audio_layers
    n_frames = 0 if codes is None else int(codes.shape[0])
    if codes is not None and (codes.ndim != 2 or codes.shape[1] != n_layers):
        raise ValueError(f"answer codes must be (N, {n_layers}), got {tuple(codes.shape)}")
    k_len = m + 1 if codes is None else max(m + 1, n_frames + n_layers + 1)
    grid = torch.full((tok.n_rows, k_len), tok.pad_a, dtype=torch.long)
    real = torch.zeros((tok.n_rows, k_len), dtype=torch.bool)
    grid[tok.text_row] = tok.pad_t
    grid[tok.text_row, :m] = torch.tensor(list(text_ids), dtype=torch.long)
    grid[tok.text_row, m] = tok.eot
    real[tok.text_row, : m + 1] = True
    if codes is not None:
        for i in range(n_layers):
            grid[i, i + 1 : i + 1 + n_frames] = codes[:, i]
            grid[i, i + 1 + n_frames] = tok.eoa
        real[: n_layers] = True  # fill (PAD_A), frames, EOA and the PAD_A after it
    return grid, real


def build_example(
    tok: MiniOmniTokens,
    task: str,
    *,
    answer_ids: list[int],
    question_ids: list[int] | None = None,
    n_audio_frames: int = 0,
    answer_codes: torch.Tensor | None = None,
    n_image_tokens: int = IMAGE_TOKENS,
) -> Layout:
    """Full training layout for one example of `task` (see module docstring)."""
    spec = task_spec(task)
    image_start = audio_start = 0
    if spec.image_in:
        if spec.audio_in and n_audio_frames <= 0:
            raise ValueError(f"task {task!r} needs audio frames, got {n_audio_frames}")
        prompt = image_prompt(tok, n_audio_frames if spec.audio_in else 0, task, n_image_tokens)
        image_start, audio_start = image_spans(n_image_tokens)
    elif spec.audio_in:
        if n_audio_frames <= 0:
            raise ValueError(f"task {task!r} needs audio frames, got {n_audio_frames}")
        prompt = audio_prompt(tok, n_audio_frames, task)
        audio_start = 1
    else:
        if not question_ids:
            raise ValueError(f"task {task!r} needs question text tokens")
        prompt = text_prompt(tok, question_ids, task)
    if spec.audio_out and answer_codes is None:
        raise ValueError(f"task {task!r} needs answer codes")
    grid, real = answer_grid(tok, answer_ids, answer_codes if spec.audio_out else None)
    full = torch.cat([prompt, grid], dim=1)  # (8, P + K)
    p = prompt.shape[1]
    targets = torch.full_like(full, IGNORE)
    # target at position j is the token at j + 1; answer column k sits at p + k, scored from p + k - 1
    keep = real.clone()
    if not spec.text_loss:
        keep[tok.text_row] = False
    if not spec.audio_loss:
        keep[: tok.n_audio_layers] = False
    targets[:, p - 1 : p - 1 + grid.shape[1]] = torch.where(keep, grid, torch.full_like(grid, IGNORE))
    return Layout(
        inputs=full[:, :-1],
        targets=targets[:, :-1],
        audio_start=audio_start if spec.audio_in else 0,
        audio_len=n_audio_frames if spec.audio_in else 0,
        prompt_len=p,
        image_start=image_start,
        image_len=n_image_tokens if spec.image_in else 0,
    )


def snac_to_frames(l0: torch.Tensor, l1: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """SNAC levels (N,), (2N,), (4N,) -> (N, 7) frames in spec stream order
    [L0[t], L1[2t], L2[4t], L2[4t+1], L1[2t+1], L2[4t+2], L2[4t+3]]."""
    n = l0.shape[0]
    if l1.shape[0] != 2 * n or l2.shape[0] != 4 * n:
        raise ValueError(f"SNAC level lengths must be N, 2N, 4N; got {l0.shape[0]}, {l1.shape[0]}, {l2.shape[0]}")
    l1 = l1.view(n, 2)
    l2 = l2.view(n, 4)
    return torch.stack([l0, l1[:, 0], l2[:, 0], l2[:, 1], l1[:, 1], l2[:, 2], l2[:, 3]], dim=1)


def frames_to_snac(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `snac_to_frames`: (N, 7) -> levels (N,), (2N,), (4N,)."""
    if frames.ndim != 2 or frames.shape[1] != 7:
        raise ValueError(f"frames must be (N, 7), got {tuple(frames.shape)}")
    l0 = frames[:, 0]
    l1 = frames[:, [1, 4]].reshape(-1)
    l2 = frames[:, [2, 3, 5, 6]].reshape(-1)
    return l0, l1, l2


def undelay(layers: list[list[int]], n_layers: int = 7) -> torch.Tensor:
    """Generated per-layer streams (layer i starts i+1 steps late) -> (N, 7) frames; drops each layer's fill."""
    shifted = [layers[i][i + 1 :] for i in range(n_layers)]
    n = min(len(s) for s in shifted)
    return torch.tensor([[shifted[i][t] for i in range(n_layers)] for t in range(n)], dtype=torch.long)
