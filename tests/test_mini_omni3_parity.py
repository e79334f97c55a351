"""Mini-Omni3 release parity (issue 12): one test per fact pinned in ../shared/spec/mini_omni3.md ("Facts pinned by
comparison with the released code"), each with expected values from the spec / hand computations and, for the
weight format, a negative control showing the plausible wrong variant gives different logits.

The release folder is built here from random weights in the released layout (litgpt safetensors shards + index,
model_config.yaml, tower .pth + qwen25OmniConfig/) with the dims of conf/model/mini_omni3_tiny.yaml, and its
logits are compared with an independent forward written below from the spec: a Qwen2-style decoder read straight
from the litgpt tensor names (RMSNorm, rotate-half RoPE over the whole head, GQA, SwiGLU), float64.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import save_file

from omni.checkpoint import load_model_weights
from omni.mini_omni3.encoder import (
    CHUNK_SAMPLES, MEL_LOOKAHEAD_MS, ChunkMel, ChunkwiseAudioEncoder, LogMel, MelStream, audio_config, clip_frames,
    tower_output_length,
)
from omni.mini_omni3.model import MiniOmni3, config_from_yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "conf" / "model" / "mini_omni3_tiny.yaml"
# conf/model/mini_omni3_tiny.yaml, written out by hand: the release folder below must describe this model
N_LAYER, N_HEAD, N_GROUPS, N_EMBD, MLP, VOCAB, EPS, ROPE = 2, 4, 2, 64, 192, 576, 1e-6, 1e6
HEAD = N_EMBD // N_HEAD
AUDIO = dict(num_mel_bins=128, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
             max_source_positions=1500, n_window=100, output_dim=64)
SR = 16000


def tiny_model() -> MiniOmni3:
    torch.manual_seed(123)
    return MiniOmni3(config_from_yaml(str(TINY_YAML))).eval()


# -- release folder ---------------------------------------------------------------------------------------------
def litgpt_yaml(**over) -> dict:
    """litgpt Config fields of a Qwen2.5-style release (current litgpt spells the qkv bias `attn_bias`)."""
    return {**dict(name="tiny-mini-omni3", block_size=4096, vocab_size=VOCAB, padded_vocab_size=VOCAB,
                   n_layer=N_LAYER, n_head=N_HEAD, head_size=HEAD, n_embd=N_EMBD, n_query_groups=N_GROUPS,
                   rotary_percentage=1.0, parallel_residual=False, bias=False, attn_bias=True, lm_head_bias=False,
                   norm_class_name="RMSNorm", norm_eps=EPS, mlp_class_name="LLaMAMLP", intermediate_size=MLP,
                   rope_base=ROPE, tie_word_embeddings=False), **over}


def random_litgpt(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random litgpt tensors; the fused attention under the name `attn.qkv`. Scales keep logits O(1)."""
    g = torch.Generator().manual_seed(seed)

    def lin(r, c):
        return torch.randn(r, c, generator=g) / math.sqrt(c)

    rows = (N_HEAD + 2 * N_GROUPS) * HEAD
    sd = {"transformer.wte.weight": torch.randn(VOCAB, N_EMBD, generator=g),
          "transformer.ln_f.weight": 1 + 0.2 * torch.randn(N_EMBD, generator=g), "lm_head.weight": lin(VOCAB, N_EMBD)}
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        sd.update({p + "norm_1.weight": 1 + 0.2 * torch.randn(N_EMBD, generator=g),
                   p + "norm_2.weight": 1 + 0.2 * torch.randn(N_EMBD, generator=g),
                   p + "attn.qkv.weight": 2 * lin(rows, N_EMBD),
                   p + "attn.qkv.bias": 0.5 * torch.randn(rows, generator=g),
                   p + "attn.proj.weight": lin(N_EMBD, N_HEAD * HEAD), p + "mlp.fc_1.weight": lin(MLP, N_EMBD),
                   p + "mlp.fc_2.weight": lin(MLP, N_EMBD), p + "mlp.proj.weight": lin(N_EMBD, MLP)})
    return sd


