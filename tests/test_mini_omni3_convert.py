"""Import of a released Mini-Omni3 folder, proved on tiny random weights: litgpt safetensors shards + index,
model_config.yaml, tower .pth + nested audio config. Logits are compared with an independent float64
re-implementation of the litgpt Qwen2 forward written here from the specs (fused `attn.attn` grouped per KV
group, fused `attn.qkv` as [all q | all k | all v] blocks, RMSNorm, rotate-half RoPE, SwiGLU), with the chunk
frames of the Hugging Face audio tower in place of the PADs."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from omni.checkpoint import load_model_weights
from omni.mini_omni3.convert import load_release, main
from omni.mini_omni3.encoder import ChunkwiseAudioEncoder, LogMel, audio_config
from omni.mini_omni3.layout import Reply, online_sequence
from omni.mini_omni3.model import MiniOmni3, MiniOmni3Config
from omni.mini_omni3.tokens import MiniOmni3Tokens

ROOT = Path(__file__).resolve().parents[1]
N_LAYER, N_HEAD, N_GROUPS, N_EMBD, HEAD, MLP, VOCAB = 2, 4, 2, 64, 16, 96, 576
ROPE_BASE = 10000.0  # not the tiny default: the importer must carry it over
TOK = MiniOmni3Tokens.after_vocab(512)
AUDIO = dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16,
             output_dim=N_EMBD, max_source_positions=1500, n_window=100)


def litgpt_yaml(tied: bool) -> dict:
    """Qwen2.5-style litgpt Config fields (current litgpt spells the qkv bias `attn_bias`)."""
    return dict(name="tiny-mini-omni3", block_size=512, vocab_size=VOCAB, padded_vocab_size=VOCAB, n_layer=N_LAYER,
                n_head=N_HEAD, head_size=HEAD, n_embd=N_EMBD, n_query_groups=N_GROUPS, rotary_percentage=1.0,
                parallel_residual=False, bias=False, attn_bias=True, lm_head_bias=False,
                norm_class_name="RMSNorm", norm_eps=1e-6, mlp_class_name="LLaMAMLP", intermediate_size=MLP,
                rope_base=ROPE_BASE, tie_word_embeddings=tied)


def random_litgpt(qkv: str, tied: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def lin(r, c):
        return torch.randn(r, c, generator=g) / math.sqrt(c)

    rows = (N_HEAD + 2 * N_GROUPS) * HEAD
    sd = {"transformer.wte.weight": torch.randn(VOCAB, N_EMBD, generator=g),
          "transformer.ln_f.weight": 1 + 0.2 * torch.randn(N_EMBD, generator=g)}
    if not tied:
        sd["lm_head.weight"] = lin(VOCAB, N_EMBD)
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        sd.update({p + "norm_1.weight": 1 + 0.2 * torch.randn(N_EMBD, generator=g),
                   p + "norm_2.weight": 1 + 0.2 * torch.randn(N_EMBD, generator=g),
                   p + f"{qkv}.weight": lin(rows, N_EMBD), p + f"{qkv}.bias": 0.5 * torch.randn(rows, generator=g),
                   p + "attn.proj.weight": lin(N_EMBD, N_HEAD * HEAD), p + "mlp.fc_1.weight": lin(MLP, N_EMBD),
                   p + "mlp.fc_2.weight": lin(MLP, N_EMBD), p + "mlp.proj.weight": lin(N_EMBD, MLP)})
    return sd


def write_release(folder: Path, sd: dict, tied: bool) -> Path:
    """The released layout: 2 safetensors shards + index, model_config.yaml, tokenizer, tower .pth + config."""
    folder.mkdir(parents=True)
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        save_file({k: sd[k].contiguous() for k in ks}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model_config.yaml").write_text(yaml.safe_dump(litgpt_yaml(tied)))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(ROOT / "omni" / "assets" / "tiny_tokenizer" / name, folder / name)
    torch.manual_seed(1)
    tower = ChunkwiseAudioEncoder(audio_config(AUDIO)).tower
    torch.save(tower.state_dict(), folder / "MiniOmni3_ChunkwisedEncoder.pth")
    (folder / "qwen25OmniConfig").mkdir()
    (folder / "qwen25OmniConfig" / "config.json").write_text(json.dumps(
        {"model_type": "qwen2_5_omni", "thinker_config": {"audio_config": AUDIO}}))
    return folder


# -- independent reference: litgpt forward in plain float64 torch ------------------------------------------------
def ref_rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ref_rope(x, base):
    """x (heads, L, S): rotate-half RoPE over the whole head (litgpt build_rope_cache / apply_rope)."""
    L, S = x.shape[-2:]
    theta = 1.0 / (base ** (torch.arange(0, S, 2, dtype=torch.float64) / S))
    ang = torch.outer(torch.arange(L, dtype=torch.float64), theta).repeat(1, 2)
    return x * ang.cos() + torch.cat([-x[..., S // 2:], x[..., : S // 2]], -1) * ang.sin()


def ref_forward(sd, ids, frames, positions, qkv):
    """ids (L,), frames (n, D) written at `positions` -> logits (L, V)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = sd["transformer.wte.weight"][ids].clone()
    x[positions] = frames.double()
    L, q_per_kv = len(ids), N_HEAD // N_GROUPS
    causal = torch.full((L, L), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        h = ref_rms(x, sd[p + "norm_1.weight"])
        out = h @ sd[p + f"{qkv}.weight"].T + sd[p + f"{qkv}.bias"]
        if qkv == "attn.attn":  # legacy: [q heads of group g, k_g, v_g] per KV group
            fused = out.view(L, N_GROUPS, q_per_kv + 2, HEAD)
            q = fused[:, :, :q_per_kv].reshape(L, N_HEAD, HEAD).transpose(0, 1)  # head h = group h // q_per_kv
            k = fused[:, :, q_per_kv].transpose(0, 1).repeat_interleave(q_per_kv, 0)
            v = fused[:, :, q_per_kv + 1].transpose(0, 1).repeat_interleave(q_per_kv, 0)
        else:  # attn.qkv: all H query heads, then all G key heads, then all G value heads
            q = out[:, : N_HEAD * HEAD].view(L, N_HEAD, HEAD).transpose(0, 1)
            k = out[:, N_HEAD * HEAD: (N_HEAD + N_GROUPS) * HEAD].view(L, N_GROUPS, HEAD).transpose(0, 1)
            v = out[:, (N_HEAD + N_GROUPS) * HEAD:].view(L, N_GROUPS, HEAD).transpose(0, 1)
            k, v = k.repeat_interleave(q_per_kv, 0), v.repeat_interleave(q_per_kv, 0)
        q, k = ref_rope(q, ROPE_BASE), ref_rope(k, ROPE_BASE)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(HEAD) + causal, -1) @ v  # (H, L, S)
        x = x + att.transpose(0, 1).reshape(L, -1) @ sd[p + "attn.proj.weight"].T
        h = ref_rms(x, sd[p + "norm_2.weight"])
        gate = torch.nn.functional.silu(h @ sd[p + "mlp.fc_1.weight"].T) * (h @ sd[p + "mlp.fc_2.weight"].T)
        x = x + gate @ sd[p + "mlp.proj.weight"].T
    head = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    return ref_rms(x, sd["transformer.ln_f.weight"]) @ head.T


