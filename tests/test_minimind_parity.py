"""MiniMind-O release parity (issue 12): each fact pinned by comparison with the released code (spec
"Facts pinned by comparison with the released code (2026-12)") has one test here.

Weight-format facts are checked on release-format weights built from random numbers (the spec's name list, no
model code), imported through `init_from=` (`omni.checkpoint.load_model_weights`) and the converter CLI, against
an independent forward written below from the spec in float64 (ours runs in fp32; <= 1e-5). Each has a negative
control: the plausible wrong variant (eps 1e-5, another bridge layer, top-1 scaled by its probability) gives
logits that differ by far more than the tolerance, so the test is known to detect the mistake.
Data facts are checked against hand-drawn tables with a readable toy tokenizer.
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omni.checkpoint import load_model_weights
from omni.minimind_o.convert import init_from, main
from omni.minimind_o.model import MiniMindO, MiniMindOConfig
from tests.test_minimind_convert import released_state
from tests.test_minimind_model import model_raw

torch.set_num_threads(1)
K, V_A, SPEAKER = 8, 2112, 2051
TOL = 1e-5
# the tiny config's sizes (conf/model/minimind_o_tiny.yaml), so the release fits it without overrides
TINY = dict(d=64, layers=4, heads=4, kv=2, ffn=192, vocab=512, th=64, tl=2, ad=32, spk=256, audio_dim=64, vision_dim=32,
            scale=0.1)  # logits of order 1, so fp32 rounding stays under TOL


# ------------------------------------------------------------------------- the released forward, from the spec
def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    """Rotate-half RoPE over the last dim of x (B, heads, L, hd), positions 0..L-1."""
    hd, L = x.shape[-1], x.shape[-2]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    return x * cos + torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin


def swiglu(sd, p, h):
    return (F.silu(h @ sd[p + "gate_proj.weight"].T) * (h @ sd[p + "up_proj.weight"].T)) @ sd[p + "down_proj.weight"].T


def ffn(sd, p, h, top1_scaled):
    """Dense SwiGLU, or MoE: softmax gate, top-1 expert; released: its weight renormalised to 1 (the negative
    control `top1_scaled` multiplies by the softmax probability instead)."""
    if p + "mlp.gate.weight" not in sd:
        return swiglu(sd, p + "mlp.", h)
    probs = (h @ sd[p + "mlp.gate.weight"].T).softmax(-1)  # (B, L, E)
    best, idx = probs.max(-1)
    out = torch.zeros_like(h)
    for e in range(probs.shape[-1]):
        y = swiglu(sd, f"{p}mlp.experts.{e}.", h) * (best[..., None] if top1_scaled else 1.0)
        out = torch.where((idx == e)[..., None], y, out)
    return out


def block(sd, p, x, eps, theta, top1_scaled):
    """Pre-norm decoder block: GQA attention with per-head QK-RMSNorm before RoPE, causal; SwiGLU / MoE FFN."""
    B, L, _ = x.shape
    hd = sd[p + "self_attn.q_norm.weight"].shape[0]
    h = rms(x, sd[p + "input_layernorm.weight"], eps)
    q, k, v = ((h @ sd[f"{p}self_attn.{n}_proj.weight"].T).view(B, L, -1, hd) for n in "qkv")
    q, k = rms(q, sd[p + "self_attn.q_norm.weight"], eps), rms(k, sd[p + "self_attn.k_norm.weight"], eps)
    q, k, v = rope(q.transpose(1, 2), theta), rope(k.transpose(1, 2), theta), v.transpose(1, 2)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    att = att.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    x = x + (att @ v).transpose(1, 2).reshape(B, L, -1) @ sd[p + "self_attn.o_proj.weight"].T
    return x + ffn(sd, p, rms(x, sd[p + "post_attention_layernorm.weight"], eps), top1_scaled)


def lin(sd, p, x):
    return x @ sd[p + ".weight"].T + (sd[p + ".bias"] if p + ".bias" in sd else 0)


def released_forward(sd, text, audio, spk, eps=1e-6, bridge=None, theta=1e6, top1_scaled=False):
    """text (B, L), audio (B, K, L) ids, spk (B, S) -> text logits (B, L, V), audio logits (B, K, L, V_a).
    Bridge: the state after Thinker layer `bridge` (default: the released rule num_layers // 2 - 1)."""
    sd = {k: v.double() for k, v in sd.items()}
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("model.layers."))
    bridge = n // 2 - 1 if bridge is None else bridge
    x, states = sd["model.embed_tokens.weight"][text], []
    for i in range(n):
        x = block(sd, f"model.layers.{i}.", x, eps, theta, top1_scaled)
        states.append(x)
    text_logits = rms(x, sd["model.norm.weight"], eps) @ sd["model.embed_tokens.weight"].T  # tied head

    def proj(p, h):  # Linear -> GELU -> Linear -> RMSNorm
        return rms(lin(sd, p + ".2", F.gelu(lin(sd, p + ".0", h))), sd[p + ".3.weight"], eps)

    code = sum(sd["talker.embed_tokens.base.weight"][audio[:, c]] + lin(
        sd, f"talker.embed_tokens.adapters.{c}.2", F.gelu(sd[f"talker.embed_tokens.adapters.{c}.0.weight"][audio[:, c]]))
        for c in range(K)) / K
    code = torch.where((audio[:, 0] == SPEAKER)[..., None], (spk.double() @ sd["talker.spk_proj.weight"].T)[:, None], code)
    g = proj("talker.embed_proj", states[bridge]) * sd["talker.text_scale"] \
        + proj("talker.codec_proj", code) * sd["talker.audio_scale"]
    for i in range(1 + max(int(k.split(".")[2]) for k in sd if k.startswith("talker.layers."))):
        g = block(sd, f"talker.layers.{i}.", g, eps, theta, top1_scaled)
    g = rms(g, sd["talker.norm.weight"], eps)
    audio_logits = torch.stack([lin(sd, "talker.lm_head.base", g) + lin(
        sd, f"talker.lm_head.adapters.{c}.2", F.gelu(lin(sd, f"talker.lm_head.adapters.{c}.0", g)))
        for c in range(K)], 1)
    return text_logits, audio_logits


