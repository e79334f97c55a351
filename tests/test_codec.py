"""SNAC access (data/mini_omni/codec.py): shapes, sample rate, stream order, determinism. Tiny random codec, no network."""
import json
import os

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from data.mini_omni.codec import (  # noqa: E402
    SNAC_24KHZ,
    SNAC_TINY,
    codec_sample_rate,
    decode_frames,
    encode_frames,
    load_codec,
    samples_per_frame,
)
from omni.mini_omni.layout import frames_to_snac  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return load_codec(arch="tiny", seed=0)


def _tone(seconds: float, sr: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.sin(2 * np.pi * 1250 * t)).astype(np.float32)


def test_arch_constants_match_the_24khz_release():
    assert SNAC_24KHZ == dict(
        sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
        decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
        vq_strides=[4, 2, 1], noise=True, depthwise=True,
    )
    assert SNAC_TINY["vq_strides"] == [4, 2, 1] and SNAC_TINY["codebook_size"] == 4096
    assert SNAC_TINY["sampling_rate"] == 24000


def test_encode_decode_shapes_and_rate(tiny):
    assert codec_sample_rate(tiny) == 24000
    assert samples_per_frame(tiny) == 2048  # spec: 2048 samples per coarse step
    wav = _tone(1.0)
    frames = encode_frames(tiny, wav)
    n = int(np.ceil(wav.shape[0] / 2048))
    assert frames.shape == (n, 7) and frames.dtype == torch.long
    assert int(frames.min()) >= 0 and int(frames.max()) < 4096
    out = decode_frames(tiny, frames)
    assert out.dtype == np.float32 and out.shape == (n * 2048,)
    assert np.isfinite(out).all()


def test_encode_frames_uses_spec_stream_order(tiny):
    wav = _tone(0.5)
    frames = encode_frames(tiny, wav)
    padded = np.zeros(frames.shape[0] * 2048, dtype=np.float32)
    padded[: wav.shape[0]] = wav
    with torch.no_grad():
        l0, l1, l2 = (c[0] for c in tiny.encode(torch.from_numpy(padded).view(1, 1, -1)))
    n = frames.shape[0]
    for t in range(n):
        expected = [l0[t], l1[2 * t], l2[4 * t], l2[4 * t + 1], l1[2 * t + 1], l2[4 * t + 2], l2[4 * t + 3]]
        assert frames[t].tolist() == [int(x) for x in expected]


def test_decode_frames_matches_snac_decode_and_is_deterministic(tiny):
    frames = encode_frames(tiny, _tone(0.4))
    state = torch.random.get_rng_state()
    a = decode_frames(tiny, frames)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
    b = decode_frames(tiny, frames.numpy())
    np.testing.assert_array_equal(a, b)
    l0, l1, l2 = frames_to_snac(frames)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = tiny.decode([l0[None], l1[None], l2[None]]).reshape(-1).numpy()
    np.testing.assert_allclose(a, ref, atol=1e-6)


def test_random_codec_deterministic_per_seed():
    a, b, c = (load_codec(arch="tiny", seed=s) for s in (3, 3, 4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    wav = _tone(0.3)
    assert torch.equal(encode_frames(a, wav), encode_frames(b, wav))
    assert not a.training


def test_unknown_arch_names_choices():
    with pytest.raises(ValueError, match="snac_24khz"):
        load_codec(arch="nope")


def test_load_from_local_folder(tmp_path, tiny):
    folder = tmp_path / "snac_tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SNAC_TINY))
    torch.save(tiny.state_dict(), folder / "pytorch_model.bin")
    loaded = load_codec(str(folder))
    assert not loaded.training
    wav = _tone(0.3)
    assert torch.equal(encode_frames(loaded, wav), encode_frames(tiny, wav))
    with pytest.raises(FileNotFoundError):
        load_codec(str(tmp_path / "missing"))
    os.remove(folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_codec(str(folder))
