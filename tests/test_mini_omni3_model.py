"""Mini-Omni3 model: loss vs the Hugging Face causal-LM loss, KEEP_SILENCE weighting, frame injection, decision
metrics, freezing, shipped configs (tiny built for real, full size on the meta device)."""
from pathlib import Path

import pytest
import torch
from data.mini_omni3.collate import StreamingCollator
from omni.mini_omni3.layout import Reply, offline_sequence, online_sequence
from omni.mini_omni3.metrics import decision_counts, onset_errors, scores
from omni.mini_omni3.model import MiniOmni3, MiniOmni3Config, config_from_yaml
from omni.mini_omni3.tokens import IGNORE

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def model_cfg(name: str, **over) -> MiniOmni3Config:
    cfg = config_from_yaml(str(CONF / name))
    return MiniOmni3Config(**{**cfg.__dict__, **over})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MiniOmni3(model_cfg("mini_omni3_tiny.yaml")).eval()


def make_batch(model, seed=0):
    tok = model.tokens
    g = torch.Generator().manual_seed(seed)
    online = online_sequence(tok, [5, 6, 7], 3, {1: Reply((40, 41, 42), "happy")})
    # offline: a 0.3 s clip = 30 mel frames -> conv2 (30 - 1) // 2 + 1 = 15 -> pooling (15 - 2) // 2 + 1 = 7 frames
    offline = offline_sequence(tok, [5, 6, 7], [50, 51], n_frames=7, user_ids=[9])
    examples = [
        {"id": "a", "task": "online", "sequence": online, "mels": torch.randn(3, 128, 40, generator=g),
         "features": None, "reply_text": ["x"]},
        {"id": "b", "task": "offline", "sequence": offline, "mels": torch.randn(128, 30, generator=g),
         "features": None, "reply_text": ["y"]},
    ]
    return StreamingCollator(tok)(examples), [online, offline]


def test_loss_equals_hf_causal_lm_loss_on_spec_labels(model):
    batch, seqs = make_batch(model)
    with torch.no_grad():
        out = model(batch)
        x = model.embed_batch(batch)
        labels = torch.full_like(batch["input_ids"], IGNORE)
        for b, s in enumerate(seqs):
            labels[b, : len(s)] = torch.tensor(s.labels)
        ref = model.backbone(inputs_embeds=x, attention_mask=batch["attention_mask"], labels=labels).loss
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-6)
    assert int(out["n_text_targets"]) == sum(sum(v != IGNORE for v in s.labels[1:]) for s in seqs)
    assert out["decision_counts"]["n"] == 3  # the online item's 3 chunks; offline has no decision


def test_keep_silence_weighting(model):
    batch, _ = make_batch(model)
    w = 0.25
    model.cfg.keep_silence_weight = w
    try:
        with torch.no_grad():
            out = model(batch)
            x = model.embed_batch(batch)
            logits = model.backbone(inputs_embeds=x, attention_mask=batch["attention_mask"]).logits
    finally:
        model.cfg.keep_silence_weight = 1.0
    t = batch["targets"]
    sel = t != IGNORE
    ce = torch.nn.functional.cross_entropy(logits[sel], t[sel], reduction="none")
    weight = torch.where(t[sel] == model.tokens.keep_silence, w, 1.0)
    assert int((t[sel] == model.tokens.keep_silence).sum()) == 2
    torch.testing.assert_close(out["loss"], (ce * weight).sum() / weight.sum(), rtol=1e-5, atol=1e-6)


