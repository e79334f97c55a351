"""MiniMind-O model: released parameter counts (meta device), tiny forward/backward on T2A / A2A / I2T items,
targets-only logits equal the full-logit loss, frozen side modules stay out of the state, config checks."""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from data.minimind_o.collate import MiniMindOCollator
from omni.config import load_group_config
from omni.minimind_o.layout import build_layout
from omni.minimind_o.model import MiniMindO, MiniMindOConfig
from tests.conftest import CONF

torch.set_num_threads(1)


def model_raw(name: str) -> dict:
    node = load_group_config(CONF / "model" / f"{name}.yaml")
    node = node.model.cfg if "model" in node else node.cfg
    node.tokenizer_path = None
    raw = OmegaConf.to_container(node, resolve=True)
    raw.pop("_target_"), raw.pop("_convert_")
    return raw


@pytest.fixture(scope="module")
def tiny_cfg():
    return MiniMindOConfig(**model_raw("minimind_o_tiny"))


@pytest.fixture(scope="module")
def tiny(tiny_cfg):
    torch.manual_seed(0)
    return MiniMindO(tiny_cfg)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_released_config_parameter_counts_on_meta_device():
    raw = model_raw("minimind_o")
    with torch.device("meta"):
        dense = MiniMindO(MiniMindOConfig(**raw))
        moe = MiniMindO(MiniMindOConfig(**{**raw, "moe": {}}))
    # spec table: Thinker 63.9M, Talker blocks 29.5M, head 7.5M, code embedding 7.5M, projectors 0.99M / 1.18M
    assert count(dense.thinker) == 63_912_192 and count(dense.talker.layers) == 29_498_112
    assert count(dense.talker.lm_head) == 7_520_256 == count(dense.talker.embed_tokens)
    assert count(dense.talker) == 47_050_754  # "Talker 47.05M" in the release's module table
    assert (count(dense.audio_proj), count(dense.vision_proj)) == (985_600, 1_182_720)
    assert count(dense) == 113_131_266  # 113.13M trainable (tied head counted once)
    assert dense.cfg.bridge_layer == 3 and dense.thinker.lm_head.weight is dense.thinker.model.embed_tokens.weight
    assert (count(moe), count(moe.thinker), count(moe.talker)) == (314_887_938, 198_416_640, 114_302_978)


def wav_bytes(seconds: float) -> np.ndarray:
    return (0.1 * np.sin(np.arange(int(16000 * seconds)) * 0.05)).astype(np.float32)


