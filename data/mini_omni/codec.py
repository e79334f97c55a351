"""SNAC codec access through the `snac` package (never re-implemented here).

Frames: one SNAC coarse step t = 7 codes in the spec's stream order
[L0[t], L1[2t], L2[4t], L2[4t+1], L1[2t+1], L2[4t+2], L2[4t+3]]; conversion via omni/mini_omni/layout.py.
With the 24 kHz architecture (and `tiny`, which keeps the same rates) one frame covers 2048 samples (~85 ms).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
from snac import SNAC

from omni.mini_omni.layout import frames_to_snac, snac_to_frames

SNAC_24KHZ: dict = dict(
    sampling_rate=24000,
    encoder_dim=48,
    encoder_rates=[2, 4, 8, 8],
    decoder_dim=1024,
    decoder_rates=[8, 8, 4, 2],
    attn_window_size=None,
    codebook_size=4096,
    codebook_dim=8,
    vq_strides=[4, 2, 1],
    noise=True,
    depthwise=True,
)

# Same rates (hop 512, 2048 samples per frame at 24 kHz) and code range as SNAC_24KHZ, ~1000x fewer weights:
# encoder 8 -> latent 128 channels, decoder 64 -> 4 channels. For fast tests only.
SNAC_TINY: dict = {**SNAC_24KHZ, "encoder_dim": 8, "decoder_dim": 64}

CODEC_ARCHS: dict[str, dict] = {"snac_24khz": SNAC_24KHZ, "tiny": SNAC_TINY}
DECODE_SEED = 0


def _load_local(path: str) -> SNAC:
    """Build SNAC from a local folder holding config.json + pytorch_model.bin (no network access)."""
    config_path = os.path.join(path, "config.json")
    weights_path = os.path.join(path, "pytorch_model.bin")
    for p in (config_path, weights_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"SNAC checkpoint folder {path!r} lacks {os.path.basename(p)}")
    with open(config_path) as f:
        config = json.load(f)
    model = SNAC(**config)
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict)
    return model


def _build_random(arch: str, seed: int) -> SNAC:
    """Random-weight SNAC of a named architecture, deterministic in `seed`; the global RNG is left untouched."""
    if arch not in CODEC_ARCHS:
        raise ValueError(f"unknown codec arch {arch!r}; valid choices: {sorted(CODEC_ARCHS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SNAC(**CODEC_ARCHS[arch])


def load_codec(path: str | None = None, arch: str = "snac_24khz", seed: int = 0) -> SNAC:
    """SNAC in eval mode: real weights from a local folder `path` (config.json + pytorch_model.bin, e.g. a
    downloaded hubertsiuzdak/snac_24khz), else random weights of `arch` ('snac_24khz' or 'tiny') from `seed`."""
    if path:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"SNAC checkpoint folder not found: {path!r} (hub ids are not fetched)")
        model = _load_local(path)
    else:
        model = _build_random(arch, seed)
    return model.eval()


def codec_sample_rate(codec: SNAC) -> int:
    """Sampling rate (Hz) the codec encodes and decodes at."""
    return int(codec.sampling_rate)


def samples_per_frame(codec: SNAC) -> int:
    """Waveform samples per 7-code frame (one coarse step): hop_length * lcm(vq_strides[0], attn window)."""
    return int(codec.hop_length) * math.lcm(int(codec.vq_strides[0]), int(codec.attn_window_size or 1))


@torch.no_grad()
def encode_frames(codec: SNAC, wav: np.ndarray) -> torch.Tensor:
    """(n,) float waveform at the codec rate -> (N, 7) long frames, N = ceil(n / samples_per_frame)."""
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    step = samples_per_frame(codec)
    n_frames = max(1, math.ceil(wav.shape[0] / step))
    padded = np.zeros(n_frames * step, dtype=np.float32)
    padded[: wav.shape[0]] = wav
    x = torch.from_numpy(padded).view(1, 1, -1)
    levels = codec.encode(x)  # [(1, N), (1, 2N), (1, 4N)]
    if len(levels) != 3:
        raise ValueError(f"expected a 3-level SNAC, got {len(levels)} levels")
    l0, l1, l2 = (lvl[0].long() for lvl in levels)
    return snac_to_frames(l0, l1, l2)


@torch.no_grad()
def decode_frames(codec: SNAC, frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 7) frames -> (N * samples_per_frame,) float32 waveform at the codec rate.

    SNAC's noise blocks draw random numbers, so decoding runs under a fixed seed in a forked RNG: the same
    frames always give the same waveform and the caller's RNG state is unchanged."""
    frames = torch.as_tensor(frames, dtype=torch.long)
    l0, l1, l2 = frames_to_snac(frames)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DECODE_SEED)
        wav = codec.decode([l0.view(1, -1), l1.view(1, -1), l2.view(1, -1)])
    return wav.reshape(-1).float().numpy()
