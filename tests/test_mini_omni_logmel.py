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


def test_real_sample_audio_equals_whisper_extractor_and_wrong_framings_differ():
    """Real bundled speech (data/sample FLAC rows, decoded as the loader decodes them) at the tiny model's 10 s
    window: window_log_mel == WhisperFeatureExtractor within 1e-5. Controls, each a plausible slip in a faster
    rewrite, are far off: frames not centred (center=False, no reflect padding) and magnitude instead of power."""
    import pyarrow.parquet as pq

    from data.audio import decode_audio

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    table = pq.read_table(root / "data" / "sample" / "train" / "shard-00000.parquet", columns=["question_audio"])
    clips = [decode_audio(b, 16000) for b in table["question_audio"].to_pylist()[:6] if b]
    assert len(clips) == 6 and all(16000 < len(w) < 48000 for w in clips)  # 1-3 s of speech each
    n_samples = 2 * 500 * HOP
    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=HOP, chunk_length=10)
    filters = torch.from_numpy(fe.mel_filters).float().T
    for wav in clips:
        ref = fe(wav, sampling_rate=16000, return_tensors="np", padding="max_length", max_length=n_samples,
                 truncation=True)["input_features"][0]
        got = window_log_mel(wav, fe.mel_filters, n_samples).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
        x = torch.zeros(n_samples)
        x[: len(wav)] = torch.from_numpy(wav)
        for center, power in ((False, 2), (True, 1)):
            stft = torch.stft(x, 400, HOP, window=torch.hann_window(400), center=center, return_complex=True)
            mel = (filters @ stft.abs() ** power).clamp(min=1e-10).log10()
            wrong = torch.full((80, n_samples // HOP), -10.0)
            wrong[:, : min(mel.shape[1], wrong.shape[1])] = mel[:, : wrong.shape[1]]
            wrong = ((torch.maximum(wrong, wrong.max() - 8.0) + 4.0) / 4.0).numpy()
            assert np.abs(wrong - ref).max() > 0.05, (center, power)