def inputs(vocab=512, L=12, seed=1):
    """A T2A-like batch: text ids, audio ids with the SPEAKER at position 2 and codes afterwards, a speaker emb."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(30, vocab, (2, L), generator=g)
    audio = torch.randint(0, 2048, (2, K, L), generator=g)
    audio[:, :, :2] = 2049  # PAD
    audio[:, :, 2] = SPEAKER
    return text, audio, torch.randn(2, 256, generator=g)


def ours(model, text, audio, spk):
    batch = {"input_ids": torch.cat([audio, text[:, None]], 1), "speaker_emb": spk}
    with torch.no_grad():
        h, g = model.eval().hidden(batch)
        return model.text_logits(h), torch.stack([model.audio_logits(g, c) for c in range(K)], 1)


def differ(a, b):
    return float((a.double() - b.double()).abs().max())


def moe_state(seed=0, experts=2, **dims):
    """released_state with every FFN (Thinker and Talker) an MoE: `mlp.gate.weight` + `mlp.experts.E.*`."""
    sd = released_state(seed=seed, **dims)
    g = torch.Generator().manual_seed(seed + 100)
    for p in [k[: -len("mlp.gate_proj.weight")] for k in list(sd) if k.endswith("mlp.gate_proj.weight")]:
        mlp = {n: sd.pop(p + f"mlp.{n}.weight") for n in ("gate_proj", "up_proj", "down_proj")}
        sd[p + "mlp.gate.weight"] = torch.randn(experts, sd[p + "input_layernorm.weight"].shape[0], generator=g)
        for e in range(experts):
            sd.update({p + f"mlp.experts.{e}.{n}.weight": w * (1.0 + 0.5 * e) for n, w in mlp.items()})
    return sd


def write_folder(folder, sd, **config):
    """A Transformers-format release folder: config.json (released MiniMind keys) + model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight"}, str(folder / "model.safetensors"))
    base = {"model_type": "minimind", "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 192, "vocab_size": 512, "rms_norm_eps": 1e-6,
            "rope_theta": 1e6, "tie_word_embeddings": True}
    (folder / "config.json").write_text(json.dumps({**base, **config}))
    return folder


