"""Checkpoint reading without executing pickled code: `torch.load(weights_only=True)` or safetensors."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning `.ckpt` / torch file (weights only) or a `.safetensors` file into a dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {"state_dict": load_file(str(path))}
    return torch.load(path, map_location="cpu", weights_only=True)


def model_state_dict(ckpt: dict, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The family model's weights from a Lightning checkpoint (keys `model.*`) or a bare state dict."""
    state = ckpt.get("state_dict", ckpt)
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_model_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Initialise `model` from a previous run's checkpoint (stage chaining: `init_from=...`), or from a family's
    released format (a folder or a released weights file): the model's family importer (`omni.families.
    release_importer`) is asked first and takes every format its converter CLI reads, checking what the release
    says about itself (its model_config.yaml / config.json) against the model's config. Anything it does not
    recognise is read as a Lightning checkpoint or a bare state dict of our own names."""
    from omni.families import release_importer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"init_from: {path} does not exist")
    importer = release_importer(model)
    if importer is not None and importer(model, path):
        log.info("initialised model from released weights %s", path)
        return
    if path.is_dir():
        raise ValueError(f"init_from={path}: not a checkpoint folder this model's family reads "
                         f"({type(model).__name__})")
    from omni.mini_omni.model import AUX_PREFIXES

    state = model_state_dict(read_checkpoint(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # a training-only head (e.g. the CTC head) may be on either side: it starts fresh or is dropped
    missing, unexpected = ([k for k in keys if not k.startswith(AUX_PREFIXES)] for keys in (missing, unexpected))
    if strict and (missing or unexpected):
        raise RuntimeError(f"{path}: checkpoint does not fit the model; missing={missing[:8]} "
                           f"unexpected={unexpected[:8]}")
    log.info("initialised model from %s (%d tensors)", path, len(state))
