"""Listen/speak decision metrics from per-chunk decisions (pure tensor functions, no model, no I/O).

A decision is the token predicted at a chunk's ASSISTANT: positive = TEXT_BEGIN (reply now), negative = anything
else (KEEP_SILENCE, or a wrong token). Counts add over batches, so a split's exact scores come from summed counts:
`DecisionMetrics` is the torchmetrics `Metric` holding them (states summed over batches and, under DDP, over ranks),
logged as `{split}/decision_acc`, `reply_f1`, ... at each epoch end (the family's `split_metric`).

Response-onset error: for each labelled reply chunk c of a session, the predicted replies inside its turn window
(after the previous labelled reply, before the next one) are searched and the nearest one gives |pred - c|
chunks; a reply with no prediction in its window is a miss (it counts in recall, not in the onset error).
"""
from __future__ import annotations

import torch
from torchmetrics import Metric

COUNT_KEYS = ("n", "correct", "tp", "fp", "fn", "onset_abs", "onset_n")


def decision_counts(pred_pos: torch.Tensor, true_pos: torch.Tensor, correct: torch.Tensor,
                    item: torch.Tensor) -> dict[str, int]:
    """pred_pos, true_pos, correct: (N,) bool over decisions in sequence order; item: (N,) batch item of each.
    Returns summable counts (see COUNT_KEYS)."""
    pred_pos, true_pos, item = pred_pos.bool().cpu(), true_pos.bool().cpu(), item.cpu()
    out = {k: 0 for k in COUNT_KEYS}
    out["n"] = int(pred_pos.numel())
    out["correct"] = int(correct.sum())
    out["tp"] = int((pred_pos & true_pos).sum())
    out["fp"] = int((pred_pos & ~true_pos).sum())
    out["fn"] = int((~pred_pos & true_pos).sum())
    for b in item.unique().tolist():
        sel = item == b
        err = onset_errors(pred_pos[sel], true_pos[sel])
        out["onset_abs"] += int(sum(err))
        out["onset_n"] += len(err)
    return out


def onset_errors(pred_pos: torch.Tensor, true_pos: torch.Tensor) -> list[int]:
    """One session's (n_chunks,) predicted / labelled reply flags -> |onset error| in chunks per matched reply."""
    truth = true_pos.nonzero().flatten().tolist()
    preds = pred_pos.nonzero().flatten().tolist()
    errors = []
    for k, c in enumerate(truth):
        lo = truth[k - 1] if k > 0 else -1
        hi = truth[k + 1] if k + 1 < len(truth) else len(true_pos)
        inside = [p for p in preds if lo < p < hi]
        if inside:
            errors.append(min(abs(p - c) for p in inside))
    return errors


def scores(counts: dict[str, float]) -> dict[str, float]:
    """Counts -> decision accuracy, TEXT_BEGIN precision / recall / F1, mean |onset error| (chunks). Scores whose
    denominator is zero are left out (precision with no predicted reply is undefined, not 0)."""
    out: dict[str, float] = {}
    if counts["n"]:
        out["decision_acc"] = counts["correct"] / counts["n"]
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    if tp + fp:
        out["reply_precision"] = tp / (tp + fp)
    if tp + fn:
        out["reply_recall"] = tp / (tp + fn)
    if tp + fp + fn:  # 0 when nothing was predicted although replies were due
        out["reply_f1"] = 2 * tp / (2 * tp + fp + fn)
    if counts["onset_n"]:
        out["onset_error"] = counts["onset_abs"] / counts["onset_n"]
    return out


def add_counts(total: dict[str, float], new: dict[str, float]) -> dict[str, float]:
    return {k: total.get(k, 0) + new.get(k, 0) for k in COUNT_KEYS}


class DecisionMetrics(Metric):
    """Split-level decision scores (`scores`) from the summed counts of every update (COUNT_KEYS states,
    `dist_reduce_fx="sum"`: synced over ranks before `compute`), not a mean of per-batch scores. `update` takes the
    model's forward output (its `decision_counts`; outputs without them are skipped) or a counts dict."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for key in COUNT_KEYS:
            self.add_state(key, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, out: dict) -> None:
        counts = out.get("decision_counts", out if "n" in out else None)
        if not counts:
            return
        for key in COUNT_KEYS:
            setattr(self, key, getattr(self, key) + int(counts.get(key, 0)))

    def counts(self) -> dict[str, int]:
        return {key: int(getattr(self, key)) for key in COUNT_KEYS}

    def compute(self) -> dict[str, torch.Tensor]:
        """{decision_acc, reply_precision, reply_recall, reply_f1, onset_error} (those with a non-zero
        denominator over the whole split)."""
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in scores(self.counts()).items()}
