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
    """Initialise `model` from a previous run's checkpoint (stage chaining: `init_from=...`), or from a folder:
    a released litgpt-format Mini-Omni folder (`lit_model.pth` + `model_config.yaml`), a released Mini-Omni3 folder
    (safetensors shards + `model_config.yaml`, for a MiniOmni3 model) or our Hugging Face export
    (`omni_config.json`). Folders keep the model's own audio encoder (released folders do not hold Whisper)."""
    path = Path(path)
    if path.is_dir():
        from omni.mini_omni import convert
        from omni.mini_omni3.model import MiniOmni3

        if isinstance(model, MiniOmni3) and (path / "model_config.yaml").exists():
            from omni.mini_omni3.convert import load_release_into

            load_release_into(model, path)  # released Mini-Omni3 folder: safetensors shards + index
        elif (path / "model_config.yaml").exists():
            convert.load_litgpt_into(model, path)
        elif (path / "omni_config.json").exists():
            state = convert.load_hf(path).state_dict()
            convert.load_omni_state(model, {k: v for k, v in state.items() if not k.startswith("audio_encoder.")},
                                    str(path))
        else:
            raise ValueError(f"{path}: not a checkpoint folder (expected model_config.yaml + lit_model.pth, "
                             "or omni_config.json from an export)")
        log.info("initialised model from folder %s", path)
        return
    from omni.mini_omni.model import AUX_PREFIXES

    state = model_state_dict(read_checkpoint(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # a training-only head (e.g. the CTC head) may be on either side: it starts fresh or is dropped
    missing, unexpected = ([k for k in keys if not k.startswith(AUX_PREFIXES)] for keys in (missing, unexpected))
    if strict and (missing or unexpected):
        raise RuntimeError(f"{path}: checkpoint does not fit the model; missing={missing[:8]} "
                           f"unexpected={unexpected[:8]}")
    log.info("initialised model from %s (%d tensors)", path, len(state))
