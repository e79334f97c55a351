"""Hydra/OmegaConf resolvers and run-environment defaults shared by train.py, eval.py and tests."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf


def package_dir(name: str) -> str:
    """Folder of an importable package (finds the bundled sample / assets wherever the project is installed)."""
    module = importlib.import_module(name)
    return str(Path(module.__file__).resolve().parent)


def best_precision() -> str:
    """bf16 autocast where the hardware has it, full fp32 elsewhere (CPU autocast is slower than fp32 here)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def wandb_offline() -> bool:
    """wandb logs offline unless the user asked for online mode or has credentials configured."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("online", "run"):
        return False
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path.home() / ".netrc"
    return not (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def image_tokens(arch: str, image_size: Any, patch_size: Any) -> int:
    """Tokens a vision tower makes per image (data configs read it from the model config)."""
    from omni.mini_omni.vision import n_image_tokens

    return n_image_tokens(str(arch), int(image_size), int(patch_size))


def register_resolvers() -> None:
    """Idempotent: safe to call from every entry point and test."""
    resolvers = {
        "omni.root": lambda: str(Path(package_dir("omni")).parent),
        "omni.package_dir": package_dir,
        "omni.cwd": lambda: os.getcwd(),
        "omni.precision": best_precision,
        "omni.wandb_offline": wandb_offline,
        "omni.image_tokens": image_tokens,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def configure_environment() -> None:
    """Defaults that keep runs quiet and hermetic; an explicit user setting always wins."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
