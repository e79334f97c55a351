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


# -- split-level decision metrics (torchmetrics, summed counts) -----------------------------------------------------
# batch A (1 session): reply due at chunk 0 and predicted there: tp 1, fp 0, fn 0, 3/3 correct, onset |0 - 0| = 0
TABLE_A = dict(true=[1, 0, 0], pred=[1, 0, 0], item=[0, 0, 0])
# batch B (2 sessions): the hand table of test_decision_metrics_by_hand: tp 1, fp 3, fn 2, 6/11, onsets 1 + 1 over 3
TABLE_B = dict(true=[0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0], pred=[0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 1], item=[0] * 8 + [1] * 3)
# the split: tp 2, fp 3, fn 2 -> F1 2*2 / (2*2 + 3 + 2) = 4/9, precision 2/5, recall 2/4; accuracy (3 + 6) / 14;
# onset (0 + 2) / (1 + 3) = 1/2.  Mean of the batch F1s (1 + 2/7) / 2 = 9/14; batch-size-weighted (1 * 1 + 2 * 2/7)
# / 3 = 11/21 (what val/reply_f1 logged before): both differ from 4/9.
SPLIT = {"reply_f1": 4 / 9, "reply_precision": 2 / 5, "reply_recall": 1 / 2, "decision_acc": 9 / 14,
         "onset_error": 1 / 2}


def table_counts(t):
    true, pred = torch.tensor(t["true"], dtype=torch.bool), torch.tensor(t["pred"], dtype=torch.bool)
    return decision_counts(pred, true, pred == true, torch.tensor(t["item"]))


def test_decision_metric_is_the_split_value_not_a_mean_of_batches():
    from omni.mini_omni3.metrics import DecisionMetrics

    metric = DecisionMetrics()
    metric.update({"decision_counts": table_counts(TABLE_A), "loss": 0.0})
    metric.update({"loss": 0.0})  # a batch without decisions (offline rows only) adds nothing
    metric.update({"decision_counts": table_counts(TABLE_B)})
    got = {k: float(v) for k, v in metric.compute().items()}
    assert got == pytest.approx(SPLIT)
    assert got["reply_f1"] != pytest.approx(9 / 14) and got["reply_f1"] != pytest.approx(11 / 21)
    metric.reset()
    assert metric.compute() == {}


class RiggedDecisions(MiniOmni3):
    """The real forward and loss; the decisions of the i-th call come from a hand table (a subclass: still the
    Mini-Omni3 family for the registry)."""

    tables: list = []

    def decision_counts(self, *args, **kwargs):
        return table_counts(self.tables.pop(0))


def test_val_reply_f1_logged_over_the_split(tmp_path):
    """Through OmniModule + Lightning's validate: two batches (1 and 2 sessions) whose decisions are TABLE_A and
    TABLE_B log val/reply_f1 = 4/9 and the other split scores, not the batch-weighted 11/21."""
    import functools

    from lightning import Trainer

    from omni.stages.module import OmniModule

    torch.manual_seed(0)
    rigged = RiggedDecisions(model_cfg("mini_omni3_tiny.yaml")).eval()
    RiggedDecisions.tables = [TABLE_A, TABLE_B]
    batch_b, _ = make_batch(rigged)
    online = online_sequence(rigged.tokens, [5, 6, 7], 3, {1: Reply((40, 41, 42), "happy")})
    batch_a = StreamingCollator(rigged.tokens)([{"id": "c", "task": "online", "sequence": online, "features": None,
                                                 "mels": torch.randn(3, 128, 40), "reply_text": ["x"]}])
    module = OmniModule(rigged, {"name": "s", "trainable": ["*"], "tasks": {"online": 1.0}},
                        optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.validate(module, dataloaders=torch.utils.data.DataLoader([batch_a, batch_b], batch_size=None,
                                                                     collate_fn=lambda x: x))
    got = {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items()
           if k.removeprefix("val/") in SPLIT}
    assert got == pytest.approx(SPLIT)
    assert got["reply_f1"] != pytest.approx(11 / 21)


@pytest.mark.slow  # two spawned processes
def test_decision_metric_syncs_over_two_gloo_processes(tmp_path):
    """Rank 0 holds batch A's decisions, rank 1 batch B's: both compute the split's 4/9 (each rank's own F1 is
    1 and 2/7)."""
    import json

    import torch.multiprocessing as mp

    from tests.gloo_workers import decision_metrics_worker

    counts = [table_counts(TABLE_A), table_counts(TABLE_B)]
    mp.spawn(decision_metrics_worker, args=(2, str(tmp_path / "init"), str(tmp_path), counts), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == pytest.approx(SPLIT)
