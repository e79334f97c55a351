"""Mini-Omni's per-row log-mel (data.mini_omni.dataset.window_log_mel) equals WhisperFeatureExtractor's log-mel of
the audio zero-padded to the encoder window (the reference the Whisper encoder was trained on), for clips from one
sample to longer than the window, while only the audio's frames + one window are transformed. Negative control: the
plausible shortcut that transforms the audio alone (no zero window after it) differs at the audio's end."""
import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from data.mini_omni.dataset import HOP, window_log_mel

torch.set_num_threads(1)
N_SAMPLES = 2 * 100 * HOP  # a 2 s window (max_source_positions 100)


@pytest.fixture(scope="module")
def extractor():
    return WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=HOP, chunk_length=2)


def reference(extractor, wav):
    return extractor(wav, sampling_rate=16000, return_tensors="np", padding="max_length", max_length=N_SAMPLES,
                     truncation=True)["input_features"][0]


@pytest.mark.parametrize("n", [1, 399, 400, 1601, 12345, N_SAMPLES - 300, N_SAMPLES, N_SAMPLES + 777])
def test_window_log_mel_equals_whisper_extractor(extractor, n):
    wav = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
    got = window_log_mel(wav, extractor.mel_filters, N_SAMPLES)
    assert got.dtype == torch.float32 and tuple(got.shape) == (80, N_SAMPLES // HOP)
    np.testing.assert_allclose(got.numpy(), reference(extractor, wav), atol=1e-5, rtol=0)


def test_padding_frames_are_the_floor_and_shortcut_differs(extractor):
    n = 12345
    wav = np.random.default_rng(1).standard_normal(n).astype(np.float32) * 0.1
    got = window_log_mel(wav, extractor.mel_filters, N_SAMPLES).numpy()
    # frames whose window (centre t * 160 +- 200) lies past the audio: power 0 -> floored at max - 8, i.e. (max-8+4)/4
    first_silent = -(-(n + 200) // HOP)
    np.testing.assert_allclose(got[:, first_silent:], (got.max() * 4 - 4 - 8 + 4) / 4, atol=1e-6)
    # the shortcut: STFT of the audio alone (reflect-padded at its own end), zeros after
    x = torch.from_numpy(wav)
    stft = torch.stft(x, 400, HOP, window=torch.hann_window(400), return_complex=True)
    mel = torch.from_numpy(extractor.mel_filters).float().T @ (stft[..., :-1].abs() ** 2)
    short = torch.zeros(80, N_SAMPLES // HOP)
    short[:, : mel.shape[1]] = mel
    log = short.clamp(min=1e-10).log10()
    short = ((torch.maximum(log, log.max() - 8.0) + 4.0) / 4.0).numpy()
    assert np.abs(short - reference(extractor, wav)).max() > 1e-2
