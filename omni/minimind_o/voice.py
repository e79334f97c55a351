"""Voice cloning from a reference recording (spec "Generation"): the recording (>= 1.8 s) is sped up 1.5x,
Mimi-encoded (first 8 codebooks, at most 300 frames) and embedded by a speaker model; the result conditions
generation through the prompt (reference codes right-aligned before the answer, the SPEAKER id before them,
`generate.prompt_batch`).

Speed-up: `stretch` (default) is a phase-vocoder time stretch (librosa's), which keeps the pitch, so the voice
stays the speaker's; `resample` is the resampling trick (read the clip as if recorded 1.5x faster: soxr,
shorter and 1.5x higher in pitch). The speaker embedding is taken from the ORIGINAL recording: speaker models
are trained on natural-rate speech. Speaker encoders are pluggable (`embed(wav, sr) -> (S,)`): the default is
`callbacks.speech.speaker` (resemblyzer GE2E, 256-d, offline) or a local x-vector folder; released checkpoints
expect CAM++ 192-d, so S must equal the model's `spk_dim` (checked).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from transformers import MimiModel

from data.audio import AudioDecodeError, read_audio_bytes, resample, to_mono
from omni.minimind_o.codec import encode, sample_rate
from omni.minimind_o.generate import Voice

MIN_REFERENCE_S = 1.8
SPEED = 1.5
MAX_REF_FRAMES = 300
SPEED_METHODS = ("stretch", "resample")


class SpeakerEncoder(Protocol):
    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray: ...


def speed_up(wav: np.ndarray, sr: int, factor: float = SPEED, method: str = "stretch") -> np.ndarray:
    """(n,) float32 at `sr` -> (about n / factor,) float32 at `sr`, played `factor` times faster."""
    if method not in SPEED_METHODS:
        raise ValueError(f"speed-up method {method!r}; valid choices: {list(SPEED_METHODS)}")
    if factor <= 0:
        raise ValueError(f"speed-up factor must be positive, got {factor}")
    wav = to_mono(wav)
    if factor == 1 or wav.size == 0:
        return wav
    if method == "resample":
        return resample(wav, int(round(sr * factor)), sr)
    return time_stretch(wav, factor)


def time_stretch(wav: np.ndarray, factor: float, n_fft: int = 2048) -> np.ndarray:
    """Pitch-preserving time stretch, as `librosa.effects.time_stretch`: STFT -> `librosa.phase_vocoder` ->
    inverse STFT of round(n / factor) samples. The STFTs are torch's (librosa's own first STFT call spends
    seconds compiling)."""
    from librosa import phase_vocoder

    hop = n_fft // 4
    pad = max(0, n_fft - wav.shape[0])
    x = torch.from_numpy(np.pad(wav, (0, pad)))
    window = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    stretched = phase_vocoder(spec.numpy(), rate=float(factor), hop_length=hop, n_fft=n_fft)
    out = torch.istft(torch.from_numpy(stretched), n_fft, hop, window=window, center=True,
                      length=int(round(wav.shape[0] / factor)))
    return out.numpy().astype(np.float32, copy=False)


def speaker_encoder(path: str | None = None) -> SpeakerEncoder:
    """None -> resemblyzer GE2E (256-d); a local Hugging Face *ForXVector folder -> that model."""
    from callbacks.speech.speaker import build_speaker_encoder

    return build_speaker_encoder(path)


def reference_voice(wav: np.ndarray, sr: int, mimi: MimiModel, speaker: SpeakerEncoder | None = None,
                    spk_dim: int | None = None, speed: float = SPEED, method: str = "stretch",
                    max_frames: int = MAX_REF_FRAMES, min_seconds: float = MIN_REFERENCE_S) -> Voice:
    """A reference recording (any rate, mono or (n, channels)) -> Voice(ref_codes (R <= max_frames, 8),
    speaker_emb (S,) or None without a speaker encoder). `spk_dim`: the model's expected embedding width."""
    wav = to_mono(wav)
    seconds = wav.shape[0] / float(sr)
    if seconds < min_seconds:
        raise ValueError(f"reference recording is {seconds:.2f} s; voice cloning needs >= {min_seconds} s")
    codec_sr = sample_rate(mimi)
    fast = speed_up(resample(wav, sr, codec_sr), codec_sr, speed, method)
    codes = encode(mimi, fast)[:max_frames]  # (R, 8)
    emb = None
    if speaker is not None:
        emb = torch.as_tensor(np.asarray(speaker.embed(wav, sr), dtype=np.float32)).reshape(-1)
        if spk_dim is not None and emb.numel() != spk_dim:
            raise ValueError(f"the speaker encoder gives {emb.numel()}-d embeddings but the model expects "
                             f"spk_dim={spk_dim} (released checkpoints: CAM++ 192-d); pass a matching speaker model")
    return Voice(ref_codes=codes, speaker_emb=emb)


def load_reference(path_or_bytes: str | bytes, mimi: MimiModel, speaker: SpeakerEncoder | None = None,
                   spk_dim: int | None = None, **kwargs) -> Voice:
    """`reference_voice` of an audio file (path or encoded bytes: wav / flac / ogg)."""
    name = path_or_bytes if isinstance(path_or_bytes, str) else "<reference bytes>"
    if isinstance(path_or_bytes, str):
        with open(path_or_bytes, "rb") as f:
            data = f.read()
    else:
        data = bytes(path_or_bytes)
    try:
        wav, sr = read_audio_bytes(data)
    except AudioDecodeError as exc:
        raise AudioDecodeError(f"reference voice {name}: {exc}") from exc
    return reference_voice(wav, sr, mimi, speaker, spk_dim, **kwargs)


__all__ = ["MAX_REF_FRAMES", "MIN_REFERENCE_S", "SPEED", "SpeakerEncoder", "load_reference", "reference_voice",
           "speaker_encoder", "speed_up"]
