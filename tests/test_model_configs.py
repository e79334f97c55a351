"""Every model config in conf/model/ builds (on the meta device: no memory, no weights) with the parameter count
computed here by hand from its dimensions and the spec's part tables (spec/mini_omni.md, spec/minimind_o.md,
spec/mini_omni3.md); the spec's own totals (MiniMind-O 113.13M / 38.58M) are checked against the same formulas."""
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONF, compose_cfg

torch.set_num_threads(1)
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
STAGE = {"minimind_o": "sft_t2a", "mini_omni3": "streaming"}  # a stage of the model's family (else Mini-Omni's)


def qwen_layer(h: int, inter: int, heads: int, kv_heads: int, head_dim: int, qkv_bias: bool, qk_norm: bool) -> int:
    """One Qwen2 / Qwen3 decoder layer: q/k/v (bias in Qwen2), o without bias, SwiGLU (3 matrices, no bias),
    two RMSNorms; Qwen3 adds per-head q/k RMSNorms."""
    q, kv = heads * head_dim, kv_heads * head_dim
    attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if qkv_bias else 0) + (2 * head_dim if qk_norm else 0)
    return attn + 3 * h * inter + 2 * h


def whisper_layer(d: int, ffn: int) -> int:
    """Whisper / Qwen2.5-Omni audio encoder layer: q, v, o with bias, k without; 2 LayerNorms; fc1, fc2."""
    return 4 * d * d + 3 * d + 2 * d + (d * ffn + ffn) + (ffn * d + d) + 2 * d


def whisper_encoder(c: dict) -> tuple[int, int]:
    """(total, frozen): two convs (kernel 3), learned positions (frozen), layers, final LayerNorm."""
    d = c["d_model"]
    convs = c["num_mel_bins"] * d * 3 + d + d * d * 3 + d
    positions = c["max_source_positions"] * d
    return convs + positions + c["encoder_layers"] * whisper_layer(d, c["encoder_ffn_dim"]) + 2 * d, positions


def swiglu(d_in: int, hidden: int, d_out: int) -> int:
    """W3(silu(W1 x) * W2 x), no biases (spec/mini_omni.md: fc_1, fc_2, proj weights only)."""
    return 2 * d_in * hidden + hidden * d_out


