"""Mini-Omni interoperability without real weights: a tiny random litgpt-format checkpoint is imported into our
MiniOmni and its logits are compared with an independent plain-torch re-implementation of the released forward
(written here from ../shared/spec/mini_omni.md and litgpt's Mini-Omni model, not from our code)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from omni.mini_omni.convert import (
    LIT_CONFIG,
    LIT_WEIGHTS,
    UnsafeCheckpointError,
    export_hf,
    export_litgpt,
    import_litgpt,
    load_hf,
    load_litgpt_into,
    main,
    merge_qkv,
    split_qkv,
)
from omni.mini_omni.layout import audio_prompt, image_prompt, text_prompt
from omni.mini_omni.model import MiniOmni

torch.set_num_threads(1)

# tiny litgpt config consistent with conf/model/mini_omni_tiny.yaml (text vocab 512 + 64 specials, SNAC 4096 + 64)
N_LAYER, N_HEAD, N_GROUPS, N_EMBD, HEAD, MLP = 2, 4, 2, 64, 16, 192
TEXT_PADDED, AUDIO_PADDED, N_AUDIO = 576, 4160, 7
VOCAB = TEXT_PADDED + N_AUDIO * AUDIO_PADDED  # 29696
ENC = 64            # whisper_adapter_dim = tiny Whisper d_model
ROPE_BASE = 10000   # deliberately not the tiny default (1e6): the importer must carry it over
LIT_YAML = dict(
    name="tiny-mini-omni", block_size=256, vocab_size=VOCAB, padded_vocab_size=VOCAB, n_layer=N_LAYER,
    n_head=N_HEAD, head_size=HEAD, n_embd=N_EMBD, n_query_groups=N_GROUPS, rotary_percentage=1.0,
    parallel_residual=False, bias=False, add_qkv_bias=True, lm_head_bias=False, norm_class_name="RMSNorm",
    norm_eps=1e-6, mlp_class_name="LLaMAMLP", intermediate_size=MLP, rope_base=ROPE_BASE, rope_condense_ratio=1,
    scale_embeddings=False, tie_word_embeddings=False, text_vocab_size=TEXT_PADDED,
    cat_audio_vocab_size=N_AUDIO * AUDIO_PADDED, audio_vocab_size=AUDIO_PADDED, whisper_adapter_dim=ENC,
    post_adapter=False, post_adapter_layers=6, asr_adapter="llamamlp",
)
# fields of the released litgpt `Config` dataclass (gpt-omni/mini-omni litgpt/config.py; Mini-Omni2 adds
# vision_adapter_dim)
RELEASED_CONFIG_FIELDS = set("""
name hf_config scale_embeddings block_size vocab_size padding_multiple padded_vocab_size n_layer n_head head_size
n_embd rotary_percentage parallel_residual bias lm_head_bias n_query_groups shared_attention_norm norm_class_name
norm_eps mlp_class_name gelu_approximate intermediate_size rope_condense_ratio rope_base n_expert n_expert_per_token
add_qkv_bias prompt_vocab_size attn_dropout pos_type force_align use_pretrain_phoneme_emb tie_word_embeddings
text_vocab_size cat_audio_vocab_size audio_vocab_size whisper_adapter_dim post_adapter post_adapter_layers asr_adapter
""".split())
# spec ids for this vocabulary (text_vocab = 512): text specials global, audio specials local
EOT, PAD_T, INPUT_T, ANSWER_T = 512, 513, 514, 515
EOA, PAD_A, INPUT_A, ANSWER_A = 4096, 4097, 4098, 4099


def random_litgpt_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the released litgpt names, scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)

    def lin(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) / math.sqrt(cols)

    def norm(d: int) -> torch.Tensor:
        return 1.0 + 0.2 * torch.randn(d, generator=g)

    qkv_rows = (N_HEAD + 2 * N_GROUPS) * HEAD
    sd = {"transformer.wte.weight": torch.randn(VOCAB, N_EMBD, generator=g),
          "transformer.ln_f.weight": norm(N_EMBD), "lm_head.weight": lin(VOCAB, N_EMBD)}
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        sd.update({p + "norm_1.weight": norm(N_EMBD), p + "norm_2.weight": norm(N_EMBD),
                   p + "attn.attn.weight": lin(qkv_rows, N_EMBD),
                   p + "attn.attn.bias": 0.5 * torch.randn(qkv_rows, generator=g),
                   p + "attn.proj.weight": lin(N_EMBD, N_HEAD * HEAD), p + "mlp.fc_1.weight": lin(MLP, N_EMBD),
                   p + "mlp.fc_2.weight": lin(MLP, N_EMBD), p + "mlp.proj.weight": lin(N_EMBD, MLP)})
    sd.update({"whisper_adapter.fc_1.weight": lin(MLP, ENC), "whisper_adapter.fc_2.weight": lin(MLP, ENC),
               "whisper_adapter.proj.weight": lin(N_EMBD, MLP)})
    return sd


def write_litgpt(folder: Path, sd: dict[str, torch.Tensor], overrides: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / LIT_WEIGHTS)
    (folder / LIT_CONFIG).write_text(yaml.safe_dump({**LIT_YAML, **(overrides or {})}))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# independent reference: the released litgpt Mini-Omni forward in plain torch (float64)
# ---------------------------------------------------------------------------------------------------------------
def ref_rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ref_rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """x (heads, L, S); rotate-half (NeoX) RoPE over the whole head, as litgpt build_rope_cache/apply_rope."""
    L, S = x.shape[-2:]
    theta = 1.0 / (base ** (torch.arange(0, S, 2, dtype=torch.float64) / S))
    ang = torch.outer(torch.arange(L, dtype=torch.float64), theta).repeat(1, 2)  # (L, S)
    rotated = torch.cat([-x[..., S // 2:], x[..., : S // 2]], dim=-1)
    return x * ang.cos() + rotated * ang.sin()


def ref_swiglu(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    gate = torch.nn.functional.silu(x @ sd[p + "fc_1.weight"].T)
    return (gate * (x @ sd[p + "fc_2.weight"].T)) @ sd[p + "proj.weight"].T


def ref_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor, feats: torch.Tensor | None = None,
                audio_at: int = 1, image: torch.Tensor | None = None, yaml_cfg: dict | None = None,
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """ids (8, L) GLOBAL ids, rows 0..6 audio, 7 text; feats (T, E) encoder features injected at positions
    audio_at..audio_at+T-1 of the 7 audio rows (1 for audio prompts, 52 for Mini-Omni2 image QA); image (50, C) CLIP
    features at 1..50 through vision_adapter; yaml_cfg: the model_config.yaml keys (norm_eps, rope_base; default
    LIT_YAML). Returns (xa: 7 x (L, 4160), xt: (L, 576)) like litgpt GPT.forward."""
    yaml_cfg = LIT_YAML if yaml_cfg is None else yaml_cfg
    eps, rope_base = float(yaml_cfg["norm_eps"]), float(yaml_cfg["rope_base"])
    sd = {k: v.double() for k, v in sd.items()}
    emb = sd["transformer.wte.weight"][ids]  # (8, L, D)
    if image is not None:
        emb[:7, 1: image.shape[0] + 1] = ref_swiglu(image.double(), sd, "vision_adapter.")
    if feats is not None:
        t = feats.shape[0]
        emb[:7, audio_at: audio_at + t] = ref_swiglu(feats.double(), sd, "whisper_adapter.")
    x = emb.sum(0) / 8  # (L, D)
    L, q_per_kv = x.shape[0], N_HEAD // N_GROUPS
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        h = ref_rms(x, sd[p + "norm_1.weight"], eps)
        qkv = (h @ sd[p + "attn.attn.weight"].T + sd[p + "attn.attn.bias"]).view(L, N_GROUPS, q_per_kv + 2, HEAD)
        q = qkv[:, :, :q_per_kv].reshape(L, N_HEAD, HEAD).transpose(0, 1)  # head n = group n // q_per_kv
        k = qkv[:, :, q_per_kv].transpose(0, 1)  # (G, L, S)
        v = qkv[:, :, q_per_kv + 1].transpose(0, 1)
        q, k = ref_rope(q, rope_base), ref_rope(k, rope_base)
        group = torch.arange(N_HEAD) // q_per_kv
        att = (q @ k[group].transpose(1, 2)) / math.sqrt(HEAD)  # (H, L, L)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v[group]).transpose(0, 1).reshape(L, N_HEAD * HEAD)
        x = x + y @ sd[p + "attn.proj.weight"].T
        x = x + ref_swiglu(ref_rms(x, sd[p + "norm_2.weight"], eps), sd, p + "mlp.")
    logits = ref_rms(x, sd["transformer.ln_f.weight"], eps) @ sd["lm_head.weight"].T
    xa = [logits[:, TEXT_PADDED + AUDIO_PADDED * i: TEXT_PADDED + AUDIO_PADDED * (i + 1)] for i in range(7)]
    return xa, logits[:, :TEXT_PADDED]


def spec_ids_t1t2(text: list[int]) -> torch.Tensor:
    """(8, n+3) global ids of a T1T2 prompt, written from the spec table (layershift = local + 576 + 4160 i)."""
    n = len(text)
    rows = [[PAD_A + TEXT_PADDED + AUDIO_PADDED * i] * (n + 3) for i in range(7)]
    return torch.tensor(rows + [[INPUT_T, *text, EOT, ANSWER_T]])


def spec_ids_a1t2(t: int) -> torch.Tensor:
    """(8, T+3) global ids of an A1T2 prompt from the spec table."""
    rows = [[s + TEXT_PADDED + AUDIO_PADDED * i for s in [INPUT_A] + [PAD_A] * t + [EOA, PAD_A]] for i in range(7)]
    return torch.tensor(rows + [[INPUT_T] + [PAD_T] * t + [EOT, ANSWER_T]])


# ---------------------------------------------------------------------------------------------------------------
# helpers on our side
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def our_row_logits(model: MiniOmni, ids: torch.Tensor, feats: torch.Tensor | None = None,
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """ids (8, L) LOCAL layout; feats (T, E) given straight to the adapter (Whisper bypassed)."""
    batch = ids.unsqueeze(0)
    if feats is None:
        x = model.embed(batch)
    else:
        t = feats.shape[0]
        audio = model.audio_adapter(feats.unsqueeze(0))  # (1, T, D)
        one = torch.tensor([1])
        x = model.embed(batch, audio, torch.tensor([0]), one, torch.tensor([t]))
    h = model.hidden(x).last_hidden_state[0]  # (L, D)
    tok = model.tokens
    return [model.row_logits(h, i) for i in range(tok.n_audio_layers)], model.row_logits(h, tok.text_row)


@pytest.fixture(scope="module")
def lit_dir(tmp_path_factory) -> Path:
    return write_litgpt(tmp_path_factory.mktemp("lit"), random_litgpt_state())


@pytest.fixture(scope="module")
def imported(lit_dir, tiny_model_cfg) -> MiniOmni:
    cfg, _ = import_litgpt(lit_dir, tiny_model_cfg)
    torch.manual_seed(1)
    model = MiniOmni(cfg).eval()
    load_litgpt_into(model, lit_dir)
    return model


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not bad, bad


# ---------------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------------
def test_qkv_split_merge_round_trip_respects_groups():
    S, G, H = 3, 2, 4
    rows = (H + 2 * G) * S
    fused = torch.arange(rows * 5, dtype=torch.float32).view(rows, 5)
    q, k, v = split_qkv(fused, H, G, S)
    assert q.shape == (H * S, 5) and k.shape == (G * S, 5) and v.shape == (G * S, 5)
    # group 0 = fused heads [q0, q1, k0, v0], group 1 = [q2, q3, k1, v1] (each S rows)
    head = lambda t, j: t[j * S:(j + 1) * S]  # noqa: E731
    for g in range(G):
        base = g * (H // G + 2)
        for j in range(H // G):
            assert torch.equal(head(q, g * (H // G) + j), head(fused, base + j))
        assert torch.equal(head(k, g), head(fused, base + H // G))
        assert torch.equal(head(v, g), head(fused, base + H // G + 1))
    assert torch.equal(merge_qkv(q, k, v, H, G, S), fused)
    bias = torch.randn(rows)
    assert torch.equal(merge_qkv(*split_qkv(bias, H, G, S), H, G, S), bias)


def test_import_config(lit_dir, tiny_model_cfg):
    cfg, state = import_litgpt(lit_dir, tiny_model_cfg)
    assert cfg.tokens == tiny_model_cfg.tokens  # 576 / 4160 padded sizes -> 512 + 64, 4096 + 64, 7 layers
    assert cfg.backbone["rope_parameters"]["rope_theta"] == ROPE_BASE
    assert cfg.backbone["num_key_value_heads"] == N_GROUPS and "head_dim" not in cfg.backbone
    assert cfg.adapter == "swiglu" and cfg.adapter_hidden == MLP
    assert cfg.whisper == tiny_model_cfg.whisper
    assert not any(k.startswith("audio_encoder.") for k in state)


def test_logits_match_reference_t1t2(imported):
    sd = random_litgpt_state()
    text = [5, 77, 300, 511, 0, 42]
    ours = text_prompt(imported.tokens, text, "t1t2")
    ids = spec_ids_t1t2(text)
    assert torch.equal(imported.tokens.to_global(ours), ids)
    xa_ref, xt_ref = ref_forward(sd, ids)
    xa, xt = our_row_logits(imported, ours)
    assert xt_ref.abs().max() > 1.0  # logits are not trivially small
    torch.testing.assert_close(xt.double(), xt_ref, atol=1e-4, rtol=1e-4)
    for a, r in zip(xa, xa_ref):
        torch.testing.assert_close(a.double(), r, atol=1e-4, rtol=1e-4)


def test_logits_match_reference_a1t2(imported):
    sd = random_litgpt_state()
    t = 5
    feats = torch.randn(t, ENC, generator=torch.Generator().manual_seed(3))
    ours = audio_prompt(imported.tokens, t, "a1t2")
    ids = spec_ids_a1t2(t)
    assert torch.equal(imported.tokens.to_global(ours), ids)
    xa_ref, xt_ref = ref_forward(sd, ids, feats)
    xa, xt = our_row_logits(imported, ours, feats)
    torch.testing.assert_close(xt.double(), xt_ref, atol=1e-4, rtol=1e-4)
    for a, r in zip(xa, xa_ref):
        torch.testing.assert_close(a.double(), r, atol=1e-4, rtol=1e-4)
    # the injection matters: without features the reference differs
    _, xt_plain = ref_forward(sd, ids)
    assert not torch.allclose(xt_plain, xt_ref, atol=1e-2)


def test_import_export_import_exact(imported, lit_dir, tiny_model_cfg, tmp_path):
    out = export_litgpt(imported, tmp_path / "re")
    raw = torch.load(out / LIT_WEIGHTS, weights_only=True)
    assert_state_equal(raw, random_litgpt_state())  # litgpt -> ours -> litgpt is the identity
    cfg1, st1 = import_litgpt(lit_dir, tiny_model_cfg)
    cfg2, st2 = import_litgpt(out, tiny_model_cfg)
    assert_state_equal(st1, st2)
    assert (out / "tokenizer.json").is_file() and cfg2.tokenizer_path == str(out)  # tokenizer files travel along
    assert dataclasses.replace(cfg1, tokenizer_path=None) == dataclasses.replace(cfg2, tokenizer_path=None)
    # the released `Config.from_file` is Config(**yaml): every key written must be one of its dataclass fields
    assert set(yaml.safe_load((out / LIT_CONFIG).read_text())) <= RELEASED_CONFIG_FIELDS


def test_safetensors_folder_imports_the_same(lit_dir, tiny_model_cfg, tmp_path):
    from safetensors.torch import save_file

    sd = random_litgpt_state()
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"a.safetensors": keys[:half], "b.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / name))
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / LIT_CONFIG).write_text((lit_dir / LIT_CONFIG).read_text())
    assert_state_equal(import_litgpt(tmp_path, tiny_model_cfg)[1], import_litgpt(lit_dir, tiny_model_cfg)[1])


def test_hf_export_load_exact(imported, tmp_path):
    export_hf(imported, tmp_path / "hf")
    assert (tmp_path / "hf" / "backbone" / "model.safetensors").is_file()
    cfg_json = json.loads((tmp_path / "hf" / "omni_config.json").read_text())
    assert cfg_json["token_table"]["text_specials"]["eot"] == EOT
    loaded = load_hf(tmp_path / "hf").eval()
    assert_state_equal(imported.state_dict(), loaded.state_dict())
    ids = audio_prompt(imported.tokens, 4, "a1t2")
    feats = torch.randn(4, ENC)
    for a, b in zip(our_row_logits(imported, ids, feats)[0], our_row_logits(loaded, ids, feats)[0]):
        assert torch.equal(a, b)
    assert torch.equal(our_row_logits(imported, ids, feats)[1], our_row_logits(loaded, ids, feats)[1])


def test_ctc_head_round_trips_through_hf_and_starts_fresh_from_a_release(lit_dir, imported, tmp_path):
    """The training-only CTC head (model.ctc_weight > 0): a released folder has none (the head keeps its init),
    our HF export carries it, a train.py checkpoint of either kind loads into the other."""
    from omni.checkpoint import load_model_weights

    torch.manual_seed(1)  # as `imported`: the same random audio encoder (the head is built last)
    model = MiniOmni(dataclasses.replace(imported.cfg, ctc_weight=0.3)).eval()
    head = model.audio_ctc.weight.detach().clone()
    load_model_weights(model, lit_dir)  # released litgpt folder
    assert torch.equal(model.audio_ctc.weight, head)
    assert_state_equal(imported.state_dict(), {k: v for k, v in model.state_dict().items() if "audio_ctc" not in k})
    export_hf(model, tmp_path / "hf")
    assert_state_equal(model.state_dict(), load_hf(tmp_path / "hf").state_dict())
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ctc.ckpt")
    plain = MiniOmni(imported.cfg)
    load_model_weights(plain, tmp_path / "ctc.ckpt")  # strict, but the aux head is dropped
    assert_state_equal(imported.state_dict(), plain.state_dict())


class _Pwned:
    """Pickles to a call that would create `marker` when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_runs_pickled_code(tmp_path, tiny_model_cfg):
    marker = tmp_path / "pwned"
    sd = random_litgpt_state()
    sd["transformer.ln_f.weight"] = _Pwned(marker)
    write_litgpt(tmp_path / "evil", sd)
    with pytest.raises(UnsafeCheckpointError):
        import_litgpt(tmp_path / "evil", tiny_model_cfg)
    assert not marker.exists()