def write_release(folder: Path, sd: dict, config: dict | None = None, audio: dict | None = None) -> Path:
    """The released layout: 2 safetensors shards + index, model_config.yaml, tokenizer, tower .pth + config."""
    folder.mkdir(parents=True)
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model_config.yaml").write_text(yaml.safe_dump(config or litgpt_yaml()))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(ROOT / "omni" / "assets" / "tiny_tokenizer" / name, folder / name)
    torch.manual_seed(7)
    tower = ChunkwiseAudioEncoder(audio_config(AUDIO)).tower
    torch.save(tower.state_dict(), folder / "MiniOmni3_ChunkwisedEncoder.pth")
    (folder / "qwen25OmniConfig").mkdir()
    (folder / "qwen25OmniConfig" / "config.json").write_text(json.dumps(
        {"model_type": "qwen2_5_omni", "thinker_config": {"audio_config": audio or AUDIO}}))
    return folder


# -- independent forward from the spec (litgpt names, float64) -----------------------------------------------
def ref_logits(sd: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """Qwen2-style decoder read from litgpt names. `attn.qkv` rows: all H query heads, then all G key heads,
    then all G value heads (spec, pinned facts); query head h attends with KV group h // (H / G)."""
    sd = {k: v.double() for k, v in sd.items()}
    L, rep = len(ids), N_HEAD // N_GROUPS

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w

    def rope(x):  # (heads, L, S), rotate-half over the whole head, base ROPE
        theta = 1.0 / (ROPE ** (torch.arange(0, HEAD, 2, dtype=torch.float64) / HEAD))
        ang = torch.outer(torch.arange(L, dtype=torch.float64), theta).repeat(1, 2)
        return x * ang.cos() + torch.cat([-x[..., HEAD // 2:], x[..., : HEAD // 2]], -1) * ang.sin()

    x = sd["transformer.wte.weight"][torch.tensor(ids)]
    causal = torch.full((L, L), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        out = rms(x, sd[p + "norm_1.weight"]) @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        q = out[:, : N_HEAD * HEAD].view(L, N_HEAD, HEAD).transpose(0, 1)
        k = out[:, N_HEAD * HEAD: (N_HEAD + N_GROUPS) * HEAD].view(L, N_GROUPS, HEAD).transpose(0, 1)
        v = out[:, (N_HEAD + N_GROUPS) * HEAD:].view(L, N_GROUPS, HEAD).transpose(0, 1)
        k, v = rope(k).repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
        att = torch.softmax(rope(q) @ k.transpose(1, 2) / math.sqrt(HEAD) + causal, -1) @ v  # (H, L, S)
        x = x + att.transpose(0, 1).reshape(L, -1) @ sd[p + "attn.proj.weight"].T
        h = rms(x, sd[p + "norm_2.weight"])
        x = x + (torch.nn.functional.silu(h @ sd[p + "mlp.fc_1.weight"].T) * (h @ sd[p + "mlp.fc_2.weight"].T)) \
            @ sd[p + "mlp.proj.weight"].T
    return rms(x, sd["transformer.ln_f.weight"]) @ sd["lm_head.weight"].T


IDS = [512 + 4, 512 + 6, 3, 17, 250, 9, 400, 511, 88, 512 + 11, 42, 7, 300, 1, 64, 128]  # controls + text


def our_logits(model: MiniOmni3, ids: list[int] = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model.backbone(input_ids=torch.tensor([ids])).logits[0].double()  # fp32 model, compared in fp64


# -- fact 1: `attn.qkv` is [all q | all k | all v]; only `attn.attn` is interleaved per group ---------------------
def test_attn_qkv_rows_are_q_then_k_then_v_blocks(tmp_path):
    sd = random_litgpt()
    folder = write_release(tmp_path / "Mini-Omni3", sd)
    ref = ref_logits(sd, IDS)
    model = tiny_model()
    load_model_weights(model, folder)  # init_from=<released folder>
    ours = our_logits(model)
    assert ours.shape == (len(IDS), VOCAB) and ref.abs().max() < 20
    assert (ours - ref).abs().max() <= 1e-5
    # the tower came from the folder's .pth too
    pth = torch.load(folder / "MiniOmni3_ChunkwisedEncoder.pth", weights_only=True)
    assert all(torch.equal(v, pth[k]) for k, v in model.audio_encoder.tower.state_dict().items())
    # negative control: the same bytes read with the per-group split (what the legacy name `attn.attn` means,
    # and what the importer did to `attn.qkv` before) load without error and are a different model
    legacy = {k.replace("attn.qkv", "attn.attn"): v for k, v in sd.items()}
    wrong = tiny_model()
    load_model_weights(wrong, write_release(tmp_path / "legacy", legacy))
    assert (our_logits(wrong) - ref).abs().max() > 0.1
    # positive control of the legacy name: the same model re-laid out per KV group [q_g..., k_g, v_g] imports equal
    per_group = {}
    for k, v in sd.items():
        if "attn.qkv" in k:
            q, kk, vv = v[: N_HEAD * HEAD], v[N_HEAD * HEAD: (N_HEAD + N_GROUPS) * HEAD], v[(N_HEAD + N_GROUPS) * HEAD:]
            rep = N_HEAD // N_GROUPS
            q = q.reshape(N_GROUPS, rep * HEAD, *v.shape[1:])
            kk, vv = kk.reshape(N_GROUPS, HEAD, *v.shape[1:]), vv.reshape(N_GROUPS, HEAD, *v.shape[1:])
            v = torch.cat([q, kk, vv], 1).reshape(v.shape)
            k = k.replace("attn.qkv", "attn.attn")
        per_group[k] = v
    legacy_ok = tiny_model()
    load_model_weights(legacy_ok, write_release(tmp_path / "legacy_ok", per_group))
    assert (our_logits(legacy_ok) - ref).abs().max() <= 1e-5


def test_release_imports_through_cli_and_train_module(tmp_path, compose):
    """Same import code through `python -m omni.mini_omni3.convert import` and train.py's module (init_from=)."""
    sd = random_litgpt(seed=3)
    folder = write_release(tmp_path / "rel", sd)
    ref = ref_logits(sd, IDS)
    out = tmp_path / "mini_omni3.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "omni.mini_omni3.convert", "import", str(folder), str(out),
                          "--model-config", str(TINY_YAML)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    converted = tiny_model()
    load_model_weights(converted, out)  # our own safetensors state dict
    assert (our_logits(converted) - ref).abs().max() <= 1e-5
    from omni.train import build_module

    module = build_module(compose("model=mini_omni3_tiny", "stage=streaming", "data=streaming_sample"), str(folder))
    assert (our_logits(module.model.eval()) - ref).abs().max() <= 1e-5
    # init_from=<the released tower .pth> alone loads the tower (the LLM is untouched)
    only_tower = tiny_model()
    before = our_logits(only_tower)
    load_model_weights(only_tower, folder / "MiniOmni3_ChunkwisedEncoder.pth")
    pth = torch.load(folder / "MiniOmni3_ChunkwisedEncoder.pth", weights_only=True)
    assert all(torch.equal(v, pth[k]) for k, v in only_tower.audio_encoder.tower.state_dict().items())
    assert torch.equal(our_logits(only_tower), before)


# -- item 3: the release's own config is compared with the model's ---------------------------------------------
@pytest.mark.parametrize("key,value,message", [
    ("rope_base", 10000, r"rope_base=10000\.0 but model\.backbone rope_parameters\.rope_theta=1000000\.0"),
    ("norm_eps", 1e-5, r"norm_eps=1e-05 but model\.backbone rms_norm_eps=1e-06"),
    ("n_query_groups", 4, r"n_query_groups=4 but model\.backbone num_key_value_heads=2"),
    ("padded_vocab_size", 640, r"padded_vocab_size=640 but model\.backbone vocab_size \(tokens\.vocab_size\)=576"),
    ("tie_word_embeddings", True, r"tie_word_embeddings=True but model\.backbone tie_word_embeddings=False"),
])
def test_release_config_mismatch_fails_naming_key_and_values(tmp_path, key, value, message):
    # rope base and epsilon have no tensor shape: before the check they loaded silently (shapes all fit)
    folder = write_release(tmp_path / "rel", random_litgpt(), config=litgpt_yaml(**{key: value}))
    with pytest.raises(ValueError, match=message):
        load_model_weights(tiny_model(), folder)
    with pytest.raises(ValueError, match="model_config.yaml"):
        load_model_weights(tiny_model(), folder)


def test_release_tower_config_mismatch_fails(tmp_path):
    folder = write_release(tmp_path / "rel", random_litgpt(), audio={**AUDIO, "n_window": 50})
    with pytest.raises(ValueError, match=r"n_window=50 but model\.encoder n_window=100"):
        load_model_weights(tiny_model(), folder)


# -- fact 2: offline AUDIO_PAD count = the tower's output length for the whole clip in one call ----------------
# Hand-computed from the Qwen2.5-Omni audio tower: F = samples // 160 mel frames; conv2 (k 3, s 2, p 1):
# F2 = (F - 1) // 2 + 1; average pooling (2, 2): N = (F2 - 2) // 2 + 1.
OFFLINE_TABLE = [  # (seconds, mel frames F, after conv2, N, chunks x 10 (the wrong count))
    (2.3, 230, 115, 57, 60),
    (0.9, 90, 45, 22, 30),
    (1.0, 100, 50, 25, 30),
    (0.41, 41, 21, 10, 20),
    (20.0, 2000, 1000, 500, 500),
    (25.0, 2000, 1000, 500, 500),  # capped at 20 s
]


@pytest.mark.parametrize("seconds,mel_frames,conv,n,wrong", OFFLINE_TABLE)
def test_offline_placeholders_are_whole_clip_tower_length(seconds, mel_frames, conv, n, wrong):
    samples = int(round(seconds * SR))
    assert (min(mel_frames, 2000) - 1) // 2 + 1 == conv and (conv - 2) // 2 + 1 == n  # the table's own arithmetic
    assert clip_frames(samples) == n and tower_output_length(mel_frames) == n
    if seconds <= 20:
        assert -(-samples // CHUNK_SAMPLES) * 10 == wrong


def test_offline_row_uses_one_whole_clip_tower_call(tmp_path):
    """A 2.3 s offline row -> 57 AUDIO_PAD whose embeddings are ONE tower call over the whole clip's log-mel."""
    from transformers import AutoTokenizer

    from data.audio import encode_flac
    from data.mini_omni3.builder import offline_row
    from data.mini_omni3.collate import StreamingCollator
    from data.mini_omni3.dataset import StreamingDataset, StreamingIndex
    from data.mini_omni3.schema import SCHEMA

    wav = np.random.default_rng(0).normal(0, 0.1, 36800).astype(np.float32)  # 2.3 s
    path = tmp_path / "d" / "o.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([offline_row("o0", "paris", encode_flac, audio=wav)], schema=SCHEMA), path)
    model = tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "omni" / "assets" / "tiny_tokenizer")
    index = StreamingIndex(str(path), tokenizer, model.tokens, [5, 6])
    ex = StreamingDataset(index, [5, 6])[0]
    seq = ex["sequence"]
    assert seq.ids.count(model.tokens.audio_pad) == 57 and len(seq.audio_positions) == 57
    assert len(seq) == int(index.lengths[0].max())
    batch = StreamingCollator(model.tokens)([ex])
    with torch.no_grad():
        x = model.embed_batch(batch)[0]
        whole = model.audio_encoder.tower(input_features=LogMel(128).clip(wav),
                                          feature_lens=torch.tensor([230])).last_hidden_state
    assert whole.shape[0] == 57
    torch.testing.assert_close(x[seq.audio_positions], whole)


# -- fact 4: whole-stream log-mel; the session computes it incrementally with a 2.5 ms look-ahead --------------
def test_streamed_mel_equals_whole_stream_mel_sliced():
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(1)
    wav = (rng.normal(0, 0.05, 4 * CHUNK_SAMPLES) * np.repeat(rng.uniform(0.2, 3, 64), 400)).astype(np.float32)
    mel = LogMel(128)
    whole = mel.stream(wav)  # (4, 128, 40)
    # whole-stream framing == Whisper's own extractor run on the whole stream, sliced per 40 frames
    fe = WhisperFeatureExtractor(feature_size=128, sampling_rate=SR, hop_length=160, n_fft=400,
                                 n_samples=len(wav), chunk_length=1)
    hf = fe(wav, sampling_rate=SR, return_tensors="np", padding="max_length", max_length=len(wav))["input_features"]
    hf = torch.from_numpy(hf[0]).reshape(128, 4, 40).transpose(0, 1)
    torch.testing.assert_close(whole, hf, rtol=0, atol=1e-4)
    # incremental, in irregular pieces: nothing for chunk 0 until 6400 + 40 samples (2.5 ms look-ahead)
    stream = MelStream(mel)
    assert stream.push(wav[:6400]).shape[0] == 0 and MEL_LOOKAHEAD_MS == 2.5
    got = [stream.push(wav[6400:6439])]
    assert got[0].shape[0] == 0
    got.append(stream.push(wav[6439:6440]))
    assert got[1].shape[0] == 1
    for a in range(6440, len(wav), 3001):
        got.append(stream.push(wav[a: a + 3001]))
    got.append(stream.end())
    streamed = torch.cat(got)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-6)
    # negative control: each chunk's mel in isolation differs at the edge frames (the first 2 read the previous
    # chunk, the last one reads 40 samples of the next), and only there
    isolated = ChunkMel(128)(wav)
    diff = (isolated - whole).abs().amax(dim=1)  # (4 chunks, 40 frames)
    assert diff[1:, :2].min() > 1e-2 and diff[:-1, 39].min() > 1e-2
    assert diff[:, 2:39].max() < 1e-4 and diff[0, :2].max() < 1e-4


def test_session_feeds_whole_stream_mels():
    """The live session's tower input is the whole-stream log-mel, chunk by chunk, whatever the feed sizes."""
    from omni.mini_omni3.replay import replay
    from omni.mini_omni3.session import SessionConfig, StreamingSession

    model = tiny_model()
    seen = []
    encode = model.encode_chunks
    model.encode_chunks = lambda mels: (seen.append(mels.clone()), encode(mels))[1]
    wav = np.random.default_rng(2).normal(0, 0.1, 3 * CHUNK_SAMPLES - 500).astype(np.float32)
    s = StreamingSession(model, None, SessionConfig(temperature=0.0, max_reply_tokens=2), system_ids=[5, 6])
    for a in range(0, len(wav), 2500):
        list(s.feed(wav[a: a + 2500]))
    list(s.flush())
    whole = LogMel(128).stream(np.pad(wav, (0, 500)))
    assert s.chunks_seen == 3 and len(seen) == 3
    torch.testing.assert_close(torch.cat(seen), whole, rtol=0, atol=1e-6)
    assert s.lookahead_ms == 2.5
    del model.encode_chunks
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "omni" / "assets" / "tiny_tokenizer")
    report = replay(model, tokenizer, wav, SessionConfig(temperature=0.0, max_reply_tokens=2))
    assert report["n_chunks"] == 3 and report["mel_lookahead_ms"] == 2.5  # the latency figure names it


# -- fact 5: sessions longer than max_len are truncated (tail dropped), not skipped ------------------------------
def test_long_session_is_truncated_not_skipped(tmp_path):
    from transformers import AutoTokenizer

    from data.audio import encode_flac
    from data.mini_omni3.dataset import StreamingDataset, StreamingIndex
    from data.mini_omni3.schema import SCHEMA, empty_row

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "omni" / "assets" / "tiny_tokenizer")
    model = tiny_model()
    wav = np.random.default_rng(3).normal(0, 0.05, 10 * CHUNK_SAMPLES).astype(np.float32)
    rows = [empty_row(id="long", mode="online", audio=encode_flac(wav, SR), n_chunks=10, duration_s=4.0,
                      reply_chunk=[2, 8], reply_text=["hi", "bye"]),
            empty_row(id="huge", mode="online", audio=encode_flac(wav, SR), n_chunks=10, duration_s=4.0,
                      reply_chunk=[0], reply_text=["hello " * 40])]
    path = tmp_path / "d" / "s.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    n_hi = len(tokenizer.encode("hi", add_special_tokens=False))
    # prefix: ONLINE ENGLISH SYSTEM TEXT_BEGIN 5 6 TEXT_END = 7; a chunk = 13; a reply adds its text + 2.
    # full: 7 + 130 + (n_hi + 2) + (n_bye + 2) > 100. Keep k chunks while 7 + 13 k + [k > 2] (n_hi + 2) <= 100:
    # k = 6 -> 85 + n_hi + 2; k = 7 -> 98 + n_hi + 2 > 100 for any n_hi >= 1. So 6 chunks, the reply on 8 dropped.
    keep, length = 6, 7 + 13 * 6 + n_hi + 2
    index = StreamingIndex(str(path), tokenizer, model.tokens, [5, 6], max_len=100)
    assert [s.row for s in index.skipped] == [1]  # "huge": not even its first chunk (with the reply) fits
    assert index.skipped[0].reason == "too_long"
    assert len(index) == 1 and int(index.lengths[0].max()) == length
    ex = StreamingDataset(index, [5, 6])[0]
    seq = ex["sequence"]
    assert len(seq) == length and seq.n_chunks == keep and seq.reply_chunks == [2]
    assert ex["mels"].shape == (keep, 128, 40) and len(seq.audio_positions) == keep * 10
    assert seq.ids.count(model.tokens.assistant) == keep and seq.ids[-1] == model.tokens.keep_silence
