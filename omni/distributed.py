"""Helpers for Lightning strategies configured from Hydra (FSDP wrapping policy)."""
from __future__ import annotations

from torch import nn


def decoder_layer_classes() -> set[type[nn.Module]]:
    """Transformer block classes FSDP wraps (and checkpoints) one by one: the backbone and encoder layers."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

    return {Qwen2DecoderLayer, WhisperEncoderLayer}
