"""Generates text for a fixed set of validation rows and logs `val/cer`, `val/wer` (and per task and per
reference-length bucket: `val/cer_asr_short`, ...); optionally the same on the test split after fit."""
from __future__ import annotations

import logging

import torch
from lightning import Callback, LightningModule, Trainer

from callbacks.metrics import bucketed_error_rates, error_rates
from omni.families import family_of, reference_fields, sampling_config

log = logging.getLogger(__name__)

REFERENCE_FIELD = reference_fields()  # task -> example field of its reference text, every family's (Family entry)


class TextMetricsCallback(Callback):
    """Every `every_n_epochs` validation epochs: greedy-decode the first `max_examples` validation rows of each
    task in `tasks` and score the text against the reference (ASR: the transcript; QA: the answer).
    Buckets (short <= 15 words, mid 16-30, long 31-60, over_60) are logged for those that hold rows.
    `test_examples` > 0: after `trainer.test`, the first `test_examples` test rows per task give `test/cer...`.
    `ctc_weight` > 0: ASR rows decode with the model's CTC head joined to the text decoder (omni/ctc.py).
    `tasks` None: the family's default text-metric tasks (omni.families.text_metric_tasks), chosen at first use."""

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
        for name, value in scores.items():
            pl_module.log(f"{split}/{name}", value, rank_zero_only=True, sync_dist=False)
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
        was_training = pl_module.training
        pl_module.eval()
        refs_all, hyps_all, scores = [], [], {}
        try:
            for task in self.tasks:
                examples = trainer.datamodule.examples(split, task, self.max_examples if n is None else n)
                refs = [ex[reference_field[task]] or "" for ex in examples]
                hyps = [infer.answer(ex, task, sampling).text for ex in examples]
                self.last[task] = [{"id": ex["id"], "ref": r, "hyp": h} for ex, r, h in zip(examples, refs, hyps)]
                if examples:
                    scores.update(rate_scores(refs, hyps, f"_{task}"))
                    refs_all += refs
                    hyps_all += hyps
        finally:
            pl_module.train(was_training)
        if refs_all:
            scores.update(rate_scores(refs_all, hyps_all, ""))
        return scores


def rate_scores(refs: list[str], hyps: list[str], suffix: str) -> dict[str, float]:
    """{cer<suffix>, wer<suffix>, cer<suffix>_<bucket>, wer<suffix>_<bucket>} for the buckets that hold rows."""
    rates = error_rates(refs, hyps)
    out = {f"cer{suffix}": rates["cer"], f"wer{suffix}": rates["wer"]}
    for bucket, r in bucketed_error_rates(refs, hyps).items():
        out[f"cer{suffix}_{bucket}"], out[f"wer{suffix}_{bucket}"] = r["cer"], r["wer"]
    return out
