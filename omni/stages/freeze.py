"""Freezing by name patterns, logged: what a stage trains is a list of globs in its config."""
from __future__ import annotations

import fnmatch
import logging

from torch import nn

log = logging.getLogger(__name__)


def apply_trainable(model: nn.Module, patterns: list[str], optional: list[str] = ()) -> dict[str, int]:
    """Set requires_grad=True exactly on parameters whose name matches one of `patterns` or `optional` (fnmatch
    globs). `optional` patterns name parts a model may lack (e.g. the TTS adapter): no warning when absent.

    Frozen submodules with no trainable parameter are put in eval mode (dropout off). Warns for a pattern that
    matches nothing (a typo would otherwise silently freeze the whole model). Returns parameter counts.
    """
    required = list(patterns)
    patterns = [*required, *optional]
    matched = {p: 0 for p in patterns}
    trainable = total = 0
    for name, param in model.named_parameters():
        hit = [p for p in patterns if fnmatch.fnmatchcase(name, p)]
        for p in hit:
            matched[p] += 1
        param.requires_grad_(bool(hit))
        total += param.numel()
        trainable += param.numel() if hit else 0
    for p in required:
        if matched[p] == 0:
            log.warning("trainable pattern %r matches no parameter of %s", p, type(model).__name__)
    log.info("trainable parameters: %s / %s (%.2f%%)", f"{trainable:,}", f"{total:,}",
             100.0 * trainable / max(total, 1))
    return {"trainable": trainable, "total": total, "frozen": total - trainable}


def frozen_modules_eval(model: nn.Module) -> None:
    """Put every child module without a trainable parameter into eval mode (call after `model.train()`)."""
    for module in model.modules():
        params = list(module.parameters(recurse=True))
        if params and not any(p.requires_grad for p in params):
            module.eval()
