"""SpeechSample producer for the MiniMind-O family (wraps `omni.minimind_o.infer.MiniMindOInference`).

Speech is generated as a user hears it: Thinker text + Talker Mimi frames from `playback.stream` (KV-cached
decoding, `generate.decode_steps`), decoded incrementally by `MimiStreamDecoder` `stride` frames at a time.
The codec is a local Mimi folder (`codec_path`), else a seeded random Mimi of `codec_arch` ('mimi': the
architecture and seed the bundled sample's codes were made with; 'tiny': a small one with the same 24 kHz /
1920-sample frames).

MiniMind-O clones voices: the target voice of a row is its reference (`ref_audios` codes / `spk_emb`), labelled
by `data.minimind_o.datamodule.voice_id` (`default` without conditioning) and seen when the train split has it
(the example's `voice_seen`). Its reference audio for speaker similarity is the row's own target answer (the
answer codes of its layout, in that voice at natural speed) decoded by the same codec."""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from callbacks.speech.sample import SpeechSample


def answer_codes(example: dict, tokens: Any) -> torch.Tensor:
    """(N, 8) target answer frames of an example's layout (its delayed codebook rows un-delayed, cut at STOP)."""
    from omni.minimind_o.layout import undelay

    lay = example["layout"]
    frames = undelay(lay.inputs[: tokens.n_codebooks], lay.start)
    special = (frames >= tokens.codebook_size).any(dim=1)
    return frames[: int(special.float().argmax()) if bool(special.any()) else frames.shape[0]]


class MiniMindOSpeech:
    def __init__(self, infer: Any, codec_path: str | None = None, codec_arch: str = "mimi", codec_seed: int = 0,
                 stride: int = 4, batch_parallel: bool = True, mimi: Any = None) -> None:
        from omni.minimind_o.codec import MIMI_ARCHS

        if not codec_path and mimi is None and codec_arch not in MIMI_ARCHS:
            raise ValueError(f"MiniMind-O speaks through Mimi: codec.arch={codec_arch!r} is not a Mimi "
                             f"architecture; valid: {sorted(MIMI_ARCHS)} (or codec.path=<local Mimi folder>)")
        if stride <= 0:
            raise ValueError(f"stride (frames per streamed chunk) must be positive, got {stride}")
        self.infer = infer
        self.codec_path, self.codec_arch, self.codec_seed = codec_path, codec_arch, codec_seed
        self.stride = int(stride)
        self.batch_parallel = batch_parallel  # Mini-Omni's option; MiniMind-O has one decoding path
        self._mimi = mimi

    @property
    def mimi(self):
        if self._mimi is None:
            from omni.minimind_o.codec import load_mimi

            self._mimi = load_mimi(self.codec_path, arch=self.codec_arch, seed=self.codec_seed)
        return self._mimi

    def release(self) -> None:
        self._mimi = None

    def speech_samples(self, examples: Sequence[dict], task: str, sampling: Any) -> Iterator[SpeechSample]:
        if not self.infer.speaks(task):
            speaking = sorted(t for t, s in self.infer.TASKS.items() if s)
            raise ValueError(f"MiniMind-O speaks in tasks {speaking}, not {task!r}")
        sampling = self.infer.sampling_config(sampling, task)
        for example in examples:
            yield self.sample(example, task, sampling)

    def sample(self, example: dict, task: str, sampling: Any) -> SpeechSample:
        from omni.minimind_o.codec import decode, sample_rate

        mimi = self.mimi
        ids, chunks, n_frames, first = [], [], 0, None
        t0 = time.perf_counter()
        for event in self.infer.stream(example, task, sampling, mimi=mimi, chunk_frames=self.stride):
            ids += event.text_ids
            if event.audio is not None and event.audio.size:
                first = first if first is not None else time.perf_counter() - t0
                chunks.append(event.audio)
                n_frames += int(event.frames.shape[0])
        seconds = time.perf_counter() - t0
        codes = answer_codes(example, self.infer.tok)
        reference = decode(mimi, codes) if codes.shape[0] else None
        sr = sample_rate(mimi)
        return SpeechSample(
            id=str(example["id"]), task=task, prompt=example.get("question_text") or "",
            text=self.infer.decode_text(ids), reference_text=example.get("answer_text") or "",
            audio=np.concatenate(chunks) if chunks else None, sample_rate=sr,
            reference_audio=reference, reference_sample_rate=sr if reference is not None else None,
            speaker=example.get("voice"), seen=example.get("voice_seen"),
            extra={"n_frames": n_frames, "first_chunk_s": first, "generate_s": round(seconds, 3)},
        )
