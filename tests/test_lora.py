"""Issue 15, PEFT LoRA on the LLM / Thinker (omni/lora.py, `lora=default`): what is wrapped and what trains,
PEFT's merge against a hand computation, every exporter writes the merged model (logits of the reloaded export
equal the unmerged model's, fp32 <= 1e-5; exporting the base weights unmerged differs), checkpoints keep the
adapters (init_from merges them, resume is bit-exact), config mistakes fail at start naming the key."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from omni import lora
from omni.train import build_module
from tests.conftest import compose_cfg

torch.set_num_threads(1)

# family -> (a stage of it, the attribute holding its LLM / Thinker)
FAMILIES = {"mini_omni": ("multimodal", "backbone"), "minimind_o": ("sft_t2a", "thinker"),
            "mini_omni3": ("streaming", "backbone")}
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")


def module_for(tmp_path, family: str, *overrides: str, init_from=None):
    stage, _ = FAMILIES[family]
    return build_module(compose_cfg([f"stage={stage}", *overrides], tmp_path), init_from)


def llm_logits(model: nn.Module, family: str, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return getattr(model, FAMILIES[family][1])(input_ids=ids).logits


def trained_lora(tmp_path, family: str):
    """A family model with LoRA whose B matrices are nonzero (as after some updates), in eval mode."""
    module = module_for(tmp_path, family, "lora=default")
    torch.manual_seed(1)
    for layer in lora.lora_layers(module.model).values():
        nn.init.normal_(layer.lora_B[lora.ADAPTER].weight, std=0.2)
    return module.model.eval()


IDS = torch.tensor([[1, 5, 9, 30, 2, 17, 60, 11]])


# -- what is wrapped, what trains ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_family_default_targets_wrap_every_llm_block_linear_and_nothing_else(tmp_path, family):
    model = module_for(tmp_path, family, "lora=default").model
    llm = FAMILIES[family][1]
    n_layers = {"mini_omni": 2, "minimind_o": 4, "mini_omni3": 2}[family]  # the tiny configs' depths
    expected = {f"{llm}.model.layers.{i}.{p}" for i in range(n_layers) for p in PROJ}
    assert set(lora.lora_layers(model)) == expected


def test_adapter_size_and_trainable_share_hand_computed(tmp_path):
    """r = 8 on a 64-wide block (4 heads x 16, 2 KV heads -> k/v 32 wide, MLP 192): per layer
    8 * [(64+64) + (64+32) + (64+32) + (64+64) + 2 (64+192) + (192+64)] = 8 * 1216 = 9728 adapter parameters."""
    mm = module_for(tmp_path / "a", "minimind_o", "lora=default")
    assert mm.param_counts["lora"] == 4 * 9728
    # the wrapped weights are frozen: per layer 64*64 + 2 * 64*32 + 64*64 + 3 * 64*192
    # = 4096 + 4096 + 4096 + 36864 = 49152 weights (Qwen3: no biases)
    assert mm.param_counts["frozen"] == 4 * 49152
    mo = module_for(tmp_path / "b", "mini_omni", "lora=default")
    assert mo.param_counts["lora"] == 2 * 9728
    plain = module_for(tmp_path / "c", "minimind_o")  # negative control: without lora= nothing is wrapped
    assert not lora.has_lora(plain.model) and "lora" not in plain.param_counts


def grads(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def test_lora_trains_with_the_stage_patterns_and_freezes_the_wrapped_weights(tmp_path):
    g = grads(module_for(tmp_path / "a", "minimind_o", "lora=default").model)
    assert all(g[n] for n in g if ".lora_A." in n or ".lora_B." in n)
    assert not any(g[n] for n in g if ".base_layer." in n)
    # the rest of what stage sft_t2a (mode all: thinker.*, talker.*, projectors) names still trains
    assert g["thinker.model.embed_tokens.weight"] and g["thinker.model.layers.0.input_layernorm.weight"]
    assert all(g[n] for n in g if n.startswith(("talker.", "audio_proj.")))
    # Thinker frozen by the stage: the LoRA matrices on it train all the same (in addition to the patterns)
    g = grads(module_for(tmp_path / "b", "minimind_o", "lora=default", "stage.freeze=all").model)
    assert {n for n in g if n.startswith("thinker.") and g[n]} == \
        {n for n in g if n.startswith("thinker.") and (".lora_A." in n or ".lora_B." in n)}
    # the stage says otherwise: `!` kept globs in stage.frozen train the last layer's wrapped weights fully
    g = grads(module_for(tmp_path / "c", "minimind_o", "lora=default", "stage.freeze=all_but_last").model)
    assert g["thinker.model.layers.3.self_attn.q_proj.base_layer.weight"]
    assert not g["thinker.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert g["thinker.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    # Mini-Omni multimodal: the extended vocabulary's embeddings / head still train (audio tokens are new)
    g = grads(module_for(tmp_path / "d", "mini_omni", "lora=default").model)
    assert g["backbone.model.embed_tokens.weight"] and g["backbone.lm_head.weight"] and g["audio_adapter.proj.weight"]
    assert not g["backbone.model.layers.1.mlp.down_proj.base_layer.weight"]
    assert not any(g[n] for n in g if n.startswith("audio_encoder."))


# -- the merge, by hand --------------------------------------------------------------------------------------------
def test_merge_equals_the_hand_computed_update():
    """W = I, b = 0, r = 1, alpha = 2 (scaling 2), A = [[1, 2]], B = [[1], [0]]:
    W' = W + 2 * B @ A = [[3, 4], [0, 1]]; x = [1, 1] -> y = [7, 1]."""
    toy = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        toy[0].weight.copy_(torch.eye(2)), toy[0].bias.zero_()
    lora.apply_lora(toy, lora.LoraSettings(r=1, alpha=2.0, targets=["0"]))
    layer = toy[0]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, 2.0]]))
        layer.lora_B["default"].weight.copy_(torch.tensor([[1.0], [0.0]]))
    x = torch.tensor([[1.0, 1.0]])
    assert torch.equal(toy(x), torch.tensor([[7.0, 1.0]]))  # unmerged forward
    merged = lora.export_view(toy)
    assert type(merged[0]) is nn.Linear and lora.has_lora(toy)  # a copy: the caller's model keeps its adapters
    assert torch.equal(merged[0].weight, torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    assert torch.equal(merged(x), torch.tensor([[7.0, 1.0]]))
    # negative controls: the update without alpha / r ([[2, 2], [0, 1]] -> [4, 1]) and the unmerged base (I)
    assert not torch.equal(merged[0].weight, torch.eye(2) + torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    assert torch.equal(lora.export_view(toy, merge_lora_adapters=False)[0].weight, torch.eye(2))


# -- every exporter merges ----------------------------------------------------------------------------------------
def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _check_export(tmp_path, family, export, reload):
    """`export(model, dst, merge_lora=...)` then `reload(dst) -> plain model`: merged == unmerged logits; the
    base weights exported without merging give different logits (B is nonzero); the caller's model is unchanged."""
    model = trained_lora(tmp_path / "m", family)
    ref = llm_logits(model, family, IDS)
    merged = reload(export(model, tmp_path / "merged", merge_lora=True))
    assert not lora.has_lora(merged)
    assert _close(llm_logits(merged.eval(), family, IDS), ref) <= 1e-5
    base = reload(export(model, tmp_path / "base", merge_lora=False))
    assert _close(llm_logits(base.eval(), family, IDS), ref) > 1e-3  # negative control
    assert lora.has_lora(model) and torch.equal(llm_logits(model, family, IDS), ref)
    return tmp_path / "base"


def _fresh(tmp_path, family):
    return module_for(tmp_path / "fresh", family).model  # same config, no LoRA, other random weights


def test_mini_omni_litgpt_and_hf_exports_are_merged(tmp_path):
    from omni.mini_omni.convert import export_hf, export_litgpt, load_hf, load_litgpt_into

    def litgpt(dst):
        model = _fresh(tmp_path, "mini_omni")
        load_litgpt_into(model, dst)
        return model

    base = _check_export(tmp_path / "lit", "mini_omni", export_litgpt, litgpt)
    assert (base / "lora_adapters.safetensors").is_file()  # unmerged: the adapters are written apart
    _check_export(tmp_path / "hf", "mini_omni", export_hf, load_hf)


def test_minimind_o_pth_and_hf_exports_are_merged(tmp_path):
    from omni.minimind_o.convert import export_hf, export_pth, init_from

    def released(dst):
        model = _fresh(tmp_path, "minimind_o")
        assert init_from(model, dst)  # the released-format reader (`init_from=` / `convert import`)
        return model

    _check_export(tmp_path / "pth", "minimind_o",
                  lambda m, d, merge_lora: export_pth(m, d.with_suffix(".pth"), dtype=None, merge_lora=merge_lora),
                  lambda d: released(d.with_suffix(".pth")))
    assert (tmp_path / "pth" / "base.lora_adapters.safetensors").is_file()
    _check_export(tmp_path / "hf", "minimind_o", export_hf, released)


# -- checkpoints keep the adapters; init_from / load_for_eval merge them ------------------------------------------
def _lora_checkpoint(model: nn.Module, path):
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                lora.CHECKPOINT_KEY: lora.checkpoint_entry(model)}, path)
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_init_from_a_lora_checkpoint_merges_its_adapters(tmp_path, family):
    model = trained_lora(tmp_path / "m", family)
    ref = llm_logits(model, family, IDS)
    ckpt = _lora_checkpoint(model, tmp_path / "lora.ckpt")
    assert any(".lora_B.default.weight" in k for k in torch.load(ckpt, weights_only=True)["state_dict"])
    plain = module_for(tmp_path / "p", family, init_from=str(ckpt)).model.eval()
    assert not lora.has_lora(plain) and _close(llm_logits(plain, family, IDS), ref) <= 1e-5
    # a new LoRA stage from it: fresh adapters (B = 0) on the merged weights, same function at its start
    again = module_for(tmp_path / "q", family, "lora=default", init_from=str(ckpt)).model.eval()
    assert lora.has_lora(again) and _close(llm_logits(again, family, IDS), ref) <= 1e-5
    # negative control: the same tensors without the merge (base weights only) are another function
    base = module_for(tmp_path / "r", family).model.eval()
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    base.load_state_dict(state)
    assert _close(llm_logits(base, family, IDS), ref) > 1e-3


