"""Chunk-wise audio encoding: the Qwen2.5-Omni audio tower called one 0.4 s chunk at a time.

Framing (spec): 16 kHz mono, zero-padded to a multiple of 6400 samples; 128-bin log-mel at 100 frames/s -> 40 mel
frames per chunk; the tower gets one "audio" per chunk (feature_lens 40, 40, ...), so its attention never
crosses a chunk; conv stride 2 + pooling 2 -> 10 frames per chunk (25 Hz). A trailing partial chunk is dropped.

The log-mel has whole-stream framing, as the release (spec, pinned facts: one Whisper log-mel over the whole
growing stream, sliced per chunk): frame k is the 400-sample Hann window centred on sample 160 k of the STREAM
(reflect padding only at the stream's start and end), so a chunk's first 2 frames read the previous chunk's last
samples and its last frame reads 40 samples (2.5 ms, `MEL_LOOKAHEAD`) of the next chunk. Whisper's floor
(max - 8, in log10 units) uses the running maximum up to the end of the chunk (what a growing stream has), so a
live session (`MelStream`) computes exactly the sliced whole-stream values, 2.5 ms after the chunk's end.
Offline clips (`LogMel.clip`) are one Whisper log-mel over the whole clip, encoded by ONE tower call
(`ChunkwiseAudioEncoder.encode_clip`): `tower_output_length(frames)` placeholders (57 for 2.3 s).
Dims legend: C chunks, M mel bins, F mel frames, N tower frames, E tower output width, D LLM width.
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


N_FFT = 400                   # Whisper's 25 ms window
MEL_CONTEXT = N_FFT // 2      # 200 samples before a chunk that its first frames read
MEL_LOOKAHEAD = N_FFT // 2 - HOP  # 40 samples past a chunk's end that its last frame reads (2.5 ms)
MEL_LOOKAHEAD_MS = 1000.0 * MEL_LOOKAHEAD / SAMPLE_RATE
OFFLINE_MAX_SAMPLES = 20 * SAMPLE_RATE  # offline audio is capped at 20 s


def tower_output_length(mel_frames: int) -> int:
    """Frames the Qwen2.5-Omni audio tower outputs for ONE audio of `mel_frames` log-mel frames: conv2 (kernel 3,
    stride 2, padding 1) then average pooling (2, stride 2): ((F - 1) // 2 + 1 - 2) // 2 + 1."""
    after_conv = (int(mel_frames) - 1) // 2 + 1
    return max(0, (after_conv - 2) // 2 + 1)


def clip_frames(n_samples: int) -> int:
    """AUDIO_PAD placeholders of an offline clip of `n_samples` (16 kHz, capped at 20 s): one whole-clip tower
    call over its n // 160 mel frames."""
    return tower_output_length(min(int(n_samples), OFFLINE_MAX_SAMPLES) // HOP)


def pad_to_chunks(wav: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (C * 6400,) zero-padded at the end."""
    wav = np.asarray(wav, dtype=np.float32)
    short = n_chunks(len(wav)) * CHUNK_SAMPLES - len(wav)
    return np.pad(wav, (0, short)) if short else wav


class ChunkMel:
    """Per-chunk ISOLATED 128-bin Whisper log-mel: (C * 6400,) samples -> (C, M, 40) float32. Not what the
    release computes (see `LogMel`); kept as the negative control of the framing tests."""

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


class LogMel:
    """Whisper's log-mel (128 bins, n_fft 400, hop 160, periodic Hann, Slaney mel filters, log10 floored at max - 8,
    then (x + 4) / 4) with whole-stream framing (module docstring). Float64 inside, float32 out."""

    def __init__(self, n_mels: int = 128) -> None:
        from transformers import WhisperFeatureExtractor

        self.n_mels = int(n_mels)
        fe = WhisperFeatureExtractor(feature_size=self.n_mels, sampling_rate=SAMPLE_RATE, hop_length=HOP, n_fft=N_FFT)
        self.filters = np.asarray(fe.mel_filters, dtype=np.float64)  # (n_fft // 2 + 1, M)
        self.window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann

    def log10_frames(self, x: np.ndarray, n_frames: int) -> np.ndarray:
        """x: samples where frame j reads x[160 j : 160 j + 400] -> (M, n_frames) log10 mel power (no floor)."""
        x = np.asarray(x, dtype=np.float64)
        if n_frames <= 0:
            return np.zeros((self.n_mels, 0))
        if len(x) < HOP * (n_frames - 1) + N_FFT:
            raise ValueError(f"{len(x)} samples cannot hold {n_frames} mel frames")
        frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][:n_frames]  # (n_frames, 400)
        power = np.abs(np.fft.rfft(frames * self.window, axis=-1)) ** 2  # (n_frames, 201)
        return np.log10(np.maximum(self.filters.T @ power.T, 1e-10))  # (M, n_frames)

    @staticmethod
    def finish(log10: np.ndarray, running_max: float = -np.inf) -> tuple[torch.Tensor, float]:
        """(C, M, 40) log10 chunks -> normalised float32 chunks, floored per chunk at (running max up to the end of
        that chunk) - 8; returns the new running max."""
        out = np.empty_like(log10)
        for c in range(log10.shape[0]):
            running_max = max(running_max, float(log10[c].max()))
            out[c] = (np.maximum(log10[c], running_max - 8.0) + 4.0) / 4.0
        return torch.from_numpy(out.astype(np.float32)), running_max

    def stream(self, wav: np.ndarray) -> torch.Tensor:
        """(C * 6400,) whole stream -> (C, M, 40): one log-mel over the stream, sliced per chunk."""
        wav = np.asarray(wav, dtype=np.float64)
        if len(wav) % CHUNK_SAMPLES:
            raise ValueError(f"{len(wav)} samples is not a multiple of {CHUNK_SAMPLES}; use pad_to_chunks first")
        if len(wav) == 0:
            return torch.zeros(0, self.n_mels, MELS_PER_CHUNK)
        logm = self.log10_frames(np.pad(wav, MEL_CONTEXT, mode="reflect"), len(wav) // HOP)  # (M, C*40)
        chunks = logm.reshape(self.n_mels, -1, MELS_PER_CHUNK).transpose(1, 0, 2)
        return self.finish(chunks)[0]

    __call__ = stream

    def clip(self, wav: np.ndarray) -> torch.Tensor:
        """(n,) offline clip (capped at 20 s) -> (M, n // 160): one Whisper log-mel over the whole clip."""
        wav = np.asarray(wav, dtype=np.float64)[:OFFLINE_MAX_SAMPLES]
        n = len(wav) // HOP
        if n == 0:
            raise ValueError(f"an offline clip of {len(wav)} samples has no whole mel frame")
        logm = self.log10_frames(np.pad(wav, MEL_CONTEXT, mode="reflect"), n)
        return torch.from_numpy(((np.maximum(logm, logm.max() - 8.0) + 4.0) / 4.0).astype(np.float32))


class MelStream:
    """Incremental `LogMel.stream` for a live session: push samples, get each chunk's (M, 40) mel as soon as the
    40 look-ahead samples its last frame reads have arrived (`end()` reflects at the stream's end, after
    zero-padding it to whole chunks). Keeps only the 200 samples before the next chunk."""

    def __init__(self, mel: LogMel) -> None:
        self.mel = mel
        self.buf = np.zeros(0, dtype=np.float64)  # from MEL_CONTEXT samples before the next chunk (stream start: 0)
        self.first, self.total, self.running_max, self.ended = True, 0, -np.inf, False

    def push(self, samples: np.ndarray) -> torch.Tensor:
        """Append samples -> (k, M, 40) chunks now complete (k may be 0)."""
        if self.ended:
            raise RuntimeError("MelStream.push after end()")
        samples = np.asarray(samples, dtype=np.float64)
        self.buf = np.concatenate([self.buf, samples])
        self.total += len(samples)
        return self._take()

    def end(self) -> torch.Tensor:
        """End of stream: zero-pad to whole chunks, reflect the last samples -> the remaining (k, M, 40) chunks."""
        if self.ended:
            return torch.zeros(0, self.mel.n_mels, MELS_PER_CHUNK)
        self.ended = True
        short = (-self.total) % CHUNK_SAMPLES
        if self.total == 0:
            return torch.zeros(0, self.mel.n_mels, MELS_PER_CHUNK)
        self.buf = np.pad(np.pad(self.buf, (0, short)), (0, MEL_LOOKAHEAD), mode="reflect")
        return self._take()

    def _take(self) -> torch.Tensor:
        out = []
        while True:
            ctx = 0 if self.first else MEL_CONTEXT
            need = ctx + CHUNK_SAMPLES + MEL_LOOKAHEAD
            if len(self.buf) < need:
                break
            seg = self.buf[:need]
            if self.first:
                seg = np.pad(seg, (MEL_CONTEXT, 0), mode="reflect")
            out.append(self.mel.log10_frames(seg, MELS_PER_CHUNK))
            self.buf = self.buf[ctx + CHUNK_SAMPLES - MEL_CONTEXT:]
            self.first = False
        if not out:
            return torch.zeros(0, self.mel.n_mels, MELS_PER_CHUNK)
        chunks, self.running_max = self.mel.finish(np.stack(out), self.running_max)
        return chunks


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

    def encode_clip(self, mels: torch.Tensor, lens: torch.Tensor | list[int]) -> torch.Tensor:
        """Offline clips, each ONE tower audio: mels (M, sum F) concatenated, lens (K,) their F ->
        (sum N, E) with N = tower_output_length(F) per clip, in clip order."""
        lens = torch.as_tensor(lens, dtype=torch.long, device=mels.device)
        if int(lens.sum()) != mels.shape[-1]:
            raise ValueError(f"clip lengths sum to {int(lens.sum())} but the mels have {mels.shape[-1]} frames")
        out = self.tower(input_features=mels.to(self.tower.conv1.weight.dtype), feature_lens=lens)
        return out.last_hidden_state

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


TOWER_PREFIXES = ("thinker.audio_tower.", "audio_tower.", "audio_encoder.tower.", "module.")


def strip_tower_prefix(state: dict) -> dict:
    """Drop a prefix every key of a tower state dict carries (`audio_tower.`, `thinker.audio_tower.`, ...)."""
    for prefix in TOWER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_tower_weights(encoder: ChunkwiseAudioEncoder, path: str | Path) -> None:
    """Load a released encoder `.pth` (weights only, never pickled code) into `encoder.tower`. Keys may carry a
    prefix (`audio_tower.`, `thinker.audio_tower.`, `module.`); anything that does not fit fails listing it."""
    from omni.mini_omni.convert import _torch_load_safe

    state = strip_tower_prefix(_torch_load_safe(Path(path)))
    ours = encoder.tower.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    wrong = {k: (tuple(state[k].shape), tuple(ours[k].shape)) for k in set(ours) & set(state)
             if tuple(state[k].shape) != tuple(ours[k].shape)}
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not fit the audio tower: missing={missing[:8]} unexpected={unexpected[:8]} "
                         f"wrong_shape(file, model)={wrong}")
    encoder.tower.load_state_dict(state)


def encode_wav(encoder: ChunkwiseAudioEncoder, mel: LogMel | ChunkMel, wav: np.ndarray) -> torch.Tensor:
    """(n,) 16 kHz samples -> (C, 10, E) encoder frames (zero-padded to whole chunks), on the encoder's device."""
    mels = mel(pad_to_chunks(wav))
    p = next(encoder.parameters())
    with torch.no_grad():
        return encoder(mels.to(p.device))