def png_bytes(size: int = 40) -> bytes:
    from PIL import Image

    img = Image.fromarray((np.arange(size * size * 3).reshape(size, size, 3) % 251).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_batch(cfg: MiniMindOConfig, seed: int = 0) -> dict:
    """One T2A item (speaker + reference), one A2A item (1 s question) and one I2T item (one image)."""
    g = torch.Generator().manual_seed(seed)
    tok, spec = cfg.tokens, cfg.audio_encoder
    codes = lambda n: torch.randint(0, tok.codebook_size, (n, tok.n_codebooks), generator=g)  # noqa: E731
    text = lambda n: torch.randint(40, tok.text_vocab, (n,), generator=g).tolist()  # noqa: E731
    frames = spec.frames(16000)
    t2a = build_layout(tok, [1] + text(5), text(4) + [2], codes(6), ref_codes=codes(3), speaker=True)
    a2a = build_layout(tok, [1] + [tok.audio_pad] * frames + [2, 1] + text(2), text(3) + [2], codes(4))
    i2t = build_layout(tok, [1] + [tok.image_pad] * cfg.vision_encoder.n_tokens + text(3), text(6) + [2])
    examples = [
        {"id": "t", "task": "t2a", "layout": t2a, "speaker_emb": torch.randn(cfg.spk_dim, generator=g)},
        {"id": "a", "task": "a2a", "layout": a2a, "audio_mels": [spec.features(wav_bytes(1.0))],
         "audio_frames": [frames]},
        {"id": "i", "task": "i2t", "layout": i2t, "pixel_values": [cfg.vision_encoder.pixels(png_bytes())]},
    ]
    return MiniMindOCollator(tok, cfg.spk_dim)(examples)


def test_tiny_forward_backward_all_tasks(tiny):
    batch = make_batch(tiny.cfg)
    assert batch["input_ids"].shape[:2] == (3, 9) and batch["audio_mels"].shape[0] == 1
    tiny.train()
    tiny.zero_grad()
    out = tiny(batch)
    assert set(out) >= {"loss", "loss_text", "loss_audio", "n_text_targets", "n_audio_targets"}
    assert torch.isfinite(out["loss"]) and int(out["n_audio_targets"]) == 8 * (7 + 5)
    out["loss"].backward()
    for name in ("thinker.model.layers.0.self_attn.q_proj.weight", "talker.layers.1.mlp.up_proj.weight",
                 "talker.spk_proj.weight", "talker.lm_head.adapters.7.2.weight", "audio_proj.mlp.1.weight",
                 "vision_proj.mlp.3.weight", "talker.text_scale"):
        grad = dict(tiny.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_frozen_side_modules_stay_out_of_parameters_and_state(tiny):
    tiny(make_batch(tiny.cfg))  # builds both side modules
    side = tiny.__dict__["_side"]
    assert set(side) == {"audio_encoder", "vision_encoder"}
    keys = list(tiny.state_dict())
    assert keys and all(k.split(".")[0] in {"thinker", "talker", "audio_proj", "vision_proj"} for k in keys)
    assert not any(p.requires_grad for m in side.values() for p in m.parameters())
    n_side = sum(count(m) for m in side.values())
    assert count(tiny) == sum(v.numel() for k, v in tiny.state_dict().items() if k != "thinker.lm_head.weight")
    assert n_side > 0
    tiny.double()
    assert all(p.dtype == torch.float64 for m in side.values() for p in m.parameters())
    tiny.float()
    tiny.train()
    assert not any(m.training for m in side.values())
    # the same spec rebuilds the same frozen weights (they are not in the checkpoint)
    again = tiny.cfg.audio_encoder.build()
    assert torch.equal(next(again.parameters()), next(side["audio_encoder"].parameters()))


def test_targets_only_logits_equal_full_logit_loss(tiny):
    batch = make_batch(tiny.cfg, seed=1)
    tiny.eval()
    with torch.no_grad():
        out = tiny(batch)
        h, g = tiny.hidden(batch)
        tgt, w = batch["targets"], batch["audio_weights"]
        text_logits = tiny.text_logits(h)  # (B, L, V) everywhere
        ref_text = F.cross_entropy(text_logits.transpose(1, 2), tgt[:, 8], ignore_index=-100)
        terms = []
        for c in range(8):
            logits = tiny.audio_logits(g, c)  # (B, L, V_a)
            ce = F.cross_entropy(logits.transpose(1, 2), tgt[:, c].clamp(min=0), reduction="none")
            terms.append((ce * w[:, c]).sum() / (tgt[:, c] != -100).sum())
        ref_audio = torch.stack(terms).mean()
    assert torch.allclose(out["loss_text"], ref_text, atol=1e-5)
    assert torch.allclose(out["loss_audio"], ref_audio, atol=1e-5)
    assert torch.allclose(out["loss"], ref_text + ref_audio, atol=1e-5)


def test_placeholder_count_must_match_features(tiny):
    batch = make_batch(tiny.cfg)
    batch["audio_frames"] = batch["audio_frames"] - 1
    with pytest.raises(ValueError, match="placeholder ids 16"):
        tiny(batch)


def test_talker_init_from_thinker_and_moe(tiny_cfg):
    raw = model_raw("minimind_o_tiny")
    model = MiniMindO(MiniMindOConfig(**{**raw, "talker_init_from_thinker": True}))
    for i in range(2):  # 4 Thinker layers, 2 Talker layers: talker i <- thinker 2 + i
        a, b = model.talker.layers[i].state_dict(), model.thinker.model.layers[2 + i].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    moe = MiniMindO(MiniMindOConfig(**{**raw, "moe": {"n_experts": 2, "top_k": 1}}))
    out = moe(make_batch(moe.cfg))
    assert "loss_moe_aux" in out["metrics"] and float(out["metrics"]["loss_moe_aux"]) > 0
    out["loss"].backward()
    assert moe.thinker.model.layers[0].mlp.gate.weight.grad is not None


@pytest.mark.parametrize("change,match", [
    ({"bridge_layer": 4}, "bridge_layer"),
    ({"thinker": {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 10}}, "derived"),
    ({"moe": {"n_experts": 2, "top_k": 3}}, "top_k"),
    ({"talker_hidden": 32, "talker_init_from_thinker": True}, "talker_hidden"),
    ({"audio_encoder": {"kind": "sensevoice"}}, "not one of"),
])
def test_config_mistakes_fail_at_construction(change, match):
    with pytest.raises(ValueError, match=match):
        MiniMindOConfig(**{**model_raw("minimind_o_tiny"), **change})


def test_talker_width_and_depth_are_configurable():
    raw = model_raw("minimind_o_tiny")
    model = MiniMindO(MiniMindOConfig(**{**raw, "talker_hidden": 32, "talker_layers": 3}))
    assert len(model.talker.layers) == 3 and model.talker.norm.weight.shape == (32,)
    assert model.talker.embed_proj[2].out_features == 32
    out = model(make_batch(model.cfg))
    assert torch.isfinite(out["loss"])