def test_lora_checkpoint_without_its_settings_fails_naming_the_file(tmp_path):
    model = trained_lora(tmp_path / "m", "minimind_o")
    path = tmp_path / "no_entry.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*no `omni_lora`"):
        module_for(tmp_path / "p", "minimind_o", init_from=str(path))


FAST = ["debug=fast", "logger=csv", "data.max_tokens=1200", "test=false", "callbacks.text_metrics=null",
        "scheduler=null", "lora=default", "callbacks.model_checkpoint.monitor=null"]


def test_lora_run_resumes_bit_exact_and_evaluates_merged(tmp_path):
    """Mini-Omni multimodal with lora=default: 2 epochs straight == 1 epoch + resume (every tensor, adapters
    included, bit-identical); the checkpoint keeps the adapters and `omni_lora`; load_for_eval (eval.py, the
    exporters' ckpt-to-*) gives the merged model, whose logits equal the LoRA model's."""
    from omni.checkpoint import load_for_eval
    from omni.train import train

    straight = train(compose_cfg(FAST + ["trainer.max_epochs=2"], tmp_path / "straight"))
    first = train(compose_cfg(FAST, tmp_path / "first"))
    resumed = train(compose_cfg(FAST + ["trainer.max_epochs=2", f"ckpt_path={first['last_checkpoint']}"],
                                tmp_path / "resumed"))
    a = torch.load(straight["last_checkpoint"], map_location="cpu", weights_only=True)
    b = torch.load(resumed["last_checkpoint"], map_location="cpu", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    lora_b = [k for k in a["state_dict"] if ".lora_B.default." in k]
    assert len(lora_b) == 14 and any(a["state_dict"][k].abs().sum() > 0 for k in lora_b)  # trained: B moved
    assert a[lora.CHECKPOINT_KEY]["r"] == 8 and a[lora.CHECKPOINT_KEY]["alpha"] == 16.0
    model, _ = load_for_eval(straight["last_checkpoint"])
    assert not lora.has_lora(model)
    live = module_for(tmp_path / "live", "mini_omni", "lora=default")
    live.load_state_dict(a["state_dict"])
    assert _close(llm_logits(model, "mini_omni", IDS), llm_logits(live.model.eval(), "mini_omni", IDS)) <= 1e-5


# -- config mistakes fail at start ---------------------------------------------------------------------------------
def test_bad_lora_settings_fail_at_start_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"lora\.r=0 must be an integer >= 1"):
        module_for(tmp_path / "a", "minimind_o", "lora=default", "lora.r=0")
    with pytest.raises(ValueError, match=r"lora\.targets \['nope\.\*'\] match no nn\.Linear module of MiniMindO"):
        module_for(tmp_path / "b", "minimind_o", "lora=default", "lora.targets=[nope.*]")
    from omni.config import ConfigTypeError, validate_config

    with pytest.raises(ConfigTypeError, match=r"lora\.r"):
        validate_config(compose_cfg(["stage=sft_t2a", "lora=default", "lora.r=eight"], tmp_path / "c"))
    validate_config(compose_cfg(["stage=sft_t2a", "lora=default"], tmp_path / "d"))  # the shipped group passes
