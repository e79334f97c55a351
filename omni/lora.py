"""PEFT LoRA on a family's LLM / Thinker (`python train.py lora=default`), merged for evaluation and export.

- What is adapted: the `nn.Linear` modules whose full names (in the family model, e.g.
  `backbone.model.layers.3.self_attn.q_proj`) match `lora.targets` (fnmatch globs), or, when that is null, the
  family's own default (`Family.lora_targets`, in omni/<family>/family.py). Shared code names no family.
- Injection is PEFT's (`peft.inject_adapter_in_model`): a wrapped Linear `X` becomes `X.base_layer` (the original
  weight) + `X.lora_A.default` / `X.lora_B.default` (B starts at zero: the model is unchanged at step 0); its
  output is base(x) + B(A(dropout(x))) * alpha / r.
- What trains (omni.stages.module.OmniModule): the stage's patterns as always, PLUS every LoRA matrix; the
  wrapped base weights (`*.base_layer.*`) are frozen even where a broad stage pattern (`backbone.*`, `thinker.*`)
  matches them, unless the stage says otherwise with a `!glob` in `stage.frozen` (e.g.
  `stage.frozen=['!backbone.model.layers.{-1}.*']`: the last layer trains fully, the others through LoRA). Other
  parameters a stage pattern matches (embeddings, norms, head, adapters) train as the stage says.
- Checkpoints keep the adapters (Lightning's state dict holds base and LoRA tensors; `omni_lora` holds the settings
  and the exact wrapped module names): `ckpt_path=` resumes them as they are. `init_from=` a LoRA checkpoint, and
  `load_for_eval` (eval.py, the demo, every exporter's `ckpt-to-*`), rebuild the adapters from `omni_lora`, load,
  and merge them into the base weights (W <- W + B @ A * alpha / r, PEFT's own merge): the model is a plain one.
- Exporters call `prepare_export(model, merge_lora, ...)`: merged (default) on a copy, the caller's model
  untouched; `merge_lora=False` writes the base weights and the adapters apart (`lora_adapters.safetensors`).
"""
from __future__ import annotations

import copy
import fnmatch
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

ADAPTER = "default"                   # PEFT's adapter name (part of the parameter names: `lora_A.default.weight`)
BASE_FROZEN = "*.base_layer.*"        # the wrapped weights: frozen under LoRA unless `!`-kept by stage.frozen
ADAPTER_PATTERNS = ("*.lora_A.*", "*.lora_B.*")
CHECKPOINT_KEY = "omni_lora"          # Lightning checkpoint entry: {"r", "alpha", "dropout", "targets": [names]}


@dataclass
class LoraSettings:
    """`lora=default` (conf/lora/default.yaml). `targets`: fnmatch globs over module names; null: the family's
    `lora_targets`. Only nn.Linear modules are adapted; a glob that matches none fails at start naming it."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] | None = None

    def __post_init__(self) -> None:
        if type(self.r) is not int or self.r < 1:
            raise ValueError(f"lora.r={self.r!r} must be an integer >= 1 (the adapters' rank)")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or self.alpha <= 0:
            raise ValueError(f"lora.alpha={self.alpha!r} must be a number > 0 (the update is scaled by alpha / r)")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"lora.dropout={self.dropout!r} must be in [0, 1)")
        self.alpha, self.dropout = float(self.alpha), float(self.dropout)
        if self.targets is not None:
            if isinstance(self.targets, str) or not all(isinstance(t, str) and t for t in self.targets):
                raise ValueError(f"lora.targets={self.targets!r} must be a list of module-name globs (or null: "
                                 "the family's default)")
            self.targets = list(self.targets)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def settings(value: Any) -> LoraSettings | None:
    """`cfg.lora` (None / {} for `lora=none`, a LoraSettings, or a plain mapping) -> LoraSettings or None."""
    if value is None or isinstance(value, LoraSettings):
        return value
    value = {k: v for k, v in dict(value).items() if k not in ("_target_", "_convert_")}
    return LoraSettings(**value) if value else None


def target_modules(model: nn.Module, globs: list[str] | tuple[str, ...]) -> list[str]:
    """Names of the nn.Linear modules of `model` matching one of `globs`; a glob matching none raises."""
    linear = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    names, unmatched = [], []
    for glob in globs:
        hits = [n for n in linear if fnmatch.fnmatchcase(n, glob)]
        if not hits:
            unmatched.append(glob)
        names += [n for n in hits if n not in names]
    if unmatched:
        raise ValueError(f"lora.targets {unmatched} match no nn.Linear module of {type(model).__name__} "
                         f"(module names look like {linear[:4]})")
    return names


def has_lora(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def apply_lora(model: nn.Module, lora: LoraSettings, default_targets: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Inject LoRA adapters (PEFT) into `model` in place; returns the wrapped module names. Requires_grad is left
    to the caller (OmniModule: `trainable_with_lora`)."""
    from peft import LoraConfig, inject_adapter_in_model

    if has_lora(model):
        raise ValueError(f"{type(model).__name__} already has LoRA adapters")
    globs = lora.targets if lora.targets is not None else list(default_targets)
    if not globs:
        raise ValueError(f"lora: no target modules for {type(model).__name__}: set lora.targets (module-name "
                         "globs) or give its family a `lora_targets` default (omni/<family>/family.py)")
    names = target_modules(model, globs)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=names,
                        bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():  # PEFT froze everything else: restore what the caller had
        if name in grads:
            param.requires_grad_(grads[name])
    log.info("LoRA r=%d alpha=%g dropout=%g on %d modules (%s ...)", lora.r, lora.alpha, lora.dropout, len(names),
             names[0])
    return names


