"""CER / WER over normalised text with jiwer (corpus level: total edits / total reference length), overall and
per reference-length bucket."""
from __future__ import annotations

import jiwer

from callbacks.normalize import normalize_text

# (name, min words, max words) of the normalised REFERENCE; references over the last bound go to "over_60".
LENGTH_BUCKETS: tuple[tuple[str, int, int], ...] = (("short", 0, 15), ("mid", 16, 30), ("long", 31, 60))
OVER_BUCKET = "over_60"


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


def length_bucket(reference: str) -> str | None:
    """Bucket of a reference by its normalised word count: short <= 15, mid 16-30, long 31-60, over_60 beyond;
    None for an empty reference (not scored)."""
    n = len(normalize_text(reference).split())
    if n == 0:
        return None
    for name, low, high in LENGTH_BUCKETS:
        if low <= n <= high:
            return name
    return OVER_BUCKET


def bucketed_error_rates(references: list[str], hypotheses: list[str]) -> dict[str, dict[str, float]]:
    """`error_rates` per reference-length bucket (see `length_bucket`); only buckets with rows appear, in order."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for ref, hyp in zip(references, hypotheses):
        bucket = length_bucket(ref)
        if bucket is not None:
            refs, hyps = groups.setdefault(bucket, ([], []))
            refs.append(ref)
            hyps.append(hyp)
    order = [name for name, _, _ in LENGTH_BUCKETS] + [OVER_BUCKET]
    return {name: error_rates(*groups[name]) for name in order if name in groups}
