"""Generates text for a fixed set of validation rows and logs `val/cer`, `val/wer` (and per task and per
reference-length bucket: `val/cer_asr_short`, ...); optionally the same on the test split after fit.

Under DDP the rows are sharded: rank r of W decodes rows r, r + W, r + 2W, ... of the fixed set and adds its edit
distances to torchmetrics states (callbacks.metrics.TextErrorRates), which are summed over the ranks before the
rates are taken, so every rank logs the value a single process computes on the same rows."""
from __future__ import annotations

import logging

import torch
from lightning import Callback, LightningModule, Trainer

from callbacks.metrics import LENGTH_BUCKETS, OVER_BUCKET, TextErrorRates, length_bucket
from omni.families import family_of, reference_fields, sampling_config

log = logging.getLogger(__name__)

REFERENCE_FIELD = reference_fields()  # task -> example field of its reference text, every family's (Family entry)


class TextMetricsCallback(Callback):
    """Every `every_n_epochs` validation epochs: greedy-decode the first `max_examples` validation rows of each
    task in `tasks` and score the text against the reference (ASR: the transcript; QA: the answer).
    Buckets (short <= 15 words, mid 16-30, long 31-60, over_60) are logged for those that hold rows.
    `test_examples` > 0: after `trainer.test`, the first `test_examples` test rows per task give `test/cer...`.
    `ctc_weight` > 0: ASR rows decode with the model's CTC head joined to the text decoder (omni/ctc.py).
    `tasks` None: the family's default text-metric tasks (omni.families.text_metric_tasks), chosen at first use.
    Under DDP each rank decodes its share of the rows (`last` holds this rank's rows) and logs the rates summed
    over every rank's edit distances: the single-process value on the same rows."""

    def __init__(self, tasks: list[str] | None = None, max_examples: int = 16, every_n_epochs: int = 1,
                 max_new_tokens: int = 64, test_examples: int = 0, ctc_weight: float = 0.0) -> None:
        if tasks is not None:
            unknown = sorted(set(tasks) - set(REFERENCE_FIELD))
            if unknown:
                raise ValueError(f"text_metrics.tasks has {unknown}; valid: {sorted(REFERENCE_FIELD)}")
        self.tasks = None if tasks is None else list(tasks)
        self.max_examples = max_examples
        self.every_n_epochs = every_n_epochs
        self.max_new_tokens = max_new_tokens
        self.test_examples = test_examples
        # greedy; made into the model family's sampling config at first use (omni.families.sampling_config)
        self.sampling = {"temperature": 0.0, "top_k": 1, "max_new_tokens": max_new_tokens, "ctc_weight": ctc_weight}
        self.last: dict[str, list[dict]] = {}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._log(trainer, pl_module, "val", self.max_examples)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.test_examples > 0:
            self._log(trainer, pl_module, "test", self.test_examples)

    def _log(self, trainer: Trainer, pl_module: LightningModule, split: str, n: int) -> None:
        scores = self.score(trainer, pl_module, split, n)
        for name, value in scores.items():  # already summed over the ranks: every rank logs the same value
            pl_module.log(f"{split}/{name}", value, sync_dist=False)
        if trainer.is_global_zero and scores:
            shown = ", ".join(f"{k}={v:.3f}" for k, v in sorted(scores.items()))
            log.info("epoch %d %s text metrics: %s", trainer.current_epoch, split, shown)
            print(f"[{split}] epoch {trainer.current_epoch}: {shown}")

    @torch.no_grad()
    def score(self, trainer: Trainer, pl_module: LightningModule, split: str = "val",
              n: int | None = None) -> dict[str, float]:

        infer = pl_module.inference()
        if self.tasks is None:
            from omni.families import text_metric_tasks

            self.tasks = [t for t in text_metric_tasks(infer) if t in REFERENCE_FIELD]
            log.info("text metrics: the family's default tasks %s", self.tasks)
        if not self.tasks:  # a family without text-scored tasks (Mini-Omni3)
            return {}
        sampling = sampling_config(infer, self.sampling)
        reference_field = family_of(infer).reference_field
        rank, world = trainer.global_rank, trainer.world_size
        rates = TextErrorRates(metric_keys(["", *(f"_{task}" for task in self.tasks)])).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            for task in self.tasks:
                examples = trainer.datamodule.examples(split, task, self.max_examples if n is None else n)
                mine = examples[rank::world]  # this rank's share of the fixed rows
                log.info("text metrics %s: rank %d of %d decodes %d of %d %s rows", split, rank, world, len(mine),
                         len(examples), task)
                refs = [ex[reference_field[task]] or "" for ex in mine]
                hyps = [infer.answer(ex, task, sampling).text for ex in mine]
                self.last[task] = [{"id": ex["id"], "ref": r, "hyp": h} for ex, r, h in zip(mine, refs, hyps)]
                for suffix in ("", f"_{task}"):
                    update_rates(rates, suffix, refs, hyps)
        finally:
            pl_module.train(was_training)
        return scores_of(rates)  # a collective call under DDP: every rank reaches it (no early return above)


def metric_keys(suffixes: list[str]) -> list[str]:
    """Every key a set of suffixes can log: <suffix> and <suffix>_<bucket> for each length bucket."""
    buckets = [name for name, _, _ in LENGTH_BUCKETS] + [OVER_BUCKET]
    return [key for suffix in suffixes for key in (suffix, *(f"{suffix}_{b}" for b in buckets))]


def update_rates(rates: TextErrorRates, suffix: str, refs: list[str], hyps: list[str]) -> None:
    """Add the pairs to <suffix> and to <suffix>_<bucket> of each pair's reference-length bucket."""
    rates.update(suffix, refs, hyps)
    for ref, hyp in zip(refs, hyps):
        bucket = length_bucket(ref)
        if bucket is not None:
            rates.update(f"{suffix}_{bucket}", [ref], [hyp])


def scores_of(rates: TextErrorRates) -> dict[str, float]:
    """{cer<key>, wer<key>} for every key that scored a pair (on any rank)."""
    out: dict[str, float] = {}
    for key, r in rates.compute().items():
        out[f"cer{key}"], out[f"wer{key}"] = r["cer"], r["wer"]
    return out


def rate_scores(refs: list[str], hyps: list[str], suffix: str) -> dict[str, float]:
    """{cer<suffix>, wer<suffix>, cer<suffix>_<bucket>, wer<suffix>_<bucket>} for the buckets that hold rows
    (this process's pairs only)."""
    rates = TextErrorRates(metric_keys([suffix]))
    update_rates(rates, suffix, refs, hyps)
    return scores_of(rates)