def session_inputs(folder: Path):
    seq = online_sequence(TOK, [5, 6, 7], 2, {1: Reply((40, 41), "happy")})
    wav = np.random.default_rng(3).normal(0, 0.1, 2 * 6400).astype(np.float32)
    mels = LogMel(128).stream(wav)
    tower = ChunkwiseAudioEncoder(audio_config(path=str(folder / "qwen25OmniConfig")))
    tower.tower.load_state_dict(torch.load(folder / "MiniOmni3_ChunkwisedEncoder.pth", weights_only=True))
    with torch.no_grad():
        frames = tower.eval()(mels).reshape(-1, N_EMBD)
    return seq, mels, frames


def our_logits(model, seq, mels):
    with torch.no_grad():
        frames = model.project(model.encode_chunks(mels)).reshape(-1, N_EMBD)
        x = model.embed(torch.tensor([seq.ids]), frames, torch.tensor(seq.audio_positions))
        return model.logits(model.hidden(x).last_hidden_state[0]).double()


@pytest.mark.parametrize("qkv,tied", [("attn.attn", False), ("attn.qkv", True)])
def test_released_folder_logit_parity(tmp_path, qkv, tied):
    sd = random_litgpt(qkv, tied)
    folder = write_release(tmp_path / "Mini-Omni3", sd, tied)
    model = load_release(folder, MiniOmni3Config(tokens=TOK))
    assert model.cfg.tokenizer_path == str(folder) and model.backbone.config.tie_word_embeddings == tied
    assert model.backbone.config.rope_parameters["rope_theta"] == ROPE_BASE
    seq, mels, frames = session_inputs(folder)
    ref = ref_forward(sd, torch.tensor(seq.ids), frames, torch.tensor(seq.audio_positions), qkv)
    ours = our_logits(model, seq, mels)
    assert ref.shape == ours.shape == (len(seq.ids), VOCAB)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    wrong_frames = ref_forward(sd, torch.tensor(seq.ids), frames.flip(0), torch.tensor(seq.audio_positions), qkv)
    assert not torch.allclose(ours, wrong_frames, atol=1e-2)  # the comparison sees the injected frames