def test_frames_replace_placeholders_only(model):
    batch, seqs = make_batch(model)
    with torch.no_grad():
        frames = model.audio_frames(batch)  # (3 chunks * 10, D)
        clips = model.clip_frames(batch)  # (7, D): the offline clip in ONE tower call
        x = model.embed_batch(batch)
        plain = model.embed(batch["input_ids"])
        alone = model.audio_encoder.tower(input_features=batch["clip_mels"], feature_lens=torch.tensor([30]))
    assert frames.shape[0] == 30 and clips.shape[0] == 7
    torch.testing.assert_close(clips, alone.last_hidden_state)
    L = batch["input_ids"].shape[1]
    flat = x.reshape(-1, x.shape[-1])
    torch.testing.assert_close(flat[batch["audio_positions"]], frames)
    torch.testing.assert_close(flat[batch["clip_positions"]], clips)
    others = torch.ones(flat.shape[0], dtype=torch.bool)
    others[batch["audio_positions"]] = False
    others[batch["clip_positions"]] = False
    torch.testing.assert_close(flat[others], plain.reshape(-1, x.shape[-1])[others])
    assert batch["audio_positions"].tolist() == seqs[0].audio_positions
    assert batch["clip_positions"].tolist() == [L + p for p in seqs[1].audio_positions]


def test_frozen_tower_has_no_graph(model):
    batch, _ = make_batch(model)
    for p in model.audio_encoder.parameters():
        p.requires_grad_(False)
    try:
        model.zero_grad()
        model(batch)["loss"].backward()
        assert all(p.grad is None for p in model.audio_encoder.parameters())
        assert model.backbone.model.layers[0].self_attn.q_proj.weight.grad is not None
    finally:
        for p in model.audio_encoder.parameters():
            p.requires_grad_(True)
        model.zero_grad()


def test_decision_metrics_by_hand():
    # two sessions: replies due at chunks 2 and 6 (item 0) and 1 (item 1)
    true = torch.tensor([0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    pred = torch.tensor([0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 1], dtype=torch.bool)
    item = torch.tensor([0] * 8 + [1] * 3)
    c = decision_counts(pred, true, pred == true, item)
    assert (c["tp"], c["fp"], c["fn"], c["n"], c["correct"]) == (1, 3, 2, 11, 6)
    assert onset_errors(pred[:8], true[:8]) == [1, 1] and c["onset_abs"] == 2 and c["onset_n"] == 3
    s = scores(c)
    assert s["reply_precision"] == 0.25 and s["reply_recall"] == 1 / 3 and s["reply_f1"] == 2 / 7
    assert s["onset_error"] == 2 / 3 and s["decision_acc"] == 6 / 11
    none = scores(decision_counts(torch.zeros(3, dtype=torch.bool), true[:3], true[:3] == 0, item[:3]))
    assert "reply_precision" not in none and none["reply_f1"] == 0.0


def test_projection_auto_and_config_errors():
    cfg = model_cfg("mini_omni3_tiny.yaml")
    cfg.encoder["output_dim"] = 48
    assert isinstance(MiniOmni3(cfg).audio_projector, torch.nn.Linear)
    assert MiniOmni3(model_cfg("mini_omni3_tiny.yaml")).audio_projector is None
    with pytest.raises(ValueError, match="projection"):
        model_cfg("mini_omni3_tiny.yaml", projection="mlp")
    with pytest.raises(ValueError, match="derived"):
        model_cfg("mini_omni3_tiny.yaml", backbone={"vocab_size": 10})


def test_full_size_config_on_meta_device():
    cfg = model_cfg("mini_omni3.yaml")
    with torch.device("meta"):
        m = MiniOmni3(cfg)
    bc, ac = m.backbone.config, m.audio_encoder.config
    assert (bc.num_hidden_layers, bc.hidden_size, bc.num_attention_heads, bc.num_key_value_heads,
            bc.intermediate_size, bc.vocab_size) == (36, 2048, 16, 2, 11008, 151936)
    assert m.backbone.lm_head.weight is m.backbone.model.embed_tokens.weight  # tied, as Qwen2.5-3B
    assert (ac.d_model, ac.encoder_layers, ac.num_mel_bins, ac.output_dim) == (1280, 32, 128, 2048)
    assert m.audio_projector is None and cfg.tokens.pad == 151608
    llm = sum(p.numel() for p in m.backbone.parameters())
    tower = sum(p.numel() for p in m.audio_encoder.parameters())
    assert 3.0e9 < llm < 3.2e9 and 0.6e9 < tower < 0.7e9