def tiny_cfg(**over) -> MiniMindOConfig:
    raw = model_raw("minimind_o_tiny")
    for key, value in over.items():
        if key.startswith("thinker."):
            raw["thinker"][key.split(".", 1)[1]] = value
        else:
            raw[key] = value
    return MiniMindOConfig(**raw)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The released fp16 `.pth` and a Transformers folder of the same (fp16-rounded) weights, tiny sizes."""
    root = tmp_path_factory.mktemp("release")
    sd = {k: v.half() for k, v in released_state(seed=7, **TINY).items()}
    torch.save(sd, root / "sft_omni_64.pth")
    write_folder(root / "minimind-3o", {k: v.float() for k, v in sd.items()})
    return {"pth": root / "sft_omni_64.pth", "folder": root / "minimind-3o", "sd": {k: v.float() for k, v in sd.items()}}


# -------------------------------------------------------------------------------- fact 1: RMSNorm eps 1e-6
def test_rms_norm_eps_is_1e6_everywhere(release, compose):
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    for name in ("minimind_o", "minimind_o_tiny", "minimind_o_512"):  # configs, as train.py composes them
        cfg = compose(f"model={name}", "data=minimind_sample", "stage=sft_t2a")
        assert cfg.model.cfg.thinker.rms_norm_eps == 1e-6, name
    raw = model_raw("minimind_o_tiny")
    del raw["thinker"]["rms_norm_eps"]
    for model in (MiniMindO(tiny_cfg()), MiniMindO(MiniMindOConfig(**raw))):  # config and code default
        norms = {n: m.variance_epsilon for n, m in model.named_modules() if isinstance(m, Qwen3RMSNorm)}
        # Thinker layers (2 + q/k), final norm, Talker layers (2 + q/k) and norm, codec_proj / embed_proj norms
        assert len(norms) == 4 * 4 + 1 + 2 * 4 + 1 + 2 and set(norms.values()) == {1e-6}
        assert {"talker.codec_proj.3", "talker.embed_proj.3", "talker.norm", "thinker.model.norm"} <= set(norms)
    model = MiniMindO(tiny_cfg())
    assert load_model_weights(model, release["folder"]) is None  # config.json says 1e-6: used, equal
    text, audio, spk = inputs()
    got_t, got_a = ours(model, text, audio, spk)
    want_t, want_a = released_forward(release["sd"], text, audio, spk, eps=1e-6)
    assert differ(got_t, want_t) <= TOL and differ(got_a, want_a) <= TOL
    wrong_t, wrong_a = released_forward(release["sd"], text, audio, spk, eps=1e-5)  # negative control
    assert differ(got_t, wrong_t) > 100 * TOL and differ(got_a, wrong_a) > 100 * TOL


def test_config_json_eps_is_used_or_compared(tmp_path, release):
    folder = write_folder(tmp_path / "eps5", release["sd"], rms_norm_eps=1e-5)
    with pytest.raises(ValueError, match=r"rms_norm_eps=1e-05 but the model config has rms_norm_eps=1e-06"):
        load_model_weights(MiniMindO(tiny_cfg()), folder)
    model = MiniMindO(tiny_cfg(**{"thinker.rms_norm_eps": 1e-5}))  # a model configured like the release: loads
    load_model_weights(model, folder)
    text, audio, spk = inputs()
    got_t, got_a = ours(model, text, audio, spk)
    want_t, want_a = released_forward(release["sd"], text, audio, spk, eps=1e-5)
    assert differ(got_t, want_t) <= TOL and differ(got_a, want_a) <= TOL
    out = tmp_path / "imported.pt"  # the CLI uses config.json's value over its base config's
    assert main(["import", str(folder), str(out), "--base", "minimind_o_tiny"]) == 0
    model = MiniMindO(tiny_cfg(**{"thinker.rms_norm_eps": 1e-5}))
    load_model_weights(model, out)
    assert differ(ours(model, text, audio, spk)[1], want_a) <= TOL


# ------------------------------------------------------------------ fact 2: bridge layer from the checkpoint
def test_bridge_layer_is_derived_from_the_checkpoint_depth(tmp_path, release):
    from omni.minimind_o.convert import _base_config, load_released

    # CLI import of a 4-layer release with the released 8-layer base config (bridge 3): bridge 4 // 2 - 1 = 1
    base = _base_config("minimind_o")
    assert base.bridge_layer == 3
    base = MiniMindOConfig(**{**model_raw("minimind_o"), "tokenizer_path": None,
                              "audio_encoder": model_raw("minimind_o_tiny")["audio_encoder"],
                              "vision_encoder": model_raw("minimind_o_tiny")["vision_encoder"]})
    model = load_released(release["pth"], base)
    assert model.cfg.bridge_layer == 1
    text, audio, spk = inputs()
    _, got = ours(model, text, audio, spk)
    assert differ(got, released_forward(release["sd"], text, audio, spk, bridge=1)[1]) <= TOL
    assert differ(got, released_forward(release["sd"], text, audio, spk, bridge=3)[1]) > 100 * TOL  # negative
    # config.json naming bridge_layer rules
    folder = write_folder(tmp_path / "bridge2", release["sd"], bridge_layer=2)
    named = load_released(folder, base)
    assert named.cfg.bridge_layer == 2
    _, got2 = ours(named, text, audio, spk)
    assert differ(got2, released_forward(release["sd"], text, audio, spk, bridge=2)[1]) <= TOL
    assert differ(got2, released_forward(release["sd"], text, audio, spk, bridge=1)[1]) > 100 * TOL  # negative
    # init_from: a model config whose bridge disagrees with what the checkpoint implies fails naming both values
    with pytest.raises(ValueError, match=r"bridge_layer=1 but the model config has bridge_layer=2"):
        load_model_weights(MiniMindO(tiny_cfg(bridge_layer=2)), release["pth"])
    with pytest.raises(ValueError, match=r"bridge_layer=2 but the model config has bridge_layer=1"):
        load_model_weights(MiniMindO(tiny_cfg()), folder)
    ok = MiniMindO(tiny_cfg(bridge_layer=2))
    load_model_weights(ok, folder)
    assert differ(ours(ok, text, audio, spk)[1], released_forward(release["sd"], text, audio, spk, bridge=2)[1]) <= TOL


# --------------------------------------------------------------------------- fact 3: top-1 MoE renormalised
def test_moe_top1_output_is_not_scaled_by_its_probability(tmp_path):
    from omni.minimind_o.talker import MoEFeedForward
    from transformers import Qwen3Config

    # hand case: 2 experts, gate picks expert 1 with p = sigmoid(2) = 0.881; the output is expert 1's, unscaled
    cfg = Qwen3Config(hidden_size=4, intermediate_size=8, hidden_act="silu")
    moe = MoEFeedForward(cfg, n_experts=2, top_k=1)
    with torch.no_grad():
        moe.gate.weight.copy_(torch.tensor([[0.0, 0, 0, 0], [2.0, 0, 0, 0]]))
    x = torch.tensor([[1.0, 0.5, -0.5, 0.25]])
    assert torch.equal(moe(x), moe.experts[1](x))
    top2 = MoEFeedForward(cfg, n_experts=2, top_k=2)  # top-2: weights p / (p0 + p1) = p, summing to 1
    top2.load_state_dict(moe.state_dict())
    p1 = 1 / (1 + math.exp(-2.0))
    torch.testing.assert_close(top2(x), (1 - p1) * moe.experts[0](x) + p1 * moe.experts[1](x))

    # released MoE weights through the CLI and init_from: logits equal the renormalised forward
    sd = {k: v.half().float() for k, v in moe_state(seed=3, **TINY).items()}
    torch.save({k: v.half() for k, v in sd.items()}, tmp_path / "moe.pth")
    out = tmp_path / "moe_imported.pt"
    assert main(["import", str(tmp_path / "moe.pth"), str(out), "--base", "minimind_o_tiny"]) == 0
    model = MiniMindO(tiny_cfg(moe={"n_experts": 2, "top_k": 1}))
    load_model_weights(model, tmp_path / "moe.pth")
    again = MiniMindO(tiny_cfg(moe={"n_experts": 2, "top_k": 1}))
    load_model_weights(again, out)
    text, audio, spk = inputs()
    got_t, got_a = ours(model, text, audio, spk)
    assert differ(got_a, ours(again, text, audio, spk)[1]) == 0
    want_t, want_a = released_forward(sd, text, audio, spk)
    assert differ(got_t, want_t) <= TOL and differ(got_a, want_a) <= TOL
    wrong_t, wrong_a = released_forward(sd, text, audio, spk, top1_scaled=True)  # negative control
    assert differ(got_t, wrong_t) > 100 * TOL and differ(got_a, wrong_a) > 100 * TOL


# ----------------------------------------------------------- items 3 + 4: init_from takes every release format
def test_release_pth_and_folder_import_through_init_from_and_the_cli(tmp_path, release):
    text, audio, spk = inputs()
    want_t, want_a = released_forward(release["sd"], text, audio, spk)
    cli = tmp_path / "imported.pt"
    assert main(["import", str(release["pth"]), str(cli), "--base", "minimind_o_tiny"]) == 0
    for source in (release["pth"], release["folder"], cli):
        model = MiniMindO(tiny_cfg())
        load_model_weights(model, source)
        got_t, got_a = ours(model, text, audio, spk)
        assert differ(got_t, want_t) <= TOL and differ(got_a, want_a) <= TOL, source
    # our own Lightning checkpoint (and the CLI output in our names) is not a release format
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    assert init_from(MiniMindO(tiny_cfg()), ckpt) is False and init_from(MiniMindO(tiny_cfg()), cli) is False
    assert init_from(MiniMindO(tiny_cfg()), release["pth"]) is True


@pytest.mark.parametrize("key,value,message", [
    # stated by config.json and checked against the tensors
    ("num_hidden_layers", 8, "config.json num_hidden_layers=8 but the weights imply num_hidden_layers=4"),
    ("num_attention_heads", 8, "config.json num_attention_heads=8 but the weights imply num_attention_heads=4"),
    ("num_key_value_heads", 4, "config.json num_key_value_heads=4 but the weights imply num_key_value_heads=2"),
    ("hidden_size", 768, "config.json hidden_size=768 but the weights imply hidden_size=64"),
    ("intermediate_size", 2432, "config.json intermediate_size=2432 but the weights imply intermediate_size=192"),
    ("vocab_size", 6400, "config.json vocab_size=6400 but the weights imply vocab_size=512"),
    # used from config.json, then compared with the chosen model config
    ("rope_theta", 10000.0, "the release has rope_theta=10000.0 but the model config has rope_theta=1000000.0"),
    ("rms_norm_eps", 1e-5, "the release has rms_norm_eps=1e-05 but the model config has rms_norm_eps=1e-06"),
    ("bridge_layer", 0, "the release has bridge_layer=0 but the model config has bridge_layer=1"),
])
def test_config_json_mismatch_fails_at_start_naming_key_and_values(tmp_path, release, key, value, message):
    folder = write_folder(tmp_path / key, release["sd"], **{key: value})
    model = MiniMindO(tiny_cfg())
    before = model.thinker.model.embed_tokens.weight.clone()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model_weights(model, folder)
    assert torch.equal(model.thinker.model.embed_tokens.weight, before)  # nothing loaded


def test_rope_base_from_config_json_reaches_the_logits(tmp_path, release):
    """A different RoPE base used to load silently (shapes only); now it is used and gives the spec's logits."""
    folder = write_folder(tmp_path / "rope1e4", release["sd"], rope_theta=1e4)
    model = MiniMindO(tiny_cfg(**{"thinker.rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}))
    load_model_weights(model, folder)
    text, audio, spk = inputs()
    got_t, _ = ours(model, text, audio, spk)
    assert differ(got_t, released_forward(release["sd"], text, audio, spk, theta=1e4)[0]) <= TOL
    assert differ(got_t, released_forward(release["sd"], text, audio, spk, theta=1e6)[0]) > 100 * TOL


@pytest.mark.slow
def test_train_py_init_from_a_release_folder(tmp_path, release):
    """`python train.py model=minimind_o_tiny ... init_from=<release folder> debug=fast` with lr 0: the run's last
    checkpoint holds exactly the released weights."""
    from tests.test_train import run_cli

    run = tmp_path / "run"
    res = run_cli("train.py", "model=minimind_o_tiny", "data=minimind_sample", "stage=sft_t2a",
                  f"init_from={release['folder']}", "debug=fast", "stage.lr=0.0", "test=false", "logger=csv",
                  "callbacks.text_metrics=null", f"hydra.run.dir={run}", f"paths.output_dir={run}", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "sft_t2a" / "last.ckpt", weights_only=True, map_location="cpu")
    state = ckpt["state_dict"]
    for key in ("model.embed_tokens.weight", "model.layers.3.mlp.up_proj.weight", "talker.lm_head.adapters.5.2.weight",
                "talker.spk_proj.weight", "audio_proj.mlp.1.weight"):
        ours_key = "model." + ("thinker." + key if key.startswith("model.") else key)
        assert torch.equal(state[ours_key].float(), release["sd"][key]), key


# ======================================================================================== data facts (rows)
class CharTokenizer:
    """Toy tokenizer: one id per character (100 + its code point), so every expected row is readable."""

    def encode(self, text, add_special_tokens=False):
        return [100 + ord(c) for c in text]


def ids(text):
    return [100 + ord(c) for c in text]


IM_START, IM_END, IMAGE_PAD, AUDIO_PAD, THINK, END_THINK = 1, 2, 12, 16, 25, 26
CLIP_FRAMES = 17  # 1 s at 16 kHz: 1000 ms // 20 + 1 = 51 Whisper frames, pooled by 3 -> ceil(51 / 3) = 17


def turn(role, content_ids):
    return [IM_START, *ids(f"{role}\n"), *content_ids, IM_END, *ids("\n")]


def reader(max_len=2048):
    from data.minimind_o.dataset import RowReader
    from omni.minimind_o.encoders import AudioEncoderSpec, VisionEncoderSpec
    from omni.minimind_o.tokens import MiniMindOTokens

    raw = model_raw("minimind_o_tiny")
    return RowReader(MiniMindOTokens(), CharTokenizer(), AudioEncoderSpec(**raw["audio_encoder"]),
                     VisionEncoderSpec(**raw["vision_encoder"]), 256, max_len)


def chat(*pairs):
    msgs = []
    for q, a in pairs:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return json.dumps(msgs)


def codes(n, offset=0):
    """Flat frame-major codes of n frames: codebook l of frame k is 100 * l + k + offset."""
    return [100 * lvl + k + offset for k in range(n) for lvl in range(K)]


def lay_of(rec, rd=None, rng=None, augment=None, heard=None):
    rd = rd or reader()

    def samples(clip):
        if heard is not None:
            heard.append(clip)
        return 16000

    plan = rd.plan(rec, samples, rng, augment)
    return plan, rd.layout(plan)


def test_multi_turn_a2a_speaks_only_the_last_user_turn():
    rec = {"conversations": chat(("q1", "a1"), ("q2", "a2")), "question_audios": [b"clip1", b"clip2"],
           "answer_audios": [codes(2), codes(3)]}
    heard = []
    plan, lay = lay_of(rec, heard=heard)
    prompt = turn("user", ids("q1")) + turn("assistant", ids("a1")) + turn("user", [AUDIO_PAD] * CLIP_FRAMES) \
        + [IM_START, *ids("assistant\n")]
    assert lay.inputs[8, : lay.start].tolist() == prompt and heard == [b"clip2"] and plan.frames == [CLIP_FRAMES]
    assert plan.task == "a2a"
    # fewer clips than user turns: still trains, its questions as text
    plan, lay = lay_of({**rec, "question_audios": [b"clip1"]})
    prompt = turn("user", ids("q1")) + turn("assistant", ids("a1")) + turn("user", ids("q2")) \
        + [IM_START, *ids("assistant\n")]
    assert lay.inputs[8, : lay.start].tolist() == prompt and plan.frames == []
    assert lay.targets[8, lay.start - 1 : lay.start + 3].tolist() == [*ids("a2"), IM_END, *ids("\n")]


def test_i2t_image_goes_to_the_front_or_back_joined_by_one_or_two_newlines():
    from omni.minimind_o.layout import Augment

    rec = {"conversations": chat(("what is this? <image>", "a cat")), "image_bytes": b"png"}
    pads = [IMAGE_PAD] * 64
    _, lay = lay_of(rec)  # evaluation: front + "\n"
    assert lay.inputs[8, : lay.start].tolist() == turn("user", pads + ids("\nwhat is this?")) + \
        [IM_START, *ids("assistant\n")]
    variants = {tuple(pads + ids("\nwhat is this?")), tuple(pads + ids("\n\nwhat is this?")),
                tuple(ids("what is this?\n") + pads), tuple(ids("what is this?\n\n") + pads)}
    quiet = Augment(keep_ref=1.0, system_prompt=0.0, keep_think=0.0, scheduled_sampling=0.0, random_turn=False)
    seen = set()
    for seed in range(40):
        _, lay = lay_of(rec, rng=np.random.default_rng(seed), augment=quiet)
        seen.add(tuple(lay.inputs[8, 1 + len(ids("user\n")) : lay.start - 3 - len(ids("assistant\n"))].tolist()))
    assert seen == variants


def test_kept_think_block_is_part_of_the_text_targets():
    from omni.minimind_o.layout import Augment

    rec = {"conversations": chat(("hi", "ok")), "answer_audios": [codes(2)]}
    think = Augment(keep_ref=1.0, system_prompt=0.0, keep_think=1.0, scheduled_sampling=0.0, random_turn=False)
    _, lay = lay_of(rec, rng=np.random.default_rng(0), augment=think)
    prompt = turn("user", ids("hi")) + [IM_START, *ids("assistant\n")]
    block = [THINK, *ids("\n\n"), END_THINK, *ids("\n\n")]
    answer = [*block, *ids("ok"), IM_END, *ids("\n")]
    P = len(prompt)
    assert lay.inputs[8, : P + len(answer)].tolist() == prompt + answer
    # the think block is predicted (text targets from the position before `<think>`), never prompt-only
    assert lay.targets[8, P - 1 : P - 1 + len(answer)].tolist() == answer
    assert (lay.targets[8, : P - 1] == -100).all() and (lay.targets[8, P - 1 + len(answer):] == -100).all()
    # the audio anchor s is after the block (spec "Let s be ..."): codebook l, frame k is the target at s + l + k
    s = P + len(block)
    assert lay.start == s
    for lvl in range(K):
        assert lay.targets[lvl, s + lvl : s + lvl + 3].tolist() == [100 * lvl, 100 * lvl + 1, 2050]
        assert (lay.targets[lvl, : s + lvl] == -100).all()


def test_scheduled_sampling_replaces_whole_frames_from_all_2112_ids():
    from omni.minimind_o.layout import scheduled_sampling
    from omni.minimind_o.tokens import MiniMindOTokens

    tok, L, start, p = MiniMindOTokens(), 600, 40, 0.3
    runs = []
    for fill in (2049, 2050):  # the same draws over two fillers: a cell was replaced iff it changed in either run
        inp = torch.full((9, L), fill)
        inp[8] = 500  # an ordinary text id
        runs.append((inp, scheduled_sampling(tok, inp, start, p, np.random.default_rng(3))))
    (a_in, a), (b_in, b) = runs
    hit = (a != a_in) | (b != b_in)  # (9, L)
    audio = hit[:8]
    assert torch.equal(a[:8][audio], b[:8][audio])
    assert torch.equal(audio.all(0), audio.any(0))  # whole frames: all 8 codebooks or none
    cols = audio.any(0)
    assert not cols[:start].any() and 0.2 < cols[start:].float().mean() < 0.4
    drawn = a[:8][audio]
    assert drawn.max() < 2112 and (drawn >= 2048).any()  # specials included (P(none of ~1300 draws) ~ 1e-18)
    text = hit[8]
    assert not text[:start].any() and 0.2 < text[start:].float().mean() < 0.4 and not torch.equal(text, cols)


def test_too_long_rows_are_cut_at_max_len_and_trained():
    rec = {"conversations": chat(("hi", "a long answer text")), "answer_audios": [codes(30)]}
    prompt = turn("user", ids("hi")) + [IM_START, *ids("assistant\n")]
    s, max_len = len(prompt), len(prompt) + 12
    _, lay = lay_of(rec, rd=reader(max_len))
    assert lay.length == max_len and lay.start == s
    assert lay.targets[8, s - 1 :].tolist() == ids("a long answer text")[:13]  # answer cut
    for lvl in range(K):  # codebook l, frame k is the target at s + l + k; no STOP where it is cut off
        assert lay.targets[lvl, s + lvl :].tolist() == [100 * lvl + k for k in range(max_len - s - lvl)]
    assert not (lay.targets[:8] == 2050).any() and set(lay.weights.unique().tolist()) <= {0.0, 1.0}
    from data.dataset import RowError

    with pytest.raises(RowError, match="no answer position"):  # a prompt longer than max_len has nothing to train
        lay_of({**rec, "conversations": chat(("hi " * 20, "x"))}, rd=reader(s))


def test_t2a_row_with_empty_answer_audio_trains_its_text_only():
    for audios in ([[]], [codes(2), []]):
        pairs = [("q1", "a1"), ("q2", "a2")][-len(audios):]
        plan, lay = lay_of({"conversations": chat(*pairs), "answer_audios": audios})
        assert plan.task == "t2a" and (lay.targets[:8] == -100).all() and (lay.weights == 0).all()
        s = lay.start
        assert lay.targets[8, s - 1 :].tolist() == [*ids("a2"), IM_END, *ids("\n")]  # the last turn, text only
