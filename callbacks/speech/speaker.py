"""Speaker encoders for speaker similarity: `embed(wav, sr) -> (d,) unit vector`; similarity = cosine.

Default: resemblyzer's GE2E encoder (weights inside the package, offline). A local Hugging Face x-vector folder
(WavLMForXVector, Wav2Vec2ForXVector, UniSpeechSatForXVector, ... saved with its feature extractor) replaces it."""
from __future__ import annotations

from typing import Any

import numpy as np

from callbacks.speech.base import LazyScorer, architecture, prepare_wav, read_model_config

SAMPLE_RATE = 16000


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(_unit(a), _unit(b)))


class ResemblyzerEncoder(LazyScorer):
    name = "resemblyzer"

    def _load(self) -> Any:
        import warnings

        with warnings.catch_warnings():  # its webrtcvad dependency imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            from resemblyzer import VoiceEncoder
        return VoiceEncoder("cpu", verbose=False)

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        from resemblyzer import preprocess_wav

        audio = preprocess_wav(prepare_wav(wav, sr, SAMPLE_RATE), source_sr=SAMPLE_RATE)
        if audio.size == 0:  # all silence after its VAD trimming: embed the raw clip instead
            audio = prepare_wav(wav, sr, SAMPLE_RATE)
        return _unit(self.model.embed_utterance(audio))


class HFXVectorEncoder(LazyScorer):
    def __init__(self, path: str) -> None:
        super().__init__()
        arch = architecture(read_model_config(path, "speaker"))
        if not arch.endswith("ForXVector"):
            raise ValueError(f"speaker: {path!r} holds {arch!r}; supported: a *ForXVector model "
                             f"(WavLMForXVector, Wav2Vec2ForXVector, ...)")
        self.path = path
        self.name = f"xvector:{path}"

    def _load(self) -> Any:
        from transformers import AutoFeatureExtractor, AutoModelForAudioXVector

        return AutoModelForAudioXVector.from_pretrained(self.path).eval(), \
            AutoFeatureExtractor.from_pretrained(self.path)

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        import torch

        model, extractor = self.model
        inputs = extractor(prepare_wav(wav, sr, SAMPLE_RATE), sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with torch.no_grad():
            out = model(inputs.input_values.to(model.dtype))
        return _unit(out.embeddings[0].float().numpy())


def build_speaker_encoder(path: str | None = None) -> ResemblyzerEncoder | HFXVectorEncoder:
    """None -> resemblyzer GE2E; a local folder -> its x-vector model."""
    return HFXVectorEncoder(path) if path else ResemblyzerEncoder()


__all__ = ["ResemblyzerEncoder", "HFXVectorEncoder", "build_speaker_encoder", "cosine"]
