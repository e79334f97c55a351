"""MiniMind-O stages: modes and Thinker freezing train exactly what they say, bad choices fail at start, and
(slow) the T2A -> A2A(audio_proj) -> A2A(all) curriculum runs from one command with falling losses."""
import csv
import logging

import pytest
import torch
from torch import nn

from omni.stages.freeze import apply_trainable
from omni.train import build_module
from tests.test_train import run_cli

torch.set_num_threads(1)
MM = ["model=minimind_o_tiny", "data=minimind_sample"]


def trainable(module) -> dict[str, set[bool]]:
    groups: dict[str, set[bool]] = {}
    for name, p in module.model.named_parameters():
        groups.setdefault(name.split(".")[0], set()).add(p.requires_grad)
    return groups


@pytest.mark.parametrize("stage,expect", [
    ("sft_t2a", {"thinker": {True}, "talker": {True}, "audio_proj": {True}, "vision_proj": {True}}),
    ("sft_a2a", {"thinker": {False}, "talker": {False}, "audio_proj": {True}, "vision_proj": {False}}),
    ("sft_i2t", {"thinker": {False}, "talker": {False}, "audio_proj": {False}, "vision_proj": {True}}),
])
def test_stage_modes_train_exactly_what_they_say(compose, stage, expect):
    module = build_module(compose(*MM, f"stage={stage}"), init_from=None)
    assert trainable(module) == expect
    assert module.param_counts["total"] == sum(p.numel() for p in module.model.parameters())


def test_thinker_freeze_options(compose):
    last = build_module(compose(*MM, "stage=sft_t2a", "stage.freeze=all_but_last"), init_from=None).model
    on = {n for n, p in last.named_parameters() if p.requires_grad and n.startswith("thinker.")}
    assert on and all(n.startswith(("thinker.model.layers.3.", "thinker.model.norm.")) for n in on)
    assert last.talker.layers[0].mlp.up_proj.weight.requires_grad
    none = build_module(compose(*MM, "stage=sft_t2a", "stage.freeze=all"), init_from=None)
    assert trainable(none)["thinker"] == {False} and trainable(none)["talker"] == {True}
    proj = build_module(compose(*MM, "stage=sft_a2a", "stage.freeze=all_but_last"), init_from=None)
    assert trainable(proj) == {"thinker": {False}, "talker": {False}, "audio_proj": {True}, "vision_proj": {False}}


def test_bad_mode_or_freeze_fails_at_start_listing_choices(compose):
    with pytest.raises(ValueError, match=r"mode='talker' is not one of \['all', 'audio_proj', 'vision_proj'\]"):
        build_module(compose(*MM, "stage=sft_t2a", "stage.mode=talker"), init_from=None)
    with pytest.raises(ValueError, match=r"freeze='last' is not one of \['all', 'all_but_last', 'none'\]"):
        build_module(compose(*MM, "stage=sft_a2a", "stage.freeze=last"), init_from=None)
    with pytest.raises(ValueError, match="either `trainable` or `mode`"):
        build_module(compose(*MM, "stage=sft_t2a", "stage.trainable=[talker.*]"), init_from=None)


def test_frozen_globs_with_exemptions_and_index_from_the_end(caplog):
    model = nn.Module()
    model.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(5))
    model.head = nn.Linear(2, 2)
    counts = apply_trainable(model, ["*"], frozen=["layers.*", "!layers.{-1}.*", "!layers.{-2}.bias"])
    on = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert on == ["head.bias", "head.weight", "layers.3.bias", "layers.4.bias", "layers.4.weight"]
    assert counts["trainable"] == 6 + 6 + 2  # head, layer 4, layer 3 bias
    with caplog.at_level(logging.WARNING):
        apply_trainable(model, ["head.*"], frozen=["body.*"])
    assert "body.*" in caplog.text


def stage_losses(run_dir) -> dict[str, list[float]]:
    """{stage name: train loss per epoch} from the CSV logs of each stage."""
    out = {}
    for version in sorted((run_dir / "csv").glob("version_*")):
        stage = next(line.split(": ")[1].strip() for line in (version / "hparams.yaml").read_text().splitlines()
                     if line.startswith("stage:"))
        rows = list(csv.DictReader(open(version / "metrics.csv")))
        out[stage] = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    return out


@pytest.mark.slow
def test_minimind_curriculum_from_one_command(tmp_path):
    res = run_cli("train.py", "experiment=minimind_curriculum", "logger=csv", "test=false",
                  f"hydra.run.dir={tmp_path}", f"paths.output_dir={tmp_path}", timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = stage_losses(tmp_path)
    assert set(losses) == {"sft_t2a", "sft_a2a_proj", "sft_a2a_all"}, losses
    for stage, curve in losses.items():
        assert len(curve) == 4 and curve[-1] < curve[0], (stage, curve)
    assert losses["sft_t2a"][-1] < 0.7 * losses["sft_t2a"][0]
    ckpt = {s: torch.load(tmp_path / "checkpoints" / s / "last.ckpt", weights_only=True)["state_dict"]
            for s in losses}
    key = "model.thinker.model.layers.0.mlp.up_proj.weight"  # trained in T2A, frozen in A2A(audio_proj)
    assert torch.equal(ckpt["sft_t2a"][key], ckpt["sft_a2a_proj"][key])
    assert not torch.equal(ckpt["sft_a2a_proj"][key], ckpt["sft_a2a_all"][key])
    proj = "model.audio_proj.mlp.1.weight"
    assert not torch.equal(ckpt["sft_t2a"][proj], ckpt["sft_a2a_proj"][proj])
    assert all(k.split(".")[1] in {"thinker", "talker", "audio_proj", "vision_proj"} for k in ckpt["sft_a2a_all"])
