"""Offline speech scorers against known behaviour, on the bundled sample's real (synthetic-voice) speech:
pocketsphinx transcribes flite voices, GE2E ranks same-voice above different-voice pairs, DNSMOS prefers clean
speech to the same speech with noise; local Hugging Face / exported models load through the same interfaces."""
import glob

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from callbacks.metrics import error_rates
from callbacks.speech import SpeechSample, build_asr, build_quality, build_speaker_encoder, cosine
from callbacks.speech.scoring import intelligibility, merge_rows, quality, speaker_similarity, text_scores
from data.audio import read_audio_bytes
from tests.conftest import ROOT

VOICES = ("flite:awb", "flite:rms", "flite:kal", "festival:kal_diphone")  # clearly different voices


@pytest.fixture(scope="module")
def clips():
    """speaker -> [(question_text, wav, sr)] (first 3 rows of each voice) from every split of the sample."""
    files = sorted(glob.glob(str(ROOT / "data" / "sample" / "*" / "*.parquet")))
    out: dict[str, list] = {}
    for row in pq.read_table(files, columns=["question_text", "question_audio", "speaker"]).to_pylist():
        if row["speaker"] in VOICES and len(out.setdefault(row["speaker"], [])) < 3:
            wav, sr = read_audio_bytes(row["question_audio"])
            out[row["speaker"]].append((row["question_text"], wav, sr))
    assert set(out) == set(VOICES)
    return out


def test_pocketsphinx_transcribes_flite_speech(clips):
    asr = build_asr()
    refs = [text for text, _, _ in clips["flite:awb"]]
    hyps = [asr.transcribe(wav, sr) for _, wav, sr in clips["flite:awb"]]
    assert error_rates(refs, hyps)["cer"] <= 0.15, list(zip(refs, hyps))
    assert asr.transcribe(np.zeros(0, np.float32), 16000) == ""
    asr.release()
    assert not asr.loaded


def test_resemblyzer_ranks_same_voice_above_other_voices(clips):
    enc = build_speaker_encoder()
    emb = {v: [enc.embed(wav, sr) for _, wav, sr in clips[v]] for v in VOICES}
    for v in VOICES:
        same = min(cosine(emb[v][0], e) for e in emb[v][1:])
        other = max(cosine(emb[v][0], emb[w][i]) for w in VOICES if w != v for i in range(3))
        assert same > other + 0.05, (v, same, other)
    enc.release()


def test_dnsmos_prefers_clean_speech(clips):
    _, wav, sr = clips["flite:awb"][0]
    noise = np.random.default_rng(0).standard_normal(wav.shape[0]).astype(np.float32)
    noise *= np.sqrt(np.mean(wav ** 2) / np.mean(noise ** 2) / 10.0)  # 10 dB SNR
    with build_quality() as mos:
        clean, noisy = mos.score(wav, sr), mos.score(wav + noise, sr)
    assert clean["mos"] > noisy["mos"] + 0.3 and clean["bak"] > noisy["bak"] + 0.5, (clean, noisy)
    assert 1.0 < noisy["mos"] < clean["mos"] < 5.0


def _sample(i, text, ref, wav, sr, speaker, seen, ref_wav=None):
    return SpeechSample(id=str(i), task="a1a2", prompt="q", text=text, reference_text=ref, audio=wav,
                        sample_rate=sr, reference_audio=ref_wav, reference_sample_rate=sr if ref_wav is not None
                        else None, speaker=speaker, seen=seen)


def test_scoring_functions_aggregate_per_sample_speaker_and_seen(clips):
    (t0, w0, sr), (t1, w1, _), (t2, w2, _) = clips["flite:awb"]
    kal_text, kal_wav, kal_sr = clips["festival:kal_diphone"][0]
    samples = [
        _sample(0, t0, t0, w0, sr, "flite:awb", True, ref_wav=w1),          # says what it writes, right voice
        _sample(1, "something else entirely", t1, w1, sr, "flite:awb", True, ref_wav=w2),  # speech != own text
        _sample(2, kal_text, kal_text, kal_wav, kal_sr, "flite:awb", None, ref_wav=w0),   # wrong voice
        _sample(3, t2, t2, None, sr, "flite:awb", True, ref_wav=w0),         # spoke nothing
    ]
    asr = build_asr()
    metrics, rows = intelligibility(samples, asr)
    assert rows["0"]["asr_cer_text"] <= 0.15 and rows["1"]["asr_cer_text"] > 0.5
    assert rows["1"]["asr_cer_ref"] <= 0.15 and rows["3"]["asr_text"] == "" and rows["3"]["asr_cer_ref"] == 1.0
    assert metrics["asr_cer_text"] > metrics["asr_cer_ref"]
    assert "asr_cer_ref_short" in metrics

    enc = build_speaker_encoder()
    sim, sim_rows = speaker_similarity(samples, enc, train_speakers={"flite:rms"})
    assert "3" not in sim_rows and sim["sim_n"] == 3
    assert sim_rows["2"]["seen"] is False  # None + not in train speakers -> unseen
    assert sim["sim_seen"] == pytest.approx(np.mean([sim_rows["0"]["similarity"], sim_rows["1"]["similarity"]]))
    assert sim["sim_unseen"] == pytest.approx(sim_rows["2"]["similarity"]) and sim["sim_seen"] > sim["sim_unseen"]
    assert sim["sim/flite:awb"] == pytest.approx(np.mean([r["similarity"] for r in sim_rows.values()]))

    text, text_rows = text_scores(samples)
    assert text_rows["0"]["text_cer"] == 0.0 and text_rows["1"]["text_cer"] > 0.5
    assert text["n_short"] == 4 and text["n_no_audio"] == 1 and text["text_cer"] == text["text_cer_short"]
    merged = merge_rows(rows, sim_rows, text_rows)
    assert set(merged["0"]) >= {"asr_text", "similarity", "text_cer"}


