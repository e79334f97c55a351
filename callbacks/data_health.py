"""Counts and reports every row the data pipeline skipped (index time and load time): nothing is lost silently."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lightning import Callback, LightningModule, Trainer


class DataHealthCallback(Callback):
    def __init__(self, report_path: str | None = None, show: int = 20) -> None:
        self.report_path = report_path
        self.show = show
        self.load_skips: list[dict] = []

    def _collect(self, batch) -> None:
        if isinstance(batch, dict):
            self.load_skips.extend(batch.get("skipped") or [])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._collect(batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(batch)

    def report(self, trainer: Trainer) -> dict:
        dm = trainer.datamodule
        index = dm.skipped_report() if dm is not None and hasattr(dm, "skipped_report") else {"rows": []}
        rows = list(index.get("rows", [])) + self.load_skips
        by_reason = Counter(r.get("reason", "?") for r in rows)
        return {"skipped": len(rows), "by_reason": dict(by_reason), "rows": rows}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        rep = self.report(trainer)
        if rep["skipped"]:
            print(f"[data] skipped {rep['skipped']} rows: {rep['by_reason']}")
            for r in rep["rows"][: self.show]:
                print(f"  {r.get('file')} row {r.get('row')} id={r.get('id')} column={r.get('column')}: "
                      f"{r.get('reason')}")
        else:
            print("[data] no rows skipped")
        if self.report_path:
            Path(self.report_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.report_path).write_text(json.dumps(rep, indent=1, default=str))
