"""Frozen side modules of MiniMind-O behind small specs: the audio encoder and the vision tower.

A spec is plain config (Hydra-friendly) that knows everything the DATA side needs without building a network
(sample rate, mel featurization, encoder frames per clip, image preprocessing, tokens per image) and builds the
frozen network for the MODEL side: real weights from a local folder (`path`), else random weights of the
configured architecture drawn from `seed` (deterministic, so a checkpoint that does not store the frozen
modules rebuilds the same ones from its config).

Audio: `whisper` = transformers WhisperEncoder (+ average pooling of `pool` frames: 50 / 3 = 16.7 frames/s, the
rate of the released SenseVoice-Small encoder; SenseVoice itself is not ported). Vision: `siglip` =
transformers SiglipVisionModel (SigLIP2 base-p32-256 is this architecture: 256 px, 32 px patches, 64 tokens).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

AUDIO_ENCODERS = ("whisper",)
VISION_ENCODERS = ("siglip",)
AUDIO_SR = 16000  # encoder input rate
MEL_HOP = 160     # Whisper: 100 mel frames/s, 2 per encoder frame


def _seeded(seed: int, build):
    """Build a module under a fixed seed without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@dataclass
class AudioEncoderSpec:
    kind: str = "whisper"
    path: str | None = None            # local transformers folder (WhisperModel / WhisperEncoder weights)
    config: dict[str, Any] = field(default_factory=dict)  # WhisperConfig kwargs for random weights
    pool: int = 3                      # encoder frames averaged into one output frame
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in AUDIO_ENCODERS:
            raise ValueError(f"audio_encoder.kind={self.kind!r} is not one of {list(AUDIO_ENCODERS)}"
                             " (SenseVoice-Small is not ported; use a Whisper folder)")
        if self.pool < 1:
            raise ValueError(f"audio_encoder.pool must be >= 1, got {self.pool}")
        self.config = dict(self.config)
        self._hf_config = None

    @property
    def hf_config(self):
        if self._hf_config is None:
            from transformers import WhisperConfig

            self._hf_config = WhisperConfig.from_pretrained(self.path) if self.path else WhisperConfig(**self.config)
        return self._hf_config

    @property
    def out_dim(self) -> int:
        return int(self.hf_config.d_model)

    @property
    def n_mels(self) -> int:
        return int(self.hf_config.num_mel_bins)

    @property
    def max_source_positions(self) -> int:
        return int(self.hf_config.max_source_positions)

    @property
    def window_s(self) -> float:
        """Longest clip the encoder sees (Whisper pads every clip to this window)."""
        return self.max_source_positions * 2 * MEL_HOP / AUDIO_SR

    def frames(self, n_samples: int) -> int:
        """Output frames (after pooling) for a clip of `n_samples` at 16 kHz: `<|audio_pad|>` ids it needs."""
        enc = min(int(n_samples * 1000 // AUDIO_SR) // 20 + 1, self.max_source_positions)
        return math.ceil(enc / self.pool)

    def featurizer(self):
        from transformers import WhisperFeatureExtractor

        n_samples = self.max_source_positions * 2 * MEL_HOP
        return WhisperFeatureExtractor(feature_size=self.n_mels, sampling_rate=AUDIO_SR, hop_length=MEL_HOP,
                                       chunk_length=int(math.ceil(n_samples / AUDIO_SR)))

    def features(self, wav: np.ndarray, featurizer=None) -> torch.Tensor:
        """(n,) float32 16 kHz mono -> (n_mels, F) log-mel of the padded encoder window."""
        fx = featurizer or self.featurizer()
        n = self.max_source_positions * 2 * MEL_HOP
        feats = fx(wav, sampling_rate=AUDIO_SR, return_tensors="np", padding="max_length", max_length=n,
                   truncation=True)["input_features"][0]
        return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))

    def build(self) -> "WhisperAudioEncoder":
        return _frozen(WhisperAudioEncoder(self))


class WhisperAudioEncoder(nn.Module):
    """(B, n_mels, F) log-mel windows -> (B, T, E) frames at 50 / pool frames per second."""

    def __init__(self, spec: AudioEncoderSpec) -> None:
        super().__init__()
        from transformers import WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        self.pool = spec.pool
        if spec.path:
            self.encoder = WhisperModel.from_pretrained(spec.path).get_encoder()
        else:
            self.encoder = _seeded(spec.seed, lambda: WhisperEncoder(spec.hf_config))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_features=mels).last_hidden_state  # (B, T_enc, E)
        if self.pool > 1:
            h = F.avg_pool1d(h.transpose(1, 2), self.pool, self.pool, ceil_mode=True).transpose(1, 2)
        return h


@dataclass
class VisionEncoderSpec:
    kind: str = "siglip"
    path: str | None = None            # local SiglipVisionModel / SiglipModel folder
    config: dict[str, Any] = field(default_factory=dict)  # SiglipVisionConfig kwargs for random weights
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in VISION_ENCODERS:
            raise ValueError(f"vision_encoder.kind={self.kind!r} is not one of {list(VISION_ENCODERS)}")
        self.config = dict(self.config)
        self._hf_config = None

    @property
    def hf_config(self):
        if self._hf_config is None:
            from transformers import SiglipVisionConfig

            self._hf_config = SiglipVisionConfig.from_pretrained(self.path) if self.path \
                else SiglipVisionConfig(**self.config)
        return self._hf_config

    @property
    def out_dim(self) -> int:
        return int(self.hf_config.hidden_size)

    @property
    def n_tokens(self) -> int:
        """`<|image_pad|>` ids per image: one per patch (256 / 32 -> 64 released)."""
        return (int(self.hf_config.image_size) // int(self.hf_config.patch_size)) ** 2

    def processor(self):
        """Pillow SigLIP preprocessing (resize to image_size, rescale, normalise with mean = std = 0.5)."""
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        size = int(self.hf_config.image_size)
        return SiglipImageProcessorPil(size={"height": size, "width": size})

    def pixels(self, data: bytes, processor=None) -> torch.Tensor:
        """Encoded image bytes (png / jpeg / ...) -> (3, S, S) float32 pixel values."""
        from PIL import Image

        image = Image.open(io.BytesIO(data)).convert("RGB")
        proc = processor or self.processor()
        return torch.as_tensor(np.asarray(proc(images=image, return_tensors="np")["pixel_values"][0]),
                               dtype=torch.float32)

    def build(self) -> nn.Module:
        from transformers import SiglipVisionModel

        if self.path:
            model = SiglipVisionModel.from_pretrained(self.path)
        else:
            model = _seeded(self.seed, lambda: SiglipVisionModel(self.hf_config))
        return _frozen(model)
