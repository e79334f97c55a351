"""Freezing by name patterns, logged: what a stage trains is a list of globs in its config."""
from __future__ import annotations

import fnmatch
import logging
import re

from torch import nn

log = logging.getLogger(__name__)


def apply_trainable(model: nn.Module, patterns: list[str], optional: list[str] = (),
                    frozen: list[str] = ()) -> dict[str, int]:
    """Set requires_grad=True exactly on parameters whose name matches one of `patterns` or `optional` (fnmatch
    globs) and is not excluded by `frozen`. `optional` patterns name parts a model may lack (e.g. the TTS
    adapter): no warning when absent. A `frozen` glob excludes what it matches unless a `!glob` in `frozen`
    matches too (e.g. ["thinker.*", "!thinker.model.layers.{-1}.*"]: all of the Thinker but its last layer).
    In any pattern `{-k}` after a literal prefix stands for the k-th last index found there in the model's
    parameter names, so one config fits models of any depth.

    Frozen submodules with no trainable parameter are put in eval mode (dropout off). Warns for a pattern that
    matches nothing (a typo would otherwise silently freeze the whole model). Returns parameter counts.
    """
    names = [name for name, _ in model.named_parameters()]
    required = [_from_end(p, names) for p in patterns]
    patterns = [*required, *(_from_end(p, names) for p in optional)]
    excluded = [_from_end(p, names) for p in frozen if not p.startswith("!")]
    kept = [_from_end(p[1:], names) for p in frozen if p.startswith("!")]
    matched = {p: 0 for p in [*patterns, *excluded, *kept]}
    trainable = total = 0
    for name, param in model.named_parameters():
        hit = [p for p in patterns if fnmatch.fnmatchcase(name, p)]
        out = [p for p in excluded if fnmatch.fnmatchcase(name, p)]
        back = [p for p in kept if fnmatch.fnmatchcase(name, p)]
        for p in hit + out + back:
            matched[p] += 1
        on = bool(hit) and not (out and not back)
        param.requires_grad_(on)
        total += param.numel()
        trainable += param.numel() if on else 0
    for p in [*required, *excluded, *kept]:
        if matched[p] == 0:
            log.warning("stage pattern %r matches no parameter of %s", p, type(model).__name__)
    log.info("trainable parameters: %s / %s (%.2f%%)", f"{trainable:,}", f"{total:,}",
             100.0 * trainable / max(total, 1))
    return {"trainable": trainable, "total": total, "frozen": total - trainable}


def _from_end(pattern: str, names: list[str]) -> str:
    """Replace `{-k}` (after a literal prefix) by the k-th last integer index following that prefix in `names`;
    the pattern is returned unchanged when there are fewer than k such indices (then it matches nothing)."""
    match = re.search(r"\{-(\d+)\}", pattern)
    if not match:
        return pattern
    prefix, k = pattern[: match.start()], int(match.group(1))
    found = sorted({int(m.group(1)) for n in names if (m := re.match(re.escape(prefix) + r"(\d+)(\.|$)", n))})
    if k < 1 or len(found) < k:
        return pattern
    return prefix + str(found[-k]) + pattern[match.end():]


def frozen_modules_eval(model: nn.Module) -> None:
    """Put every child module without a trainable parameter into eval mode (call after `model.train()`)."""
    for module in model.modules():
        params = list(module.parameters(recurse=True))
        if params and not any(p.requires_grad for p in params):
            module.eval()
