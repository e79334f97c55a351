"""Mimi codec (transformers `MimiModel`), first 8 codebooks: 24 kHz audio <-> (N, 8) codes at 12.5 Hz.

Real weights come from a local folder (`MimiModel.from_pretrained(path)`, e.g. a downloaded kyutai/mimi);
without one, `arch` builds the real architecture ("mimi") or a small one ("tiny", same 24 kHz / 1920-sample
frames) with seeded random weights. transformers initialises Mimi codebooks to zero (every code would be 0),
so the random codebooks are drawn from N(0, 1) under the same seed: codes are deterministic and varied, but not
speech. Frames: one frame = 1920 samples (80 ms); a clip of n samples gives ceil(n / 1920) frames.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from transformers import MimiConfig, MimiModel

N_CODEBOOKS = 8
MIMI_TINY: dict = dict(hidden_size=32, num_filters=8, codebook_dim=16, vector_quantization_hidden_dimension=16,
                       upsample_groups=32, num_hidden_layers=1, intermediate_size=64, num_attention_heads=2,
                       num_key_value_heads=2, num_quantizers=8)
MIMI_ARCHS: dict[str, dict] = {"mimi": {}, "tiny": MIMI_TINY}


def load_mimi(path: str | None = None, arch: str = "mimi", seed: int = 0) -> MimiModel:
    """MimiModel in eval mode: local folder `path`, else random weights of `arch` ('mimi' | 'tiny') from `seed`."""
    if path:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Mimi folder not found: {path!r} (hub ids are not fetched)")
        return MimiModel.from_pretrained(path).eval()
    if arch not in MIMI_ARCHS:
        raise ValueError(f"unknown Mimi arch {arch!r}; valid choices: {sorted(MIMI_ARCHS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MimiModel(MimiConfig(**MIMI_ARCHS[arch]))
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name.endswith("codebook.embed_sum"):
                    buf.normal_()
        for module in model.modules():
            if hasattr(module, "_embed"):
                module._embed = None
    if model.config.num_quantizers < N_CODEBOOKS:
        raise ValueError(f"Mimi has {model.config.num_quantizers} codebooks, need {N_CODEBOOKS}")
    return model.eval()


def sample_rate(model: MimiModel) -> int:
    return int(model.config.sampling_rate)


def samples_per_frame(model: MimiModel) -> int:
    """Waveform samples per code frame (1920 at 24 kHz / 12.5 Hz)."""
    return int(round(model.config.sampling_rate / model.config.frame_rate))


@torch.no_grad()
def encode(model: MimiModel, wav: np.ndarray) -> torch.Tensor:
    """(n,) float waveform at the codec rate -> (N, 8) long codes, N = ceil(n / samples_per_frame)."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    step = samples_per_frame(model)
    n = max(1, math.ceil(wav.shape[0] / step))
    padded = np.zeros(n * step, dtype=np.float32)
    padded[: wav.shape[0]] = wav
    codes = model.encode(torch.from_numpy(padded).view(1, 1, -1), num_quantizers=N_CODEBOOKS).audio_codes
    return codes[0, :, :n].t().long()  # (8, N') -> (N, 8)


@torch.no_grad()
def decode(model: MimiModel, frames: torch.Tensor) -> np.ndarray:
    """(N, 8) codes -> (N * samples_per_frame,) float32 waveform. Ids >= codebook size (specials) become 0, as
    the released decoder does."""
    frames = torch.as_tensor(frames, dtype=torch.long)
    frames = torch.where(frames >= model.config.codebook_size, torch.zeros_like(frames), frames)
    wav = model.decode(frames.t().unsqueeze(0)).audio_values
    return wav.reshape(-1)[: frames.shape[0] * samples_per_frame(model)].float().numpy()
