"""Training memory: activation checkpointing of the family's blocks, and the CPU allocator's mmap threshold.

Where the memory of a CPU step goes (38.6M MiniMind-O, batch 8 x 256, fp32; omni/DESIGN.md #97): ~0.44 GiB is
the imported libraries (torch, lightning, transformers), 0.6 GiB the parameters, gradients and AdamW's two moments,
~0.8 GiB the activations saved for backward (SwiGLU and RMSNorm intermediates, the codebook logits' log-softmax),
and the rest is glibc's heap: freed activations are kept and fragmented, so the peak grows step after step
(2.4-2.9 GiB after 10 steps against 1.9 GiB with a fixed mmap threshold).

- `activation_checkpointing=true`: every block of the family's `wrap_layers` (the classes FSDP wraps) keeps only
  its inputs and recomputes its forward in backward (torch.utils.checkpoint, non-reentrant, RNG state preserved).
  The block's forward is wrapped in place, so parameter names and checkpoints are unchanged; in eval / no_grad
  (generation, validation) the block runs as usual.
- `malloc_mmap_threshold_mib=N`: glibc serves every allocation >= N MiB with its own mmap and unmaps it on free
  (fixed threshold: glibc's dynamic one rises to the largest freed block and then keeps such blocks on the heap).
  Costs a page fault per touched page of each new tensor; off (null) by default.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

import torch
from torch import nn

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)


def checkpoint_blocks(model: nn.Module, classes: set[type[nn.Module]] | tuple[type[nn.Module], ...]) -> int:
    """Recompute every `classes` block of `model` in backward instead of keeping its activations (a block already
    wrapped stays as it is); returns how many blocks are checkpointed (0: the model has none of them)."""
    blocks = [m for m in model.modules() if isinstance(m, tuple(classes))] if classes else []
    for block in blocks:
        if not getattr(block, "_omni_checkpointed", False):
            block.forward = _checkpointed(block, block.forward)
            block._omni_checkpointed = True
    return len(blocks)


def proc_status_kib(field: str) -> int | None:
    """A `/proc/self/status` figure in KiB (VmHWM: peak RSS, RssAnon: heap and tensors), None where there is none."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def _checkpointed(block: nn.Module, forward):
    from torch.utils.checkpoint import checkpoint

    def run(*args: Any, **kwargs: Any):
        if block.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def set_malloc_mmap_threshold(mib: float) -> None:
    """Fix glibc's mmap threshold at `mib` MiB for this process (allocations at least that large are returned to
    the OS when freed). Fails naming the key on a C library without mallopt (musl, macOS, Windows)."""
    if mib <= 0:
        raise ValueError(f"malloc_mmap_threshold_mib={mib}: must be > 0 MiB (or null for glibc's default)")
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None or mallopt(_M_MMAP_THRESHOLD, int(mib * 2**20)) != 1:
        raise RuntimeError(f"malloc_mmap_threshold_mib={mib}: this C library ({name}) has no glibc mallopt "
                           "(M_MMAP_THRESHOLD); set malloc_mmap_threshold_mib=null")


def configure_memory(cfg: Any) -> None:
    """At start, from the composed config: the allocator threshold, and a clear error for checkpointing twice."""
    strategy = (cfg.get("trainer") or {}).get("strategy")
    if cfg.get("activation_checkpointing") and hasattr(strategy, "get") and strategy.get(
            "activation_checkpointing_policy"):
        raise ValueError("activation_checkpointing=true and trainer.strategy.activation_checkpointing_policy both "
                         "recompute the blocks: the FSDP strategy already does it; set activation_checkpointing=false")
    if cfg.get("malloc_mmap_threshold_mib") is not None:
        set_malloc_mmap_threshold(float(cfg.malloc_mmap_threshold_mib))