def test_speech_sample_validates_waveforms():
    with pytest.raises(ValueError, match="mono"):
        SpeechSample(id="x", task="a1a2", prompt="", text="", reference_text="", audio=np.zeros((2, 4)),
                     sample_rate=16000)
    with pytest.raises(ValueError, match="reference_sample_rate"):
        SpeechSample(id="x", task="a1a2", prompt="", text="", reference_text="", audio=None, sample_rate=16000,
                     reference_audio=np.zeros(4))
    assert SpeechSample(id="x", task="a1a2", prompt="", text="", reference_text="", audio=np.zeros(0),
                        sample_rate=16000).audio is None


# -- local models through the same interfaces ----------------------------------------------------------------
def test_local_xvector_folder_replaces_resemblyzer(tmp_path, clips):
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=2, tdnn_dim=(16, 16), tdnn_kernel=(3, 1), tdnn_dilation=(1, 1),
                      xvector_output_dim=12)
    torch.manual_seed(0)
    WavLMForXVector(cfg).save_pretrained(tmp_path / "xv")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "xv")
    enc = build_speaker_encoder(str(tmp_path / "xv"))
    _, wav, sr = clips["flite:awb"][0]
    e = enc.embed(wav, sr)
    assert e.shape == (12,) and np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    assert cosine(e, enc.embed(wav, sr)) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="ForXVector"):
        build_speaker_encoder(str(_ctc_folder(tmp_path)))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_speaker_encoder(str(tmp_path / "missing"))


def _ctc_folder(tmp_path):
    import json

    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, \
        Wav2Vec2Processor

    folder = tmp_path / "ctc"
    if folder.exists():
        return folder
    folder.mkdir()
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), pad_token="<pad>", unk_token="<unk>",
                                     word_delimiter_token="|")
    Wav2Vec2Processor(feature_extractor=Wav2Vec2FeatureExtractor(sampling_rate=16000),
                      tokenizer=tokenizer).save_pretrained(folder)
    cfg = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, pad_token_id=0)
    torch.manual_seed(0)
    Wav2Vec2ForCTC(cfg).save_pretrained(folder)
    return folder


def test_local_ctc_folder_replaces_pocketsphinx(tmp_path, clips):
    asr = build_asr(str(_ctc_folder(tmp_path)))
    _, wav, sr = clips["flite:awb"][0]
    text = asr.transcribe(wav, sr)
    assert isinstance(text, str) and set(text) <= set("abcdefghijklmnopqrstuvwxyz' ")  # random weights: letters
    assert asr.loaded
    asr.release()
    assert not asr.loaded
    (tmp_path / "bad").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_asr(str(tmp_path / "bad"))


def test_exported_mos_model_replaces_dnsmos(tmp_path, clips):
    from tests.test_faults_checkpoint import rms_mos_onnx

    # an ONNX stand-in predictor with a known answer: 1 + 4 * rms (`.pt2` programs are refused: they unpickle)
    mos = build_quality(str(rms_mos_onnx(tmp_path / "mos.onnx")))
    _, wav, sr = clips["flite:awb"][0]
    expected = 1.0 + 4.0 * float(np.sqrt(np.mean(np.clip(wav, -1, 1) ** 2)))
    assert mos.score(wav, sr)["mos"] == pytest.approx(expected, rel=1e-4)  # the bundled audio is 16 kHz
    samples = [_sample(0, "", "", wav, sr, None, None), _sample(1, "", "", None, sr, None, None)]
    metrics, rows = quality(samples, mos)
    assert metrics["mos"] == pytest.approx(expected, rel=1e-4) and metrics["mos_n"] == 1 and "1" not in rows
    with pytest.raises(ValueError, match=".onnx"):
        build_quality(__file__)
