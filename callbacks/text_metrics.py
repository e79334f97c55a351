"""Generates text for a fixed set of validation rows and logs `val/cer`, `val/wer` (and per task)."""
from __future__ import annotations

import logging

import torch
from lightning import Callback, LightningModule, Trainer

from callbacks.metrics import error_rates

log = logging.getLogger(__name__)

REFERENCE_FIELD = {"asr": "question_text", "a1t2": "answer_text", "a1a2": "answer_text", "t1t2": "answer_text",
                   "t1a2": "answer_text"}


class TextMetricsCallback(Callback):
    """Every `every_n_epochs` validation epochs: greedy-decode the first `max_examples` validation rows of each
    task in `tasks` and score the text against the reference (ASR: the transcript; QA: the answer)."""

    def __init__(self, tasks: list[str], max_examples: int = 16, every_n_epochs: int = 1,
                 max_new_tokens: int = 64) -> None:
        unknown = sorted(set(tasks) - set(REFERENCE_FIELD))
        if unknown:
            raise ValueError(f"text_metrics.tasks has {unknown}; valid: {sorted(REFERENCE_FIELD)}")
        self.tasks = list(tasks)
        self.max_examples = max_examples
        self.every_n_epochs = every_n_epochs
        self.max_new_tokens = max_new_tokens
        self.last: dict[str, list[dict]] = {}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        scores = self.score(trainer, pl_module)
        for name, value in scores.items():
            pl_module.log(f"val/{name}", value, rank_zero_only=True, sync_dist=False)
        if trainer.is_global_zero and scores:
            shown = ", ".join(f"{k}={v:.3f}" for k, v in sorted(scores.items()))
            log.info("epoch %d text metrics: %s", trainer.current_epoch, shown)
            print(f"[val] epoch {trainer.current_epoch}: {shown}")

    @torch.no_grad()
    def score(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        from omni.mini_omni.generate import SamplingConfig

        infer = pl_module.inference()
        sampling = SamplingConfig(temperature=0.0, top_k=1, max_new_tokens=self.max_new_tokens)
        was_training = pl_module.training
        pl_module.eval()
        refs_all, hyps_all, scores = [], [], {}
        try:
            for task in self.tasks:
                examples = trainer.datamodule.examples("val", task, self.max_examples)
                refs = [ex[REFERENCE_FIELD[task]] or "" for ex in examples]
                hyps = [infer.answer(ex, task, sampling).text for ex in examples]
                self.last[task] = [{"id": ex["id"], "ref": r, "hyp": h} for ex, r, h in zip(examples, refs, hyps)]
                if examples:
                    rates = error_rates(refs, hyps)
                    scores[f"cer_{task}"], scores[f"wer_{task}"] = rates["cer"], rates["wer"]
                    refs_all += refs
                    hyps_all += hyps
        finally:
            pl_module.train(was_training)
        if refs_all:
            rates = error_rates(refs_all, hyps_all)
            scores["cer"], scores["wer"] = rates["cer"], rates["wer"]
        return scores