def trainable_with_lora(model: nn.Module) -> dict[str, int]:
    """After the stage's `apply_trainable` (given BASE_FROZEN among its frozen globs): every LoRA matrix trains.
    Returns the parameter counts with `lora` (the adapters' size) added."""
    lora = trainable = total = 0
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in ADAPTER_PATTERNS):
            param.requires_grad_(True)
            lora += param.numel()
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    log.info("LoRA: %s adapter parameters; trainable %s / %s (%.3f%%)", f"{lora:,}", f"{trainable:,}",
             f"{total:,}", 100.0 * trainable / max(total, 1))
    return {"trainable": trainable, "total": total, "frozen": total - trainable, "lora": lora}


def checkpoint_entry(model: nn.Module) -> dict[str, Any]:
    """The `omni_lora` checkpoint entry (plain data), read from the model's LoRA layers."""
    layers = lora_layers(model)
    first = next(iter(layers.values()))
    dropout = first.lora_dropout[ADAPTER]
    return {"r": int(first.r[ADAPTER]), "alpha": float(first.lora_alpha[ADAPTER]),
            "dropout": float(dropout.p) if isinstance(dropout, nn.Dropout) else 0.0, "targets": list(layers)}


def state_has_adapters(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_A." in k or ".lora_B." in k for k in state)


def load_merged(model: nn.Module, ckpt: dict, state: dict[str, torch.Tensor], source: Any,
                strict: bool = True) -> tuple[list[str], list[str]]:
    """Load a LoRA checkpoint's `state` (base + adapter tensors) into a plain `model` and merge the adapters into
    its base weights (PEFT's merge). The adapters are rebuilt from the checkpoint's `omni_lora` entry. Returns
    (missing, unexpected) keys like `load_state_dict(strict=False)`."""
    entry = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(entry, dict):
        raise ValueError(f"{source}: holds LoRA adapter tensors (`*.lora_A.*`) but no `{CHECKPOINT_KEY}` entry "
                         "(rank, alpha, wrapped modules); was it written by train.py?")
    apply_lora(model, LoraSettings(r=entry["r"], alpha=entry["alpha"], dropout=entry.get("dropout", 0.0),
                                   targets=[_escape(n) for n in entry["targets"]]))
    missing, unexpected = model.load_state_dict(state, strict=strict)
    merge_lora(model)
    log.info("%s: merged LoRA adapters (r=%s, alpha=%s, %d modules) into the base weights", source, entry["r"],
             entry["alpha"], len(entry["targets"]))
    return list(missing), list(unexpected)


def _escape(name: str) -> str:
    """A module name as an fnmatch glob matching exactly itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@torch.no_grad()
def merge_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """In place: every LoRA layer replaced by its base layer, the adapters merged into it first (PEFT's
    `merge(safe_merge=True)`: a non-finite merged weight raises) unless `merge=False` (the adapters are dropped)."""
    for name, layer in lora_layers(model).items():
        if merge:
            layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    model.__dict__.pop("peft_config", None)  # set by inject_adapter_in_model; the model is a plain one again
    return model


def export_view(model: nn.Module, merge_lora_adapters: bool = True) -> nn.Module:
    """What an exporter writes: the model itself when it has no LoRA; otherwise a copy with the adapters merged
    (default) or, with `merge_lora_adapters=False`, a copy holding only the base weights (the adapters are then
    not in the export: the caller saves them with `save_adapters`). The caller's model is never changed."""
    if not has_lora(model):
        return model
    return merge_lora(copy.deepcopy(model), merge=merge_lora_adapters)


def prepare_export(model: nn.Module, merge_lora_adapters: bool, adapters_path) -> nn.Module:
    """The exporters' first line: `export_view`; when it is not merged, the adapters go to `adapters_path`
    (safetensors, `save_adapters`) so the export plus that file hold the whole trained model."""
    view = export_view(model, merge_lora_adapters)
    if view is not model and not merge_lora_adapters:
        save_adapters(model, adapters_path)
        log.warning("export without merging: base weights written, LoRA adapters saved apart in %s", adapters_path)
    return view


def save_adapters(model: nn.Module, path) -> Any:
    """The LoRA tensors of `model` (our parameter names) as safetensors, rank / alpha / wrapped modules in the
    metadata; None when the model has no LoRA."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    if not has_lora(model):
        return None
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if ".lora_A." in k or ".lora_B." in k}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt", CHECKPOINT_KEY: json.dumps(checkpoint_entry(model))})
    return path
