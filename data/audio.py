"""Audio I/O without torchaudio: soundfile for decoding/encoding, soxr for resampling.

Waveforms are float32 numpy arrays of shape (n_samples,) (mono) in [-1, 1].
"""
from __future__ import annotations

import io
import os

import numpy as np
import soundfile as sf
import soxr


class AudioDecodeError(ValueError):
    """Raised when audio bytes are empty, corrupt or in a format soundfile cannot read. `reason` is the skip
    reason a data loader records for it."""

    reason = "bad_audio"


class NonFiniteAudio(AudioDecodeError):
    """Decoded samples that are NaN or +-inf (a float WAV / FLAC can hold them): never trained on, never encoded."""

    reason = "nonfinite_audio"


def check_finite(wav: np.ndarray, what: str = "audio") -> np.ndarray:
    """`wav` unchanged, or NonFiniteAudio naming how many samples are NaN / inf and the first one."""
    bad = ~np.isfinite(wav)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(-1))[0])
        raise NonFiniteAudio(f"{what} has {int(bad.sum())} non-finite (NaN/inf) sample(s) of {wav.size}, "
                             f"the first at sample {first}")
    return wav


def to_mono(wav: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32, channels mixed down by their mean."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2 and wav.shape[1] == 1:  # mono read as (n, 1): the column itself (its mean, without a reduction)
        wav = wav[:, 0]
    elif wav.ndim == 2:
        wav = wav.mean(axis=1)
    elif wav.ndim != 1:
        raise ValueError(f"expected a (n,) or (n, channels) waveform, got shape {wav.shape}")
    return np.ascontiguousarray(wav, dtype=np.float32)


def resample(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """(n,) float32 at `sr` -> (round(n * target_sr / sr),) float32 at `target_sr` (soxr high quality)."""
    if sr == target_sr or wav.size == 0:
        return wav.astype(np.float32, copy=False)
    return soxr.resample(wav, sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def read_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Encoded bytes -> ((n,) float32 mono at the file's rate, rate). Raises AudioDecodeError."""
    if not data:
        raise AudioDecodeError("empty audio bytes")
    try:
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioDecodeError(f"cannot decode audio ({len(data)} bytes): {exc}") from exc
    if wav.shape[0] == 0:
        raise AudioDecodeError(f"audio has no samples ({len(data)} bytes)")
    return check_finite(to_mono(wav), f"decoded audio ({len(data)} bytes)"), int(sr)


def decode_audio(data: bytes, target_sr: int) -> np.ndarray:
    """Encoded audio file bytes (wav/flac/ogg, any rate/channels) -> (n,) float32 mono at `target_sr`."""
    wav, sr = read_audio_bytes(data)
    return resample(wav, sr, target_sr)


def audio_duration(data: bytes) -> float:
    """Duration in seconds of encoded audio bytes, read from the header. Raises AudioDecodeError."""
    if not data:
        raise AudioDecodeError("empty audio bytes")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:
        raise AudioDecodeError(f"cannot read audio header ({len(data)} bytes): {exc}") from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioDecodeError(f"audio has no samples ({len(data)} bytes)")
    return float(info.frames) / float(info.samplerate)


def _encode(wav: np.ndarray, sr: int, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(check_finite(to_mono(wav), "audio to encode"), -1.0, 1.0), sr, format=fmt, subtype="PCM_16", **kwargs)
    return buf.getvalue()


def encode_flac(wav: np.ndarray, sr: int) -> bytes:
    """(n,) float waveform -> FLAC file bytes (16-bit, mono, highest compression)."""
    return _encode(wav, sr, "FLAC", compression_level=1.0)


def encode_wav(wav: np.ndarray, sr: int) -> bytes:
    """(n,) float waveform -> WAV file bytes (16-bit PCM, mono)."""
    return _encode(wav, sr, "WAV")


def write_wav(path: str | os.PathLike, wav: np.ndarray, sr: int) -> None:
    """Write (n,) float waveform to `path` as 16-bit PCM WAV (parent folders created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(encode_wav(wav, sr))