def test_cli_import_then_init_from(tmp_path):
    sd = random_litgpt("attn.attn", tied=True, seed=2)
    folder = write_release(tmp_path / "rel", sd, tied=True)
    out = tmp_path / "mini_omni3.safetensors"
    assert main(["import", str(folder), str(out), "--model-config", str(ROOT / "conf/model/mini_omni3_tiny.yaml")]) == 0
    released = load_release(folder, MiniOmni3Config(tokens=TOK))
    # a model built from the run config (random init, no encoder_path) picks everything up via init_from
    cfg = MiniOmni3Config(**{**released.cfg.__dict__, "encoder_path": None})
    fresh = MiniOmni3(cfg)
    load_model_weights(fresh, out)
    seq, mels, _ = session_inputs(folder)
    torch.testing.assert_close(our_logits(fresh.eval(), seq, mels), our_logits(released, seq, mels))


def test_init_from_released_folder(tmp_path):
    """`init_from=<released Mini-Omni3 folder>` loads the LLM weights straight into a MiniOmni3 model."""
    sd = random_litgpt("attn.attn", tied=True, seed=4)
    folder = write_release(tmp_path / "rel", sd, tied=True)
    released = load_release(folder, MiniOmni3Config(tokens=TOK))
    fresh = MiniOmni3(MiniOmni3Config(**{**released.cfg.__dict__, "encoder_path": None}))
    fresh.audio_encoder.load_state_dict(released.audio_encoder.state_dict())  # tower: from cfg.encoder_path
    load_model_weights(fresh, folder)
    seq, mels, _ = session_inputs(folder)
    torch.testing.assert_close(our_logits(fresh.eval(), seq, mels), our_logits(released, seq, mels))


def test_bad_release_folders(tmp_path):
    sd = random_litgpt("attn.attn", tied=False)
    del sd["transformer.h.1.mlp.fc_2.weight"]
    folder = write_release(tmp_path / "a", sd, tied=False)
    with pytest.raises(ValueError, match=r"missing=\['transformer.h.1.mlp.fc_2.weight'\]"):
        load_release(folder, MiniOmni3Config(tokens=TOK))
    (folder / "MiniOmni3_ChunkwisedEncoder.pth").unlink()
    with pytest.raises(FileNotFoundError, match="MiniOmni3_ChunkwisedEncoder.pth"):
        load_release(folder, MiniOmni3Config(tokens=TOK))
    ok = write_release(tmp_path / "b", random_litgpt("attn.attn", tied=False), tied=False)
    torch.save({"conv1.weight": torch.zeros(1), "evil": np.float64}, ok / "MiniOmni3_ChunkwisedEncoder.pth")
    with pytest.raises(ValueError, match="refused"):
        load_release(ok, MiniOmni3Config(tokens=TOK))
