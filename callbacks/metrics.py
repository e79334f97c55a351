"""CER / WER over normalised text with jiwer (corpus level: total edits / total reference length)."""
from __future__ import annotations

import jiwer

from callbacks.normalize import normalize_text


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus CER and WER after `normalize_text`. Pairs whose normalised reference is empty are skipped
    (they have no defined error rate); `n` counts the pairs scored."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return {"cer": float("nan"), "wer": float("nan"), "n": 0}
    refs, hyps = zip(*pairs)
    return {"cer": float(jiwer.cer(list(refs), list(hyps))), "wer": float(jiwer.wer(list(refs), list(hyps))),
            "n": len(pairs)}
