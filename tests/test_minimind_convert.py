"""Released MiniMind-O weights <-> our model, proved on tiny random weights against an independent
re-implementation of the released forward written from the spec (plain torch ops on the released state dict;
nothing here imports our model code). Also: a Qwen3 decoder layer equals the spec's block, exact round trips
(.pth fp16 / fp32, Transformers folder), weights-only loading."""
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from omni.minimind_o.convert import export_hf, export_pth, infer_config, load_released, main, read_state
from omni.minimind_o.model import MiniMindO, MiniMindOConfig
from tests.test_minimind_model import make_batch, model_raw

torch.set_num_threads(1)
K, V_A, THETA, EPS = 8, 2112, 1e6, 1e-6  # released RMSNorm eps (spec pinned facts)


# ----------------------------------------------------------------------------- the spec's forward, from scratch
def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rope(x, pos):
    """Rotate-half RoPE with base 1e6 over the last dim of x (B, heads, L, hd)."""
    hd = x.shape[-1]
    inv = 1.0 / THETA ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos.double()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(x.dtype), torch.cat([ang.sin()] * 2, -1).to(x.dtype)
    half = torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return x * cos + half * sin


def block(sd, p, x):
    """Pre-norm decoder block: GQA attention with per-head QK-RMSNorm before RoPE, causal; SwiGLU FFN."""
    B, L, _ = x.shape
    hd = sd[p + "self_attn.q_norm.weight"].shape[0]
    h = rms(x, sd[p + "input_layernorm.weight"])
    q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(B, L, -1, hd)
    k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(B, L, -1, hd)
    v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(B, L, -1, hd)
    q, k = rms(q, sd[p + "self_attn.q_norm.weight"]), rms(k, sd[p + "self_attn.k_norm.weight"])
    pos = torch.arange(L)
    q, k, v = rope(q.transpose(1, 2), pos), rope(k.transpose(1, 2), pos), v.transpose(1, 2)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    att = att.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    x = x + (att @ v).transpose(1, 2).reshape(B, L, -1) @ sd[p + "self_attn.o_proj.weight"].T
    h = rms(x, sd[p + "post_attention_layernorm.weight"])
    gate, up = h @ sd[p + "mlp.gate_proj.weight"].T, h @ sd[p + "mlp.up_proj.weight"].T
    return x + (F.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T


def lin(sd, p, x):
    return x @ sd[p + ".weight"].T + (sd[p + ".bias"] if p + ".bias" in sd else 0)


def reference_forward(sd, text, audio, spk=None, audio_feats=None, image_feats=None, speaker_id=2051):
    """Released forward: text (B, L) ids, audio (B, K, L) ids -> text logits (B, L, V), audio (B, K, L, V_a).
    audio_feats / image_feats: encoder outputs (N, E) for the <|audio_pad|> (16) / <|image_pad|> (12) slots."""
    x = sd["model.embed_tokens.weight"][text]
    for pad, feats, name in ((16, audio_feats, "audio_proj"), (12, image_feats, "vision_proj")):
        if feats is not None:
            f = F.layer_norm(feats, feats.shape[-1:], sd[f"{name}.mlp.0.weight"], sd[f"{name}.mlp.0.bias"])
            f = lin(sd, f"{name}.mlp.3", F.gelu(lin(sd, f"{name}.mlp.1", f)))
            x = x.clone()
            x[text == pad] = f
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("model.layers."))
    bridge = None
    for i in range(n):
        x = block(sd, f"model.layers.{i}.", x)
        if i == n // 2 - 1:
            bridge = x
    text_logits = rms(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T

    def proj(p, h):  # Linear -> GELU -> Linear -> RMSNorm
        return rms(lin(sd, p + ".2", F.gelu(lin(sd, p + ".0", h))), sd[p + ".3.weight"])

    code = sum(sd["talker.embed_tokens.base.weight"][audio[:, c]] + lin(
        sd, f"talker.embed_tokens.adapters.{c}.2", F.gelu(sd[f"talker.embed_tokens.adapters.{c}.0.weight"][audio[:, c]]))
        for c in range(K)) / K
    if spk is not None:
        at = audio[:, 0] == speaker_id
        code = torch.where(at[..., None], (spk @ sd["talker.spk_proj.weight"].T)[:, None], code)
    g = proj("talker.embed_proj", bridge) * sd["talker.text_scale"] + proj("talker.codec_proj", code) * sd["talker.audio_scale"]
    for i in range(1 + max(int(k.split(".")[2]) for k in sd if k.startswith("talker.layers."))):
        g = block(sd, f"talker.layers.{i}.", g)
    g = rms(g, sd["talker.norm.weight"])
    audio_logits = torch.stack([lin(sd, "talker.lm_head.base", g) + lin(
        sd, f"talker.lm_head.adapters.{c}.2", F.gelu(lin(sd, f"talker.lm_head.adapters.{c}.0", g))) for c in range(K)], 1)
    return text_logits, audio_logits


def released_state(seed=0, d=32, layers=4, heads=4, kv=2, ffn=48, vocab=512, th=32, tl=2, ad=16, spk=256,
                   audio_dim=64, vision_dim=32, scale=0.2):
    """A random released-format state dict from the spec's name list (nothing from our model code)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * scale  # noqa: E731
    one = lambda n: 1.0 + 0.1 * torch.randn(n, generator=g)  # noqa: E731
    sd = {"model.embed_tokens.weight": r(vocab, d), "model.norm.weight": one(d)}

    def layer(p, h):
        hd = h // heads
        sd.update({p + "self_attn.q_proj.weight": r(heads * hd, h), p + "self_attn.k_proj.weight": r(kv * hd, h),
                   p + "self_attn.v_proj.weight": r(kv * hd, h), p + "self_attn.o_proj.weight": r(h, heads * hd),
                   p + "self_attn.q_norm.weight": one(hd), p + "self_attn.k_norm.weight": one(hd),
                   p + "mlp.gate_proj.weight": r(ffn, h), p + "mlp.up_proj.weight": r(ffn, h),
                   p + "mlp.down_proj.weight": r(h, ffn), p + "input_layernorm.weight": one(h),
                   p + "post_attention_layernorm.weight": one(h)})

    for i in range(layers):
        layer(f"model.layers.{i}.", d)
    for i in range(tl):
        layer(f"talker.layers.{i}.", th)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    sd.update({"talker.norm.weight": one(th), "talker.lm_head.base.weight": r(V_A, th),
               "talker.embed_tokens.base.weight": r(V_A, th), "talker.text_scale": torch.tensor(3.0),
               "talker.audio_scale": torch.tensor(1.0), "talker.spk_proj.weight": r(th, spk)})
    for c in range(K):
        sd.update({f"talker.lm_head.adapters.{c}.0.weight": r(ad, th), f"talker.lm_head.adapters.{c}.2.weight": r(V_A, ad),
                   f"talker.embed_tokens.adapters.{c}.0.weight": r(V_A, ad),
                   f"talker.embed_tokens.adapters.{c}.2.weight": r(th, ad)})
    for name, d_in, d_out in (("talker.codec_proj", th, th), ("talker.embed_proj", d, th)):
        sd.update({f"{name}.0.weight": r(d_in, d_in), f"{name}.0.bias": r(d_in), f"{name}.2.weight": r(d_out, d_in),
                   f"{name}.2.bias": r(d_out), f"{name}.3.weight": one(d_out)})
    for name, e in (("audio_proj", audio_dim), ("vision_proj", vision_dim)):
        sd.update({f"{name}.mlp.0.weight": one(e), f"{name}.mlp.0.bias": r(e), f"{name}.mlp.1.weight": r(d, e),
                   f"{name}.mlp.1.bias": r(d), f"{name}.mlp.3.weight": r(d, d), f"{name}.mlp.3.bias": r(d)})
    return sd


@pytest.fixture(scope="module")
def base():
    return MiniMindOConfig(**model_raw("minimind_o_tiny"))


@pytest.fixture(scope="module")
def released(tmp_path_factory, base):
    path = tmp_path_factory.mktemp("released") / "sft_omni_32.pth"
    torch.save({k: v.half() for k, v in released_state().items()}, path)  # released weights ship as fp16
    return path


def test_qwen3_decoder_layer_is_the_spec_block():
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RotaryEmbedding

    sd = {k[len("model.layers.0."):]: v for k, v in released_state(seed=3).items() if k.startswith("model.layers.0.")}
    cfg = Qwen3Config(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      rms_norm_eps=EPS, rope_parameters={"rope_type": "default", "rope_theta": THETA}, vocab_size=8)
    cfg._attn_implementation = "sdpa"
    layer = Qwen3DecoderLayer(cfg, 0)
    layer.load_state_dict(sd)
    x = torch.randn(2, 7, 32)
    pos = torch.arange(7)[None]
    ours = layer(x, attention_mask=None, position_embeddings=Qwen3RotaryEmbedding(cfg)(x, pos), position_ids=pos)
    assert torch.allclose(ours, block(sd, "", x), atol=1e-5)


def test_import_matches_the_reference_forward(released, base):
    model = load_released(released, base).eval()
    assert model.cfg.thinker["num_hidden_layers"] == 4 and model.cfg.talker_layers == 2 and model.cfg.bridge_layer == 1
    sd = {k: v.float() for k, v in read_state(released)[0].items()}
    batch = make_batch(model.cfg, seed=5)  # T2A (speaker + reference), A2A (audio pads), I2T (image pads)
    with torch.no_grad():
        h, g = model.hidden(batch)
        ours_text = model.text_logits(h)
        ours_audio = torch.stack([model.audio_logits(g, c) for c in range(K)], 1)
        enc = model.side_module("audio_encoder")(batch["audio_mels"])
        audio_feats = enc[0, : int(batch["audio_frames"][0])]
        img = model.side_module("vision_encoder")(pixel_values=batch["pixel_values"]).last_hidden_state[0]
        ref_text, ref_audio = reference_forward(sd, batch["input_ids"][:, 8], batch["input_ids"][:, :8],
                                                batch["speaker_emb"], audio_feats, img)
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours_text[real], ref_text[real], atol=2e-4)
    assert torch.allclose(ours_audio.transpose(1, 2)[real], ref_audio.transpose(1, 2)[real], atol=2e-4)


def test_round_trips_are_exact(released, base, tmp_path):
    model = load_released(released, base)
    src = read_state(released)[0]
    out = export_pth(model, tmp_path / "again.pth")  # fp16 like the release
    again = torch.load(out, weights_only=True)
    assert set(again) == set(src) and all(torch.equal(again[k], src[k]) for k in src)
    fp32 = load_released(export_pth(model, tmp_path / "fp32.pth", dtype=None), base)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fp32.state_dict().values()))
    folder = export_hf(model, tmp_path / "hf")
    from_hf = load_released(folder, base)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), from_hf.state_dict().values()))
    from transformers import Qwen3ForCausalLM

    thinker = Qwen3ForCausalLM.from_pretrained(folder / "thinker")
    assert torch.equal(thinker.model.layers[3].mlp.up_proj.weight, model.thinker.model.layers[3].mlp.up_proj.weight)


def test_cli_import_feeds_init_from_and_exports(released, tmp_path, compose):
    from omni.train import build_module

    out = tmp_path / "imported.pt"
    assert main(["import", str(released), str(out), "--base", "minimind_o_tiny"]) == 0
    module = build_module(compose("model=minimind_o_tiny", "data=minimind_sample", "stage=sft_t2a",
                                  "model.cfg.thinker.intermediate_size=48", "model.cfg.thinker.hidden_size=32",
                                  "model.cfg.thinker.head_dim=8", "model.cfg.talker_hidden=32",
                                  "+model.cfg.talker.intermediate_size=48", "model.cfg.adapter_dim=16"),
                          init_from=str(out))
    src = read_state(released)[0]
    assert torch.equal(module.model.talker.spk_proj.weight, src["talker.spk_proj.weight"].float())
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
                "omni_config": module.run_config}, ckpt)
    assert main(["to-pth", str(ckpt), str(tmp_path / "x.pth")]) == 0
    back = torch.load(tmp_path / "x.pth", weights_only=True)
    assert all(torch.equal(back[k], src[k]) for k in src)


def test_loading_never_runs_pickled_code(tmp_path, base):
    class Boom:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model.embed_tokens.weight": Boom()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_released(path, base)


def test_moe_weights_are_inferred(base):
    sd = released_state()
    for prefix in [f"model.layers.{i}." for i in range(4)] + [f"talker.layers.{i}." for i in range(2)]:
        h = sd[prefix + "input_layernorm.weight"].shape[0]
        mlp = {n: sd.pop(prefix + f"mlp.{n}.weight") for n in ("gate_proj", "up_proj", "down_proj")}
        sd[prefix + "mlp.gate.weight"] = torch.randn(2, h)
        for e in range(2):
            sd.update({prefix + f"mlp.experts.{e}.{n}.weight": w.clone() for n, w in mlp.items()})
    cfg = infer_config(sd, base, {"num_experts_per_tok": 1})
    assert cfg.moe["n_experts"] == 2 and cfg.moe["top_k"] == 1
    model = MiniMindO(cfg)
    assert set(model.state_dict()) - {"thinker.lm_head.weight"} == {
        k if not k.startswith("model.") else "thinker." + k for k in sd if k != "lm_head.weight"}
