"""Helpers for Lightning strategies configured from Hydra (FSDP wrapping policy)."""
from __future__ import annotations

from torch import nn


def decoder_layer_classes() -> set[type[nn.Module]]:
    """Transformer block classes FSDP wraps (and activation checkpointing recomputes) one by one: every registered
    family's backbone, encoder and tower blocks (`Family.wrap_layers`, omni.families)."""
    from omni.families import wrap_layer_classes

    return wrap_layer_classes()
