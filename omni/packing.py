"""Attention inputs of a packed batch (several rows per sequence, `data.packing=true`; see data/packing.py).

A packed batch carries `segment_ids` (S, L) long: k + 1 at the positions of the k-th row packed into the batch, 0 on
padding, and `position_ids` (S, L): each row's own positions 0..n-1 (they restart per row). Attention is causal inside a
row and blind across rows: `block_causal_mask` gives the 4-D boolean mask (S, 1, L, L) (True: may attend) that
transformers' Qwen2 / Qwen3 models take as is (`masking_utils`: "if the mask is already 4D, simply return as-is")
and pass to SDPA. Padding positions attend causally among themselves (no all-masked row, hence no NaN); no real
position ever sees them. Family models call `attention_inputs(batch, impl)`; unpacked batches get their 2-D
`attention_mask` back unchanged and no position ids.
"""
from __future__ import annotations

from typing import Any

import torch


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(S, L) segment ids -> (S, 1, L, L) bool: query q may attend key k iff same segment and k <= q."""
    L = segment_ids.shape[-1]
    same = segment_ids.unsqueeze(-1) == segment_ids.unsqueeze(-2)  # (S, L, L) [q, k]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
    return (same & causal).unsqueeze(1)


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask -> additive float mask (0 where allowed, the dtype's minimum elsewhere): the eager kernels add it."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def is_packed(batch: dict[str, Any]) -> bool:
    return batch.get("segment_ids") is not None


def attention_inputs(batch: dict[str, Any], impl: str | None = "sdpa",
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(attention_mask, position_ids) for a family backbone: the block-diagonal causal 4-D mask and per-row positions
    of a packed batch (boolean for SDPA / flex, additive in `dtype` for the eager kernel), else the batch's own
    2-D `attention_mask` and None."""
    if not is_packed(batch):
        return batch.get("attention_mask"), None
    mask = block_causal_mask(batch["segment_ids"])
    if impl == "eager":
        mask = additive(mask, dtype)
    return mask, batch["position_ids"]


def item_of_position(batch: dict[str, Any], fallback: torch.Tensor) -> torch.Tensor:
    """(S, L) the batch row (item) each position belongs to: segment - 1 in a packed batch (padding: 0), else
    `fallback` (the sequence index, one row per sequence)."""
    if not is_packed(batch):
        return fallback
    return (batch["segment_ids"] - 1).clamp(min=0)
