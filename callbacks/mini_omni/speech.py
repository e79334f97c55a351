"""SpeechSample producer for the Mini-Omni family (wraps `MiniOmniInference`, which stays unchanged).

Speech is generated exactly as a user hears it: `MiniOmniInference.stream` (A1A2 batch-parallel by default, T1A2)
decoded by SNAC `stride` frames at a time. Mini-Omni speaks in ONE voice, the one its answer codes were made
with, so the reference voice of every sample is the row's own target answer decoded by the same codec, labelled
`voice` and seen in training."""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np

from callbacks.speech.sample import SpeechSample

AUDIO_OUT_TASKS = ("a1a2", "t1a2")


class MiniOmniSpeech:
    def __init__(self, infer: Any, codec_path: str | None = None, codec_arch: str = "snac_24khz",
                 codec_seed: int = 0, stride: int = 4, batch_parallel: bool = True, voice: str = "assistant",
                 codec: Any = None) -> None:
        self.infer = infer
        self.codec_path, self.codec_arch, self.codec_seed = codec_path, codec_arch, codec_seed
        self.stride = stride
        self.batch_parallel = batch_parallel
        self.voice = voice
        self._codec = codec

    @property
    def codec(self):
        if self._codec is None:
            from data.mini_omni.codec import load_codec

            self._codec = load_codec(self.codec_path, arch=self.codec_arch, seed=self.codec_seed)
        return self._codec

    def release(self) -> None:
        self._codec = None

    def speech_samples(self, examples: Sequence[dict], task: str, sampling: Any) -> Iterator[SpeechSample]:
        if task not in AUDIO_OUT_TASKS:
            raise ValueError(f"Mini-Omni speaks in tasks {list(AUDIO_OUT_TASKS)}, not {task!r}")
        if isinstance(sampling, dict):
            from omni.mini_omni.generate import SamplingConfig

            sampling = SamplingConfig(**sampling)
        for example in examples:
            yield self.sample(example, task, sampling)

    def sample(self, example: dict, task: str, sampling: Any) -> SpeechSample:
        from data.mini_omni.codec import codec_sample_rate, decode_frames

        codec = self.codec
        sr = codec_sample_rate(codec)
        text, chunks, n_frames, first = "", [], 0, None
        t0 = time.perf_counter()
        for event in self.infer.stream(example, task, sampling, partial(decode_frames, codec), self.stride,
                                       self.batch_parallel):
            text += event.text
            if event.audio is not None:
                first = first if first is not None else time.perf_counter() - t0
                chunks.append(event.audio)
                n_frames += int(event.frames.shape[0])
        seconds = time.perf_counter() - t0
        codes = example.get("answer_codes")
        reference = decode_frames(codec, codes) if codes is not None and len(codes) else None
        return SpeechSample(
            id=str(example["id"]), task=task, prompt=example.get("question_text") or "", text=text.strip(),
            reference_text=example.get("answer_text") or "",
            audio=np.concatenate(chunks) if chunks else None, sample_rate=sr,
            reference_audio=reference, reference_sample_rate=sr if reference is not None else None,
            speaker=self.voice, seen=True,
            extra={"input_speaker": example.get("speaker"), "n_frames": n_frames, "first_chunk_s": first,
                   "generate_s": round(seconds, 3)},
        )
