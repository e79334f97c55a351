"""Each stage trains exactly what its config says; stage chaining by init_from; bad stage configs fail."""
import logging

import pytest
import torch

from omni.train import build_module

torch.set_num_threads(1)


def trainable_groups(module):
    groups = {}
    for name, p in module.model.named_parameters():
        top = name.split(".")[0]
        groups.setdefault(top, set()).add(p.requires_grad)
    return groups


@pytest.mark.parametrize("stage,expect", [
    ("alignment", {"backbone": {False}, "audio_encoder": {False}, "audio_adapter": {True}}),
    ("adapter", {"backbone": {True}, "audio_encoder": {False}, "audio_adapter": {False}}),
    ("multimodal", {"backbone": {True}, "audio_encoder": {False}, "audio_adapter": {True}}),
])
def test_stage_freezes_exactly_what_it_says(compose, stage, expect):
    module = build_module(compose(f"stage={stage}"), init_from=None)
    assert trainable_groups(module) == expect
    counts = module.param_counts
    n_trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    assert counts["trainable"] == n_trainable and counts["total"] == sum(p.numel() for p in module.model.parameters())
    opt = module.configure_optimizers() if module._trainer is not None else module.optimizer_factory(
        params=[p for p in module.model.parameters() if p.requires_grad])
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n_trainable


def test_pattern_matching_nothing_warns(compose, caplog):
    cfg = compose("stage=alignment", "stage.trainable=[audio_adapter.*,vision_adapter.*]")
    with caplog.at_level(logging.WARNING):
        build_module(cfg, init_from=None)
    assert "vision_adapter.*" in caplog.text


def test_init_from_previous_stage_checkpoint(compose, tmp_path):
    first = build_module(compose("stage=alignment"), init_from=None)
    with torch.no_grad():
        first.model.audio_adapter.proj.weight.fill_(0.125)
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in first.model.state_dict().items()}}, path)
    second = build_module(compose("stage=adapter"), init_from=str(path))
    assert torch.all(second.model.audio_adapter.proj.weight == 0.125)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"model.nope": torch.zeros(1)}}, bad)
    with pytest.raises(RuntimeError, match="does not fit the model"):
        build_module(compose("stage=adapter"), init_from=str(bad))


def test_init_from_released_litgpt_folder_and_hf_export(compose, tmp_path):
    from omni.mini_omni.convert import export_hf, export_litgpt

    src = build_module(compose("stage=multimodal"), init_from=None).model
    with torch.no_grad():
        src.audio_adapter.fc_1.weight.fill_(0.25)
    export_litgpt(src, tmp_path / "lit")
    export_hf(src, tmp_path / "hf")
    for folder in ("lit", "hf"):
        dst = build_module(compose("stage=alignment"), init_from=str(tmp_path / folder)).model
        for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
            if not name.startswith("audio_encoder."):  # released folders hold no Whisper weights
                assert torch.equal(a, b), (folder, name)
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        build_module(compose("stage=alignment"), init_from=str(tmp_path))
