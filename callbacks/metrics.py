"""CER / WER over normalised text as torchmetrics `Metric`s (corpus level: total edits / total reference length),
overall and per reference-length bucket.

`NormalizedCER` / `NormalizedWER` are torchmetrics' `CharErrorRate` / `WordErrorRate` (states: summed edit distance
`errors` and reference length `total`, `dist_reduce_fx="sum"`) fed through `normalize_text` (callbacks/normalize.py)
on both sides; a pair whose normalised reference is empty is skipped (no defined rate) and `pairs` counts those
scored. Updated batch by batch, or rank by rank: `compute()` sums the states over every update and, under
torch.distributed, over every rank first, so a split's value is the split's, not a mean of per-batch values.
`TextErrorRates` holds one CER + WER pair per key (overall, per task, per length bucket) with a fixed key list,
so every rank computes (and syncs) the same metrics in the same order.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torchmetrics.text import CharErrorRate, WordErrorRate

from callbacks.normalize import normalize_text

# (name, min words, max words) of the normalised REFERENCE; references over the last bound go to "over_60".
LENGTH_BUCKETS: tuple[tuple[str, int, int], ...] = (("short", 0, 15), ("mid", 16, 30), ("long", 31, 60))
OVER_BUCKET = "over_60"


def normalized_pairs(hypotheses: Sequence[str], references: Sequence[str],
                     normalizer: Callable[[str], str] = normalize_text) -> tuple[list[str], list[str]]:
    """(hyps, refs) after the normaliser, without the pairs whose normalised reference is empty."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [(normalizer(h), normalizer(r)) for h, r in zip(hypotheses, references)]
    pairs = [(h, r) for h, r in pairs if r]
    return [h for h, _ in pairs], [r for _, r in pairs]


class _Normalized:
    """Mixin over a torchmetrics text error rate: normalise both sides, skip empty references, count pairs;
    `compute()` is NaN when no pair was scored (on any rank)."""

    def __init__(self, normalizer: Callable[[str], str] = normalize_text, **kwargs) -> None:
        super().__init__(**kwargs)
        self.normalizer = normalizer
        self.add_state("pairs", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: str | Sequence[str], target: str | Sequence[str]) -> None:
        preds, target = ([preds], [target]) if isinstance(preds, str) else (list(preds), list(target))
        hyps, refs = normalized_pairs(preds, target, self.normalizer)
        if refs:
            super().update(hyps, refs)
            self.pairs += len(refs)

    def compute(self) -> torch.Tensor:
        if int(self.pairs) == 0:
            return torch.tensor(float("nan"))
        return self.errors / self.total

    def summary(self) -> tuple[float, int]:
        """(rate, pairs scored) over every update and (under torch.distributed) every rank: a collective call."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=True):
            pairs = int(self.pairs)
            return (float(self.errors / self.total) if pairs else float("nan")), pairs


class NormalizedCER(_Normalized, CharErrorRate):
    """torchmetrics CharErrorRate over `normalize_text`ed pairs (characters of the normalised text, spaces count)."""


class NormalizedWER(_Normalized, WordErrorRate):
    """torchmetrics WordErrorRate over `normalize_text`ed pairs (whitespace-separated words)."""


class TextErrorRates(nn.Module):
    """One NormalizedCER + NormalizedWER per key of a fixed list. `update(key, refs, hyps)`; `compute()` ->
    {key: {"cer", "wer", "n"}} for the keys that scored a pair on some rank (every rank must call it: it syncs)."""

    def __init__(self, keys: Iterable[str], normalizer: Callable[[str], str] = normalize_text) -> None:
        super().__init__()
        self.keys = list(dict.fromkeys(keys))
        self.cer = nn.ModuleList([NormalizedCER(normalizer) for _ in self.keys])
        self.wer = nn.ModuleList([NormalizedWER(normalizer) for _ in self.keys])

    def update(self, key: str, references: Sequence[str], hypotheses: Sequence[str]) -> None:
        i = self.keys.index(key)
        self.cer[i].update(list(hypotheses), list(references))
        self.wer[i].update(list(hypotheses), list(references))

    def compute(self) -> dict[str, dict[str, float]]:
        out = {}
        for key, cer, wer in zip(self.keys, self.cer, self.wer):
            (c, n), (w, _) = cer.summary(), wer.summary()
            if n:
                out[key] = {"cer": c, "wer": w, "n": n}
        return out

    def reset(self) -> None:
        for m in (*self.cer, *self.wer):
            m.reset()


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus CER and WER after `normalize_text` (NormalizedCER / NormalizedWER, this process only). Pairs whose
    normalised reference is empty are skipped (they have no defined error rate); `n` counts the pairs scored."""
    cer, wer = NormalizedCER(sync_on_compute=False), NormalizedWER(sync_on_compute=False)
    cer.update(hypotheses, references)
    wer.update(hypotheses, references)
    (c, n), (w, _) = cer.summary(), wer.summary()
    return {"cer": c, "wer": w, "n": n}


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
