"""Release parity for Mini-Omni / Mini-Omni2 (issue 12).

A release-format litgpt folder (`lit_model.pth` + `model_config.yaml`) is built here from random weights with the
architecture of conf/model/mini_omni_tiny.yaml. It must import through `init_from=` (omni.checkpoint.
load_model_weights on the folder and on its lit_model.pth, the train module that train.py uses, a train.py run) and
through the converter CLI, and every path must give the logits of the independent fp64 forward of
tests/test_convert.py (written from ../shared/spec/mini_omni.md and the released litgpt model), within 1e-5 in fp32.
What the release says about itself (model_config.yaml) is compared with the chosen model config: a mismatch fails
at start naming the key and both values. Negative controls: the plausible wrong variants (an ungrouped qkv split,
a different rope base) give different logits, so the comparisons can tell.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from omni.checkpoint import load_model_weights
from omni.mini_omni.convert import (
    LIT_CONFIG, LIT_WEIGHTS, export_hf, import_litgpt, litgpt_to_omni, load_hf, load_omni_state, main,
    read_litgpt_config,
)
from omni.mini_omni.layout import audio_prompt, image_prompt, text_prompt
from omni.mini_omni.model import MiniOmni
from tests.conftest import CONF, compose_cfg
from tests.test_convert import (
    ENC, HEAD, LIT_YAML, N_GROUPS, N_HEAD, N_LAYER, TINY_CLIP, VIS, our_row_logits, random_litgpt_state,
    ref_forward, spec_ids_a1t2, spec_ids_image_a1a2, spec_ids_t1t2, vision_litgpt_state, write_litgpt,
)

torch.set_num_threads(1)

# the release yaml of a model with mini_omni_tiny's backbone (test_convert's LIT_YAML has rope 1e4, block 256)
TINY_RELEASE = {"rope_base": 1000000.0, "block_size": 2048}
TINY_YAML = {**LIT_YAML, **TINY_RELEASE}
TOL = 1e-5  # fp32 model vs fp64 reference, max |difference| of any logit
TEXT = [5, 77, 300, 511, 0, 42]
T = 5


def feats() -> torch.Tensor:
    return torch.randn(T, ENC, generator=torch.Generator().manual_seed(3))


def references(sd: dict[str, torch.Tensor], yaml_cfg: dict = TINY_YAML) -> dict[str, tuple]:
    """Reference logits of a T1T2 and an A1T2 prompt (spec tables, global ids)."""
    return {"t1t2": ref_forward(sd, spec_ids_t1t2(TEXT), yaml_cfg=yaml_cfg),
            "a1t2": ref_forward(sd, spec_ids_a1t2(T), feats(), yaml_cfg=yaml_cfg)}


def max_diff(model: MiniOmni, refs: dict[str, tuple]) -> float:
    """Largest |our fp32 logit - reference| over every row of both prompts."""
    model = model.float().eval()
    tok = model.tokens
    worst = 0.0
    for task, (ra, rt) in refs.items():
        ids = text_prompt(tok, TEXT, task) if task == "t1t2" else audio_prompt(tok, T, task)
        xa, xt = our_row_logits(model, ids, None if task == "t1t2" else feats())
        assert xt.dtype == torch.float32
        for ours, ref in zip([*xa, xt], [*ra, rt]):
            worst = max(worst, float((ours.double() - ref).abs().max()))
    return worst


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = random_litgpt_state()
    return write_litgpt(tmp_path_factory.mktemp("release"), sd, TINY_RELEASE), sd


def fresh(cfg, seed: int = 5) -> MiniOmni:
    torch.manual_seed(seed)  # any init: every imported tensor must be overwritten
    return MiniOmni(cfg).eval()


def test_release_folder_imports_through_init_from_and_the_cli_with_spec_logits(release, tiny_model_cfg, tmp_path):
    folder, sd = release
    refs = references(sd)
    assert max(float(r.abs().max()) for _, r in refs.values()) > 1.0  # logits are not trivially small
    got = {}
    model = fresh(tiny_model_cfg)
    load_model_weights(model, folder)  # the released folder
    got["init_from folder"] = max_diff(model, refs)
    model = fresh(tiny_model_cfg, 6)
    load_model_weights(model, folder / LIT_WEIGHTS)  # its lit_model.pth, model_config.yaml beside it
    got["init_from lit_model.pth"] = max_diff(model, refs)
    # the converter CLI: litgpt -> our HF export, then that folder loaded and also given to init_from
    main(["litgpt-to-hf", str(folder), str(tmp_path / "hf"), "--model-config",
          str(CONF / "model" / "mini_omni_tiny.yaml")])
    got["CLI litgpt-to-hf + load_hf"] = max_diff(load_hf(tmp_path / "hf"), refs)
    model = fresh(tiny_model_cfg, 7)
    load_model_weights(model, tmp_path / "hf")
    got["init_from CLI output"] = max_diff(model, refs)
    assert all(d <= TOL for d in got.values()), got

    # negative controls: the plausible wrong variants of two weight-format facts move the logits far beyond TOL
    lc = read_litgpt_config(folder)
    state = litgpt_to_omni(sd, lc)
    for i in range(N_LAYER):  # ungrouped split: q = first H*S rows, then k, then v (plain HF order, not per group)
        o, fused = f"backbone.model.layers.{i}.self_attn.", sd[f"transformer.h.{i}.attn.attn.weight"]
        bias = sd[f"transformer.h.{i}.attn.attn.bias"]
        cuts = [0, N_HEAD * HEAD, (N_HEAD + N_GROUPS) * HEAD, (N_HEAD + 2 * N_GROUPS) * HEAD]
        for j, name in enumerate("qkv"):
            state[f"{o}{name}_proj.weight"] = fused[cuts[j]: cuts[j + 1]].clone()
            state[f"{o}{name}_proj.bias"] = bias[cuts[j]: cuts[j + 1]].clone()
    wrong = fresh(tiny_model_cfg)
    load_omni_state(wrong, state)
    assert max_diff(wrong, refs) > 1e-2
    wrong_rope = dataclasses.replace(tiny_model_cfg, backbone={
        **tiny_model_cfg.backbone, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})
    wrong = fresh(wrong_rope)
    load_omni_state(wrong, litgpt_to_omni(sd, lc))  # what loading a rope-1e4 model silently would compute
    assert max_diff(wrong, refs) > 1e-2


def test_release_folder_through_the_train_module_and_train_py(release, tmp_path):
    """`python train.py model=mini_omni_tiny init_from=<folder> debug=fast`, in process: the module train.py builds
    starts from the release (spec logits), a short fit runs from it; a release with another rope base stops the
    run at start, naming the key and both values."""
    from omni.train import build_module, train

    folder, sd = release
    overrides = ["model=mini_omni_tiny", "debug=fast", "logger=none", "callbacks=none", "test=false",
                 f"init_from={folder}"]
    cfg = compose_cfg(overrides, tmp_path / "run")
    module = build_module(cfg, init_from=cfg.init_from)
    assert max_diff(module.model, references(sd)) <= TOL
    metrics = train(cfg)
    assert Path(metrics["last_checkpoint"]).is_file()
    bad = write_litgpt(tmp_path / "bad", sd, {**TINY_RELEASE, "rope_base": 10000})
    cfg = compose_cfg([*overrides[:-1], f"init_from={bad}"], tmp_path / "bad_run")
    with pytest.raises(ValueError, match=r"rope_base: checkpoint 10000\.0, model 1000000\.0"):
        train(cfg)


@pytest.mark.parametrize("override,message", [
    ({"rope_base": 10000}, r"rope_base: checkpoint 10000\.0, model 1000000\.0 \(model\.cfg\.backbone\.rope_parameters"),
    ({"norm_eps": 1e-5}, r"norm_eps: checkpoint 1e-05, model 1e-06 \(model\.cfg\.backbone\.rms_norm_eps\)"),
    ({"n_layer": 3}, r"n_layer: checkpoint 3, model 2"),
    ({"n_head": 8, "head_size": 8}, r"n_head: checkpoint 8, model 4.*head_size: checkpoint 8, model 16"),
    ({"n_query_groups": 4}, r"n_query_groups: checkpoint 4, model 2"),
    ({"n_embd": 128}, r"n_embd: checkpoint 128, model 64"),
    ({"intermediate_size": 256}, r"intermediate_size: checkpoint 256, model 192"),
    ({"text_vocab_size": 640, "padded_vocab_size": 640 + 7 * 4160},
     r"text_vocab_size: checkpoint 640, model 576.*padded_vocab_size: checkpoint 29760, model 29696"),
    ({"whisper_adapter_dim": 32}, r"whisper_adapter_dim: checkpoint 32, model 64"),
    ({"asr_adapter": "mlp"}, r"asr_adapter: checkpoint 'mlp', model 'llamamlp'"),
    ({"vision_adapter_dim": VIS}, r"vision_adapter_dim: checkpoint 24, model None"),
])
def test_release_config_mismatch_fails_at_start_naming_key_and_values(tmp_path, tiny_model_cfg, override, message):
    """Shapes alone cannot catch rope base or norm eps (same tensors): the yaml is compared key by key before any
    tensor is read, on the folder and on its lit_model.pth; the model is left untouched."""
    folder = write_litgpt(tmp_path / "rel", random_litgpt_state(), {**TINY_RELEASE, **override})
    model = fresh(tiny_model_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for path in (folder, folder / LIT_WEIGHTS):
        with pytest.raises(ValueError, match=message) as err:
            load_model_weights(model, path)
        assert str(folder / LIT_CONFIG) in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_block_size_difference_is_not_fatal(tmp_path, tiny_model_cfg):
    """block_size (the rope cache length) does not change what the weights compute: logged, loaded."""
    sd = random_litgpt_state()
    folder = write_litgpt(tmp_path / "rel", sd, {**TINY_RELEASE, "block_size": 4096})
    model = fresh(tiny_model_cfg)
    load_model_weights(model, folder)
    assert max_diff(model, references(sd)) <= TOL


def test_hf_export_config_is_compared_too(tmp_path, tiny_model_cfg):
    """Our own export (omni_config.json) carries a config as well: loading one with rope 1e4 into the tiny
    (rope 1e6) model fails naming the key; into a matching model it loads exactly."""
    cfg = dataclasses.replace(tiny_model_cfg, backbone={
        **tiny_model_cfg.backbone, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})
    src = fresh(cfg)
    export_hf(src, tmp_path / "hf")
    with pytest.raises(ValueError, match=r"rope_base: checkpoint 10000\.0, model 1000000\.0"):
        load_model_weights(fresh(tiny_model_cfg), tmp_path / "hf")
    same = fresh(cfg, 9)
    load_model_weights(same, tmp_path / "hf")
    ours = {k: v for k, v in src.state_dict().items() if not k.startswith("audio_encoder.")}
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in ours.items())


def test_lit_model_pth_without_its_yaml_is_refused_clearly(tmp_path, tiny_model_cfg):
    (tmp_path / "lone").mkdir()
    torch.save(random_litgpt_state(), tmp_path / "lone" / LIT_WEIGHTS)
    with pytest.raises(ValueError, match="needs its model_config.yaml beside it"):
        load_model_weights(fresh(tiny_model_cfg), tmp_path / "lone" / LIT_WEIGHTS)


def test_mini_omni2_release_through_init_from_with_spec_logits(tmp_path, tiny_model_cfg):
    """A Mini-Omni2 folder (vision_adapter + vision_adapter_dim) into a model with a matching vision tower:
    image-QA logits (CLIP features at 1..50, Whisper at 52..) equal the reference within 1e-5; a model whose vision
    adapter is narrower than the release's (litgpt: intermediate_size) fails at start naming the key."""
    sd = vision_litgpt_state()
    folder = write_litgpt(tmp_path / "omni2", sd, {**TINY_RELEASE, "vision_adapter_dim": VIS})
    cfg = dataclasses.replace(tiny_model_cfg, vision=dict(TINY_CLIP), vision_adapter_hidden=LIT_YAML["intermediate_size"])
    model = fresh(cfg)
    load_model_weights(model, folder)
    g = torch.Generator().manual_seed(3)
    f, image = torch.randn(T, ENC, generator=g), torch.randn(50, VIS, generator=g)
    ra, rt = ref_forward(sd, spec_ids_image_a1a2(T), f, audio_at=52, image=image, yaml_cfg=TINY_YAML)
    ids = image_prompt(model.tokens, T, "image_a1a2").unsqueeze(0)
    i0, one = torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)
    with torch.no_grad():
        x = model.embed(ids, model.audio_adapter(f[None]), i0, one * 52, one * T, model.vision_adapter(image[None]),
                        i0, one, one * 50)
        h = model.hidden(x).last_hidden_state[0]
    worst = max(float((model.row_logits(h, r).double() - ref).abs().max()) for r, ref in enumerate([*ra, rt]))
    assert worst <= TOL, worst
    narrow = fresh(dataclasses.replace(cfg, vision_adapter_hidden=96))
    with pytest.raises(ValueError, match=r"intermediate_size \(vision_adapter width\): checkpoint 192, model 96"):
        load_model_weights(narrow, folder)
    cfg_imported, _ = import_litgpt(folder, cfg)  # the CLI's import reads the same yaml
    assert cfg_imported.backbone["rope_parameters"]["rope_theta"] == 1000000.0
