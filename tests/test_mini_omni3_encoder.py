"""Chunk-wise Qwen2.5-Omni audio tower: framing, no cross-chunk context, released config / weights loading."""
import json

import numpy as np
import pytest
import torch

from omni.mini_omni3.encoder import (
    CHUNK_SAMPLES, ChunkMel, ChunkwiseAudioEncoder, audio_config, chunk_mels, encode_wav, load_tower_weights,
    pad_to_chunks,
)

TINY_AUDIO = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, d_model=32,
                  output_dim=48, max_source_positions=1500, n_window=100)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ChunkwiseAudioEncoder(audio_config(TINY_AUDIO)).eval()


@pytest.fixture(scope="module")
def mel():
    return ChunkMel(128)


def noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, n).astype(np.float32)


def test_framing(encoder, mel):
    wav = noise(2 * CHUNK_SAMPLES + 100, 0)
    padded = pad_to_chunks(wav)
    assert len(padded) == 3 * CHUNK_SAMPLES and np.all(padded[len(wav):] == 0)
    mels = mel(padded)
    assert mels.shape == (3, 128, 40)
    assert encode_wav(encoder, mel, wav).shape == (3, 10, 48)  # 40 mel frames -> 10 encoder frames per chunk
    continuous = torch.randn(128, 95)  # 2 whole chunks + a 15-frame partial one, which is dropped
    assert torch.equal(chunk_mels(continuous)[1], continuous[:, 40:80])
    assert chunk_mels(continuous).shape == (2, 128, 40)


def test_no_cross_chunk_context(encoder, mel):
    wav = noise(3 * CHUNK_SAMPLES, 1)
    other = wav.copy()
    other[2 * CHUNK_SAMPLES:] = noise(CHUNK_SAMPLES, 2) * 5  # perturb chunk 2 only
    with torch.no_grad():
        a, b = encoder(mel(wav)), encoder(mel(other))
        alone = encoder(mel(wav[CHUNK_SAMPLES: 2 * CHUNK_SAMPLES]))
    assert not torch.allclose(a[2], b[2], atol=1e-3)  # the perturbation reaches its own chunk
    torch.testing.assert_close(a[:2], b[:2], rtol=0, atol=1e-5)  # ... and no other
    torch.testing.assert_close(a[1], alone[0], rtol=0, atol=1e-5)  # chunk 1 == chunk 1 encoded on its own
    # the same tower called on the whole clip as one audio would mix chunks: the property is the chunking's
    mels = mel(wav).permute(1, 0, 2).reshape(128, -1)
    with torch.no_grad():
        whole = encoder.tower(input_features=mels, feature_lens=torch.tensor([120])).last_hidden_state
    assert not torch.allclose(whole.view(3, 10, -1)[1], a[1], atol=1e-3)


def test_nested_config_and_weights(tmp_path, encoder):
    cfg_dir = tmp_path / "qwen25OmniConfig"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni", "thinker_config": {
        "audio_config": {**TINY_AUDIO, "model_type": "qwen2_5_omni_audio_encoder"}}}))
    cfg = audio_config(path=str(cfg_dir))
    assert (cfg.d_model, cfg.output_dim, cfg.encoder_layers) == (32, 48, 2)
    pth = tmp_path / "MiniOmni3_ChunkwisedEncoder.pth"
    torch.save({f"audio_tower.{k}": v for k, v in encoder.tower.state_dict().items()}, pth)
    fresh = ChunkwiseAudioEncoder(cfg)
    load_tower_weights(fresh, pth)
    assert all(torch.equal(v, encoder.tower.state_dict()[k]) for k, v in fresh.tower.state_dict().items())
    torch.save({"conv1.weight": torch.zeros(1)}, pth)
    with pytest.raises(ValueError, match="does not fit the audio tower"):
        load_tower_weights(fresh, pth)