def mini_omni(c: dict) -> tuple[int, int]:
    t, b = c["tokens"], c["backbone"]
    vocab = t["text_vocab"] + t["text_specials"] + t["n_audio_layers"] * (t["codebook_size"] + t["audio_specials"])
    h, heads = b["hidden_size"], b["num_attention_heads"]
    layer = qwen_layer(h, b["intermediate_size"], heads, b["num_key_value_heads"], h // heads, True, False)
    backbone = 2 * vocab * h + b["num_hidden_layers"] * layer + h  # embedding + untied head (one 181120-row table)
    encoder, frozen = whisper_encoder(c["whisper"])
    total = backbone + encoder + swiglu(c["whisper"]["d_model"], c["adapter_hidden"], h)
    if c.get("vision"):  # Mini-Omni2: CLIP ViT (+ visual projection, no bias) and the SwiGLU vision adapter
        v = c["vision"]
        hd, n_pos = v["hidden_size"], (v["image_size"] // v["patch_size"]) ** 2 + 1
        clip_layer = 4 * (hd * hd + hd) + 2 * hd + (hd * v["intermediate_size"] + v["intermediate_size"]) + \
            (v["intermediate_size"] * hd + hd) + 2 * hd
        clip = hd + 3 * hd * v["patch_size"] ** 2 + n_pos * hd + 2 * hd + v["num_hidden_layers"] * clip_layer + \
            2 * hd + hd * v["projection_dim"]
        total += clip + swiglu(v["projection_dim"], c["vision_adapter_hidden"], h)
    return total, frozen


def minimind_o(c: dict) -> tuple[int, int]:
    """spec/minimind_o.md 'Parts': Thinker (tied head), Talker blocks + norm, Talker head and code embedding
    (shared + 8 per-codebook adapters, no biases), codec_proj / embed_proj (2 Linear with bias + RMSNorm),
    2 scales, spk_proj (no bias), audio / vision projectors (LayerNorm + 2 Linear with bias). Encoders are not
    parameters."""
    t, th = c["tokens"], c["thinker"]
    h, talker, a = th["hidden_size"], c["talker_hidden"], c["adapter_dim"]
    audio_vocab, n_cb = t["codebook_size"] + t["audio_specials"], t["n_codebooks"]
    dims = (th["intermediate_size"], th["num_attention_heads"], th["num_key_value_heads"], th["head_dim"])
    thinker = t["text_vocab"] * h + th["num_hidden_layers"] * qwen_layer(h, *dims, False, True) + h
    blocks = c["talker_layers"] * qwen_layer(talker, *dims, False, True) + talker
    head = talker * audio_vocab + n_cb * (talker * a + a * audio_vocab)
    code_embedding = audio_vocab * talker + n_cb * (audio_vocab * a + a * talker)
    codec_proj = 2 * (talker * talker + talker) + talker
    embed_proj = (h * h + h) + (h * talker + talker) + talker
    spk = c["spk_dim"] * talker
    enc_d, vis_d = c["audio_encoder"]["config"]["d_model"], c["vision_encoder"]["config"]["hidden_size"]
    projector = lambda d: 2 * d + (d * h + h) + (h * h + h)  # noqa: E731
    return (thinker + blocks + head + code_embedding + codec_proj + embed_proj + 2 + spk + projector(enc_d)
            + projector(vis_d)), 0


def mini_omni3(c: dict) -> tuple[int, int]:
    """Qwen2 LLM (tied or not) + the Qwen2.5-Omni audio tower: Whisper-like layers with sinusoidal positions (a
    buffer), ln_post, the output projection (with bias) and its 2-row audio_bos_eos embedding."""
    b, e = c["backbone"], c["encoder"]
    vocab = c["tokens"]["vocab_size"]
    h, heads = b["hidden_size"], b["num_attention_heads"]
    layer = qwen_layer(h, b["intermediate_size"], heads, b["num_key_value_heads"], h // heads, True, False)
    llm = (1 if b["tie_word_embeddings"] else 2) * vocab * h + b["num_hidden_layers"] * layer + h
    d, out = e["d_model"], e["output_dim"]
    tower = e["num_mel_bins"] * d * 3 + d + d * d * 3 + d + e["encoder_layers"] * whisper_layer(d, e["encoder_ffn_dim"]) \
        + 2 * d + (d * out + out) + 2 * out
    assert out == h, "a projection tower -> LLM width is not counted here"
    return llm + tower, 0


def model_node(name: str) -> tuple[str, dict]:
    """(family folder, resolved model.cfg) of conf/model/<name>.yaml, composed like `python train.py model=<name>`."""
    family = OmegaConf.to_container(compose_cfg([f"model={name}"], Path("/tmp")).model)["_target_"].split(".")[1]
    over = [f"model={name}"] + ([f"stage={STAGE[family]}"] if family in STAGE else [])
    cfg = compose_cfg(over, Path("/tmp")).model
    raw = OmegaConf.to_container(cfg.cfg, resolve=True)
    if family == "mini_omni3":  # the token table's rows: released 151936, or the tiny tokenizer + controls padded
        from omni.mini_omni3.tokens import MiniOmni3Tokens

        tok = raw["tokens"]
        raw["tokens"] = {"vocab_size": MiniOmni3Tokens.after_vocab(tok["after_vocab"], tok["pad_to"]).vocab_size
                         if "after_vocab" in tok else 151936}
    return family, raw


EXPECTED = {"mini_omni": mini_omni, "minimind_o": minimind_o, "mini_omni3": mini_omni3}


@pytest.mark.parametrize("name", MODELS)
def test_model_config_parameter_count(name):
    family, raw = model_node(name)
    total, frozen = EXPECTED[family](raw)
    cfg = compose_cfg([f"model={name}"] + ([f"stage={STAGE[family]}"] if family in STAGE else []), Path("/tmp"))
    with torch.device("meta"):
        model = hydra.utils.instantiate(cfg.model)
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    assert sum(p.numel() for p in params) == total, name
    assert sum(p.numel() for p in params if not p.requires_grad) == frozen, name


def test_tiny_after_vocab_table_rows():
    """The tiny Mini-Omni3 table: 512 tokenizer ids + 18 controls (512..529) padded to a multiple of 64 = 576
    (conf/model/mini_omni3_tiny.yaml); what the count above relies on."""
    from omni.mini_omni3.tokens import MiniOmni3Tokens

    assert MiniOmni3Tokens.after_vocab(512, 64).vocab_size == 576


def test_spec_totals():
    """The formulas reproduce the spec's published totals: minimind-3o 113.13M trainable (README: 113,131,266),
    the benchmark size 38.58M; a Talker head / code embedding with biases (a plausible misreading) would not."""
    _, full = model_node("minimind_o")
    assert minimind_o(full)[0] == 113_131_266
    _, bench = model_node("minimind_o_512")
    assert round(minimind_o(bench)[0] / 1e6, 2) == 38.58
    # spec part rows: Thinker 63.9M, Talker blocks 29.5M, projectors 0.99M / 1.18M
    th = full["thinker"]
    dims = (th["intermediate_size"], th["num_attention_heads"], th["num_key_value_heads"], th["head_dim"])
    assert round((6400 * 768 + 8 * qwen_layer(768, *dims, False, True) + 768) / 1e6, 1) == 63.9
    assert round(4 * qwen_layer(768, *dims, False, True) / 1e6, 1) == 29.5
    with_bias = minimind_o(full)[0] + 2112 + 8 * (256 + 2112) + 8 * 768  # head + adapter biases, code adapter bias
    assert round(with_bias / 1e6, 2) != 113.13
    # Mini-Omni: Qwen2-0.5B dims with the 181,120-row table, untied head (spec/mini_omni.md)
    _, mo = model_node("mini_omni")
    t = mo["tokens"]
    assert t["text_vocab"] + t["text_specials"] + t["n_audio_layers"] * (t["codebook_size"] + t["audio_specials"]) \
        == 181_120
