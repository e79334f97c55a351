"""Mini-Omni's task vocabulary for the batch sampler and its length estimate (the number of layout columns a
(row, task) pair takes), read from light columns only, so the index can bucket and budget without loading rows."""
from __future__ import annotations

from typing import Any

import numpy as np

from data.mini_omni.schema import TASK_REQUIREMENTS

TASK_ORDER: tuple[str, ...] = tuple(TASK_REQUIREMENTS)  # bit i of a task mask = TASK_ORDER[i]
AUDIO_IN = frozenset({"asr", "a1t2", "a1a2", "image_a1t2", "image_a1a2"})
AUDIO_OUT = frozenset({"a1a2", "t1a2", "tts", "image_a1a2"})
IMAGE_IN = frozenset({"image_a1t2", "image_a1a2", "caption"})
N_AUDIO_LAYERS = 7  # SNAC codes per frame; answer length N + N_AUDIO_LAYERS + 1 (layout.answer_grid)


def encoder_frames(duration_s: Any, max_audio_frames: int | None = None) -> Any:
    """Whisper valid encoder frames int(duration_ms / 20) + 1, clamped to `max_audio_frames` (scalar or array)."""
    t = np.floor(np.asarray(duration_s, dtype=np.float64) * 1000.0 / 20.0).astype(np.int64) + 1
    if max_audio_frames is not None:
        t = np.minimum(t, max_audio_frames)
    return t


def estimate_length(
    task: str,
    duration_s: Any,
    n_frames: Any,
    question_chars: Any,
    answer_chars: Any,
    chars_per_token: float,
    max_audio_frames: int | None = None,
    n_image_tokens: int = 50,
) -> Any:
    """Estimated training length L (columns of layout.build_example inputs) for `task`; scalars or equal arrays.

    prompt: audio T + 3 (T = encoder frames), text n + 3, or image n_image_tokens + 5 + T (T = 0 for caption);
    answer: m + 1 for text answers, max(m + 1, N + 8) for
    audio answers (N SNAC frames); L = prompt + answer - 1 (inputs drop the last column). Text token counts are
    ceil(chars / chars_per_token). ASR answers with the transcript (question_text); TTS reads answer_text.
    """
    if task not in TASK_ORDER:
        raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(TASK_ORDER)}")
    if chars_per_token <= 0:
        raise ValueError(f"chars_per_token must be > 0, got {chars_per_token}")

    def toks(chars: Any) -> Any:
        return np.ceil(np.asarray(chars, dtype=np.float64) / chars_per_token).astype(np.int64)

    if task in IMAGE_IN:  # IMAGE, n_image slots, END_IMAGE, INPUT_A, T slots, EOA, task token
        audio_t = encoder_frames(duration_s, max_audio_frames) if task in AUDIO_IN else np.zeros_like(
            np.asarray(duration_s, dtype=np.int64))
        prompt = audio_t + n_image_tokens + 5
    elif task in AUDIO_IN:
        prompt = encoder_frames(duration_s, max_audio_frames) + 3
    else:
        prompt = toks(answer_chars if task == "tts" else question_chars) + 3
    m = toks(question_chars if task == "asr" else answer_chars)
    answer = m + 1
    if task in AUDIO_OUT:
        answer = np.maximum(answer, np.asarray(n_frames, dtype=np.int64) + N_AUDIO_LAYERS + 1)
    total = prompt + answer - 1
    return int(total) if np.ndim(total) == 0 else total
