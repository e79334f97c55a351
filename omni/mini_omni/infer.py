"""Mini-Omni inference on dataset examples: prompt building + decoding + detokenisation (used by eval and
callbacks). An example is the dict produced by data.mini_omni.dataset.OmniDataset."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omni.ctc import CTCPrefixScorer, JointCTCPicker
from omni.mini_omni.generate import (
    MiniOmniDecoder, SamplingConfig, collect, frames_until_eoa, iter_batch_parallel,
)
from omni.mini_omni.layout import IMAGE_TOKENS, audio_prompt, image_prompt, image_spans, task_spec, text_prompt
from omni.mini_omni.model import MiniOmni
from omni.mini_omni.stream import StreamEvent, stream_events
from omni.mini_omni.tokens import MiniOmniTokens


@dataclass
class Answer:
    text: str
    text_ids: list[int]
    frames: torch.Tensor | None  # (N, 7) SNAC frames before EOA, or None for text-only tasks


def build_prompt(tok: MiniOmniTokens, example: dict, task: str) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The generation prompt of one dataset example: exactly the first P columns of its training layout.
    -> prompt (8, P), mels (n_mels, F) or None, number of injected audio frames T (0 for text input)."""
    if task_spec(task).audio_in:
        T = int(example["n_audio_frames"])
        return audio_prompt(tok, T, task), example["mels"], T
    return text_prompt(tok, list(example["question_ids"]), task), None, 0


class MiniOmniInference:
    def __init__(self, model: MiniOmni, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.tok = model.tokens

    def prompt(self, example: dict, task: str) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """-> prompt (1, 8, P) on the model's device, mels (1, n_mels, F) or None, injected audio frames T."""
        weight = self.model.head_weight
        prompt, mels, T = build_prompt(self.tok, example, task)
        mels = None if mels is None else mels.unsqueeze(0).to(device=weight.device, dtype=weight.dtype)
        return prompt.unsqueeze(0).to(weight.device), mels, T

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i < self.tok.text_vocab], skip_special_tokens=True).strip()

    def iter_columns(self, example: dict, task: str, sampling: SamplingConfig,
                     batch_parallel: bool = True) -> Iterator[torch.Tensor]:
        """Decoded (1, 8) step columns of one example's answer. A1A2 and Mini-Omni2 image_a1a2 use the spec's
        batch-parallel decoding (speech from the audio-answer prompt, text from the text-answer prompt)."""
        if task_spec(task).image_in:
            return self._iter_image_columns(example, task, sampling, batch_parallel)
        prompt, mels, T = self.prompt(example, task)
        if task == "a1a2" and batch_parallel:
            a1t2, _, _ = self.prompt(example, "a1t2")
            return iter_batch_parallel(self.model, prompt, a1t2, mels, T, sampling)
        decoder = MiniOmniDecoder(self.model)
        if task == "asr" and sampling.ctc_weight > 0:  # the audio is encoded once, for the CTC head and the prompt
            with torch.no_grad():
                features = self.model.encode_audio(mels)
            return decoder.iter_columns(prompt, False, sampling, mels, 1, T, audio_features=features,
                                        text_picker=self.ctc_picker(features, T, sampling.ctc_weight))
        return decoder.iter_columns(prompt, task_spec(task).audio_out, sampling, mels, 1, T)

    @torch.no_grad()
    def ctc_picker(self, features: torch.Tensor, T: int, weight: float) -> JointCTCPicker:
        """Hybrid CTC/attention picker of one utterance's encoder output (1, T_max, D) of T frames: the transcript's
        tokens are chosen by `weight` x the model's CTC head prefix score + (1 - weight) x the text row
        (omni/ctc.py)."""
        if self.model.audio_ctc is None:
            raise ValueError("sampling.ctc_weight > 0 needs a model with a CTC head (trained with "
                             "model.cfg.ctc_weight > 0); this checkpoint has none")
        logp = self.model.audio_ctc(features[0, :T]).float().log_softmax(-1)  # (T, V + 1)
        return JointCTCPicker(CTCPrefixScorer(logp, blank=self.tok.text_vocab), weight, end=self.tok.eot,
                              vocab=self.tok.text_vocab)

    def _iter_image_columns(self, example: dict, task: str, sampling: SamplingConfig,
                            batch_parallel: bool = True) -> Iterator[torch.Tensor]:
        """Mini-Omni2 image prompt (spec "image QA"): vision features at 1..N, encoder frames from N + 2.
        image_a1a2 decodes batch-parallel as the release does: item 0 = the image_a1a2 prompt (speech), item 1 =
        the image_a1t2 prompt of the same image and audio (text)."""
        spec = task_spec(task)
        n_image = self.model.vision_encoder.n_tokens if self.model.cfg.has_vision else IMAGE_TOKENS
        T = int(example["n_audio_frames"]) if spec.audio_in else 0
        weight = self.model.head_weight
        mels = example["mels"].unsqueeze(0).to(device=weight.device, dtype=weight.dtype) if spec.audio_in else None
        prompt = image_prompt(self.tok, T, task, n_image).unsqueeze(0).to(weight.device)
        image_start, audio_start = image_spans(n_image)
        pixels = example["pixels"].unsqueeze(0).to(device=weight.device, dtype=weight.dtype)
        if task == "image_a1a2" and batch_parallel:
            text_prompt_ = image_prompt(self.tok, T, "image_a1t2", n_image).unsqueeze(0).to(weight.device)
            return iter_batch_parallel(self.model, prompt, text_prompt_, mels, T, sampling, audio_start,
                                       image_pixels=pixels, image_start=image_start, image_len=n_image)
        return MiniOmniDecoder(self.model).iter_columns(prompt, spec.audio_out, sampling, mels, audio_start, T,
                                                        image_pixels=pixels, image_start=image_start,
                                                        image_len=n_image)

    @torch.no_grad()
    def answer(self, example: dict, task: str, sampling: SamplingConfig, batch_parallel: bool = True) -> Answer:
        """Generate the whole answer of `task` for one example."""
        audio_out = task_spec(task).audio_out
        gen = collect(self.tok, self.iter_columns(example, task, sampling, batch_parallel), 1, audio_out)
        frames = frames_until_eoa(gen.frames(0, self.tok.n_audio_layers), self.tok.codebook_size) \
            if audio_out else None
        return Answer(text=self.decode_text(gen.text_ids[0]), text_ids=gen.text_ids[0], frames=frames)

    def stream(self, example: dict, task: str, sampling: SamplingConfig,
               decode_audio: Callable[[torch.Tensor], np.ndarray], stride: int = 4,
               batch_parallel: bool = True) -> Iterator[StreamEvent]:
        """(text piece, audio chunk) events of one example's spoken answer as decoding runs (see stream.py).
        decode_audio: (n, 7) SNAC frames -> waveform, e.g. `partial(data.mini_omni.codec.decode_frames, codec)`."""
        columns = self.iter_columns(example, task, sampling, batch_parallel)
        return stream_events(self.tok, columns, self.decode_text, decode_audio, stride)
