"""Family registry: which inference helper serves which model class (later families register here)."""
from __future__ import annotations

from typing import Any

from torch import nn

from omni.mini_omni.infer import MiniOmniInference
from omni.mini_omni.model import MiniOmni
from omni.mini_omni3.model import MiniOmni3
from omni.mini_omni3.session import MiniOmni3Inference

INFERENCE = {MiniOmni: MiniOmniInference}
INFERENCE[MiniOmni3] = MiniOmni3Inference  # streaming sessions (omni/mini_omni3/session.py)


def make_inference(model: nn.Module, tokenizer: Any):
    for cls, infer in INFERENCE.items():
        if isinstance(model, cls):
            return infer(model, tokenizer)
    raise TypeError(f"no inference helper for {type(model).__name__}; known: {[c.__name__ for c in INFERENCE]}")


def load_tokenizer(path: str | None):
    if not path:
        raise ValueError("model.cfg.tokenizer_path is not set: point it at a local tokenizer folder")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
