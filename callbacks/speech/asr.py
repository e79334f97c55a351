"""Speech recognisers for intelligibility: `transcribe(wav, sr) -> text`.

Default: pocketsphinx (English acoustic + language model inside its wheel, fully offline; coarse but real).
A local Hugging Face folder replaces it: WhisperForConditionalGeneration, or any *ForCTC model (Wav2Vec2, HuBERT,
WavLM, ...) saved with its processor."""
from __future__ import annotations

from typing import Any

import numpy as np

from callbacks.speech.base import LazyScorer, architecture, prepare_wav, read_model_config

SAMPLE_RATE = 16000


class PocketSphinxASR(LazyScorer):
    name = "pocketsphinx"

    def _load(self) -> Any:
        from pocketsphinx import Decoder

        return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        pcm = (prepare_wav(wav, sr, SAMPLE_RATE) * 32767.0).astype(np.int16)
        if pcm.size == 0:
            return ""
        decoder = self.model
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""


class HFASR(LazyScorer):
    """A local Whisper (seq2seq generate) or CTC (argmax + processor decode) folder."""

    def __init__(self, path: str, language: str | None = None, max_new_tokens: int = 128) -> None:
        super().__init__()
        config = read_model_config(path, "asr")
        arch = architecture(config)
        if arch == "WhisperForConditionalGeneration":
            self.kind = "whisper"
        elif arch.endswith("ForCTC"):
            self.kind = "ctc"
        else:
            raise ValueError(f"asr: {path!r} holds {arch or config.get('model_type')!r}; supported: "
                             f"WhisperForConditionalGeneration or a *ForCTC model (Wav2Vec2, HuBERT, ...)")
        self.path, self.language, self.max_new_tokens = path, language, max_new_tokens
        self.name = f"{self.kind}:{path}"

    def _load(self) -> Any:
        from transformers import AutoModelForCTC, AutoProcessor, WhisperForConditionalGeneration

        cls = WhisperForConditionalGeneration if self.kind == "whisper" else AutoModelForCTC
        return cls.from_pretrained(self.path).eval(), AutoProcessor.from_pretrained(self.path)

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        import torch

        audio = prepare_wav(wav, sr, SAMPLE_RATE)
        if audio.size == 0:
            return ""
        model, processor = self.model
        with torch.no_grad():
            if self.kind == "whisper":
                feats = processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
                kw = {"language": self.language, "task": "transcribe"} if self.language else {}
                ids = model.generate(feats.to(model.dtype), max_new_tokens=self.max_new_tokens, **kw)
                return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
            inputs = processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            logits = model(inputs.input_values.to(model.dtype)).logits
            return processor.batch_decode(logits.argmax(dim=-1), skip_special_tokens=True)[0].strip()


def build_asr(path: str | None = None, **kwargs: Any) -> PocketSphinxASR | HFASR:
    """None -> pocketsphinx; a local folder -> its Whisper / CTC model (kwargs: language, max_new_tokens)."""
    return HFASR(path, **kwargs) if path else PocketSphinxASR()
