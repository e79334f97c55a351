"""Chunk-wise audio encoding: the Qwen2.5-Omni audio tower called one 0.4 s chunk at a time.

Framing (spec): 16 kHz mono, zero-padded to a multiple of 6400 samples; 128-bin log-mel at 100 frames/s -> 40 mel
frames per chunk; the tower gets one "audio" per chunk (feature_lens 40, 40, ...), so its attention never
crosses a chunk; conv stride 2 + pooling 2 -> 10 frames per chunk (25 Hz). A trailing partial chunk is dropped.

The log-mel is computed per chunk too (Whisper's recipe, each 6400-sample chunk on its own: its reflect padding
and its max-8 dB clamp see only that chunk), so a chunk's features depend on nothing but its own samples, which
is what a live session can compute. Dims legend: C chunks, M mel bins, E tower output width, D LLM width.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniAudioEncoderConfig
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 6400          # 0.4 s
HOP = 160                     # 10 ms mel hop -> 100 frames / s
MELS_PER_CHUNK = CHUNK_SAMPLES // HOP  # 40
FRAMES_PER_CHUNK = 10         # encoder frames per chunk (40 ms each)
CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE


def n_chunks(n_samples: int) -> int:
    """Chunks of a clip of `n_samples` after zero-padding to a multiple of CHUNK_SAMPLES."""
    return -(-int(n_samples) // CHUNK_SAMPLES)


def pad_to_chunks(wav: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (C * 6400,) zero-padded at the end."""
    wav = np.asarray(wav, dtype=np.float32)
    short = n_chunks(len(wav)) * CHUNK_SAMPLES - len(wav)
    return np.pad(wav, (0, short)) if short else wav


class ChunkMel:
    """Per-chunk 128-bin Whisper log-mel: (C * 6400,) samples -> (C, M, 40) float32."""

    def __init__(self, n_mels: int = 128) -> None:
        from transformers import WhisperFeatureExtractor

        self.n_mels = int(n_mels)
        self.extractor = WhisperFeatureExtractor(feature_size=self.n_mels, sampling_rate=SAMPLE_RATE,
                                                 hop_length=HOP, chunk_length=1, n_samples=CHUNK_SAMPLES)

    def __call__(self, wav: np.ndarray) -> torch.Tensor:
        wav = np.asarray(wav, dtype=np.float32)
        if len(wav) % CHUNK_SAMPLES:
            raise ValueError(f"{len(wav)} samples is not a multiple of {CHUNK_SAMPLES}; use pad_to_chunks first")
        if len(wav) == 0:
            return torch.zeros(0, self.n_mels, MELS_PER_CHUNK)
        chunks = list(wav.reshape(-1, CHUNK_SAMPLES))
        feats = self.extractor(chunks, sampling_rate=SAMPLE_RATE, return_tensors="np", padding="max_length",
                               max_length=CHUNK_SAMPLES, truncation=True)["input_features"]  # (C, M, 40)
        return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))


def chunk_mels(mels: torch.Tensor) -> torch.Tensor:
    """(M, F) continuous log-mel -> (C, M, 40) chunks; a trailing partial chunk (< 40 frames) is dropped."""
    c = mels.shape[-1] // MELS_PER_CHUNK
    return mels[:, : c * MELS_PER_CHUNK].reshape(mels.shape[0], c, MELS_PER_CHUNK).transpose(0, 1).contiguous()


def audio_config(raw: Mapping[str, Any] | None = None, path: str | None = None) -> Qwen2_5OmniAudioEncoderConfig:
    """Tower config from kwargs, or from a file/folder holding either a flat audio config or the released nested
    one (`thinker_config.audio_config`, as in Qwen2.5-Omni's config.json / Mini-Omni3's qwen25OmniConfig/)."""
    if path:
        p = Path(path)
        p = p / "config.json" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"audio encoder config not found: {p}")
        data = json.loads(p.read_text(encoding="utf-8"))
        node = data.get("thinker_config", {}).get("audio_config") if "thinker_config" in data else \
            data.get("audio_config", data)
        if not isinstance(node, dict):
            raise ValueError(f"{p}: no audio config (expected thinker_config.audio_config or a flat config)")
        raw = {**node, **dict(raw or {})}
    raw = {k: v for k, v in dict(raw or {}).items() if k not in ("model_type", "architectures", "transformers_version")}
    return Qwen2_5OmniAudioEncoderConfig(**raw)


class ChunkwiseAudioEncoder(nn.Module):
    """Qwen2_5OmniAudioEncoder over (C, M, 40) chunks, each its own "audio" -> (C, 10, E).

    `tower` holds the released weights (names as in Qwen2.5-Omni's audio tower; its `proj` is the trained
    audio->LLM projection, so E is the LLM width in the release)."""

    def __init__(self, config: Qwen2_5OmniAudioEncoderConfig) -> None:
        super().__init__()
        if config.n_window * 2 < MELS_PER_CHUNK:
            raise ValueError(f"audio config n_window={config.n_window}: the tower would split a 40-frame chunk")
        self.tower = Qwen2_5OmniAudioEncoder(config)

    @property
    def config(self) -> Qwen2_5OmniAudioEncoderConfig:
        return self.tower.config

    @property
    def output_dim(self) -> int:
        return int(self.tower.config.output_dim)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """mels (C, M, 40) -> (C, 10, E)."""
        C, M, F = mels.shape
        if F != MELS_PER_CHUNK:
            raise ValueError(f"expected chunks of {MELS_PER_CHUNK} mel frames, got {F}")
        if C == 0:
            return mels.new_zeros(0, FRAMES_PER_CHUNK, self.output_dim)
        feats = mels.permute(1, 0, 2).reshape(M, C * F)  # (M, C*40): chunk c at frames [40c, 40c+40)
        lens = torch.full((C,), F, dtype=torch.long, device=mels.device)
        out = self.tower(input_features=feats.to(self.tower.conv1.weight.dtype), feature_lens=lens)
        return out.last_hidden_state.view(C, FRAMES_PER_CHUNK, -1)


def load_tower_weights(encoder: ChunkwiseAudioEncoder, path: str | Path) -> None:
    """Load a released encoder `.pth` (weights only, never pickled code) into `encoder.tower`. Keys may carry a
    prefix (`audio_tower.`, `thinker.audio_tower.`, `module.`); anything that does not fit fails listing it."""
    from omni.mini_omni.convert import _torch_load_safe

    state = _torch_load_safe(Path(path))
    for prefix in ("thinker.audio_tower.", "audio_tower.", "audio_encoder.tower.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    ours = encoder.tower.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    wrong = {k: (tuple(state[k].shape), tuple(ours[k].shape)) for k in set(ours) & set(state)
             if tuple(state[k].shape) != tuple(ours[k].shape)}
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not fit the audio tower: missing={missing[:8]} unexpected={unexpected[:8]} "
                         f"wrong_shape(file, model)={wrong}")
    encoder.tower.load_state_dict(state)


def encode_wav(encoder: ChunkwiseAudioEncoder, mel: ChunkMel, wav: np.ndarray) -> torch.Tensor:
    """(n,) 16 kHz samples -> (C, 10, E) encoder frames (zero-padded to whole chunks), on the encoder's device."""
    mels = mel(pad_to_chunks(wav))
    p = next(encoder.parameters())
    with torch.no_grad():
        return encoder(mels.to(p.device))