VIS = 24  # vision_adapter_dim = tiny CLIP projection_dim
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=224,
                 patch_size=32, projection_dim=VIS)


def vision_litgpt_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A Mini-Omni2 checkpoint: the Mini-Omni weights + vision_adapter (SwiGLU VIS -> MLP -> N_EMBD)."""
    sd = random_litgpt_state(seed)
    g = torch.Generator().manual_seed(seed + 1)
    sd.update({"vision_adapter.fc_1.weight": torch.randn(MLP, VIS, generator=g) / math.sqrt(VIS),
               "vision_adapter.fc_2.weight": torch.randn(MLP, VIS, generator=g) / math.sqrt(VIS),
               "vision_adapter.proj.weight": torch.randn(N_EMBD, MLP, generator=g) / math.sqrt(MLP)})
    return sd


def spec_ids_image_a1a2(t: int, n_image: int = 50) -> torch.Tensor:
    """(8, 55+T) global ids of a Mini-Omni2 image-QA prompt from the spec: audio rows IMAGE, PAD_A x 50, END_IMAGE,
    INPUT_A, PAD_A x T, EOA, ANSWER_A; text row PAD_T x (54+T), ANSWER_T."""
    IMAGE, END_IMAGE = 4101, 4102
    local = [IMAGE] + [PAD_A] * n_image + [END_IMAGE, INPUT_A] + [PAD_A] * t + [EOA, ANSWER_A]
    rows = [[s + TEXT_PADDED + AUDIO_PADDED * i for s in local] for i in range(7)]
    return torch.tensor(rows + [[PAD_T] * (n_image + 4 + t) + [ANSWER_T]])


def test_mini_omni2_vision_logits_match_released_forward(tmp_path, tiny_model_cfg):
    """A Mini-Omni2 (vision) checkpoint imports into a vision model; image-QA logits (CLIP features at 1..50,
    Whisper features at 52..52+T-1) equal the reference; litgpt export round-trips exactly."""
    sd = vision_litgpt_state()
    folder = write_litgpt(tmp_path / "omni2", sd, {"vision_adapter_dim": VIS})
    base = dataclasses.replace(tiny_model_cfg, vision=dict(TINY_CLIP))
    cfg, state = import_litgpt(folder, base)
    assert cfg.has_vision and cfg.vision_adapter_hidden == MLP and "vision_adapter.fc_1.weight" in state
    torch.manual_seed(0)
    model = MiniOmni(cfg).eval()
    load_litgpt_into(model, folder)
    T = 4
    g = torch.Generator().manual_seed(3)
    feats, image = torch.randn(T, ENC, generator=g), torch.randn(50, VIS, generator=g)
    ra, rt = ref_forward(sd, spec_ids_image_a1a2(T), feats, audio_at=52, image=image)
    ours = image_prompt(model.tokens, T, "image_a1a2")
    assert torch.equal(model.tokens.to_global(ours), spec_ids_image_a1a2(T))
    with torch.no_grad():
        i0, one = torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)
        x = model.embed(ours.unsqueeze(0), model.audio_adapter(feats[None]), i0, one * 52, one * T,
                        model.vision_adapter(image[None]), i0, one, one * 50)
        h = model.hidden(x).last_hidden_state[0]
    torch.testing.assert_close(model.row_logits(h, 7).double(), rt, atol=1e-4, rtol=1e-4)
    for i in range(7):
        torch.testing.assert_close(model.row_logits(h, i).double(), ra[i], atol=1e-4, rtol=1e-4)
    out = export_litgpt(model, tmp_path / "back")
    back = torch.load(out / LIT_WEIGHTS, weights_only=True)
    assert_state_equal(back, sd)
    assert yaml.safe_load((out / LIT_CONFIG).read_text())["vision_adapter_dim"] == VIS


def test_unknown_and_vision_keys(tmp_path, tiny_model_cfg):
    sd = random_litgpt_state()
    sd["transformer.h.0.attn.mystery.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match="mystery"):
        import_litgpt(write_litgpt(tmp_path / "unk", sd), tiny_model_cfg)
    folder = write_litgpt(tmp_path / "vis", vision_litgpt_state(), {"vision_adapter_dim": VIS})
    with pytest.raises(ValueError, match="vision_adapter_dim=24"):  # base tower is CLIP ViT-B/32 (512-d)
        import_litgpt(folder, tiny_model_cfg)
    cfg, state = import_litgpt(folder, tiny_model_cfg, skip_vision=True)
    assert not any("vision" in k for k in state) and not cfg.has_vision
    sd = vision_litgpt_state()
    sd["vision_adapter.proj.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="wrong_shape.*vision_adapter.proj.weight"):
        import_litgpt(write_litgpt(tmp_path / "vbad", sd, {"vision_adapter_dim": VIS}),
                      dataclasses.replace(tiny_model_cfg, vision=dict(TINY_CLIP)))
    sd = random_litgpt_state()
    del sd["transformer.h.1.mlp.proj.weight"]
    with pytest.raises(ValueError, match=r"missing=\['transformer.h.1.mlp.proj.weight'\]"):
        import_litgpt(write_litgpt(tmp_path / "miss", sd), tiny_model_cfg)


def test_unsupported_config_is_rejected(tmp_path, tiny_model_cfg):
    with pytest.raises(ValueError, match="parallel_residual"):
        import_litgpt(write_litgpt(tmp_path / "par", random_litgpt_state(), {"parallel_residual": True}),
                      tiny_model_cfg)
    with pytest.raises(ValueError, match="whisper_adapter_dim"):  # base whisper width disagrees with the adapter
        import_litgpt(write_litgpt(tmp_path / "enc", random_litgpt_state(), {"whisper_adapter_dim": 32}),
                      tiny_model_cfg)


def test_cli_round_trip(lit_dir, tmp_path):
    """litgpt -> HF -> litgpt through the CLI reproduces the released tensors (encoder not saved)."""
    tiny_yaml = Path(__file__).resolve().parents[1] / "conf" / "model" / "mini_omni_tiny.yaml"
    main(["litgpt-to-hf", str(lit_dir), str(tmp_path / "hf"), "--model-config", str(tiny_yaml)])
    from safetensors.torch import load_file

    assert not any(k.startswith("audio_encoder.") for k in load_file(str(tmp_path / "hf" / "omni_extra.safetensors")))
    main(["hf-to-litgpt", str(tmp_path / "hf"), str(tmp_path / "lit")])
    assert_state_equal(torch.load(tmp_path / "lit" / LIT_WEIGHTS, weights_only=True), random_litgpt_state())


def test_linear_adapter_round_trip(tiny_model_cfg, tmp_path):
    """asr_adapter=mlp: released nn.Linear has a bias; ours has none, so export writes zeros and import checks them."""
    torch.manual_seed(2)
    model = MiniOmni(dataclasses.replace(tiny_model_cfg, adapter="linear", adapter_hidden=MLP)).eval()
    out = export_litgpt(model, tmp_path / "lin")
    raw = torch.load(out / LIT_WEIGHTS, weights_only=True)
    assert torch.equal(raw["whisper_adapter.bias"], torch.zeros(N_EMBD))
    cfg, state = import_litgpt(out, tiny_model_cfg)
    assert cfg.adapter == "linear"
    assert_state_equal(state, {k: v for k, v in model.state_dict().items() if not k.startswith("audio_encoder.")})
    raw["whisper_adapter.bias"] += 1.0
    torch.save(raw, out / LIT_WEIGHTS)
    with pytest.raises(ValueError, match="whisper_adapter.bias"):
        import_litgpt(out, tiny_model_cfg)
