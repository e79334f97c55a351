"""Counts and reports every row the data pipeline skipped (index time and load time): nothing is lost silently.

Counts are per distinct row: a bad row is loaded again every epoch, for each of its tasks and by every validation
pass, but is counted once per (file, row, reason). `skipped` is the number of distinct (file, row) pairs,
`by_reason` the distinct rows per reason, `rows` one record per (file, row, reason) with the row id. Load-time
records are saved in checkpoints (`state_dict`), so a resumed run reports the rows seen before the resume too
(index-time records are rebuilt when the resumed run indexes the data)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from lightning import Callback, LightningModule, Trainer


def row_key(record: dict) -> tuple:
    """What makes a skip record distinct: the row (file, row number) and the reason."""
    return (str(record.get("file")), int(record.get("row", -1)), str(record.get("reason", "?")))


def distinct_rows(records: list[dict]) -> list[dict]:
    """`records` with one record per `row_key` (the first one seen)."""
    out: dict[tuple, dict] = {}
    for r in records:
        out.setdefault(row_key(r), r)
    return list(out.values())


class DataHealthCallback(Callback):
    def __init__(self, report_path: str | None = None, show: int = 20) -> None:
        self.report_path = report_path
        self.show = show
        self._load_skips: dict[tuple, dict] = {}  # row_key -> first record of that bad row

    @property
    def load_skips(self) -> list[dict]:
        return list(self._load_skips.values())

    def _collect(self, batch) -> None:
        if isinstance(batch, dict):
            for r in batch.get("skipped") or []:
                self._load_skips.setdefault(row_key(r), dict(r))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._collect(batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(batch)

    def state_dict(self) -> dict[str, Any]:
        """The load-time records seen so far (saved in checkpoints; index-time ones are rebuilt on resume)."""
        return {"load_skips": self.load_skips}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for r in state_dict.get("load_skips", []):
            self._load_skips.setdefault(row_key(r), dict(r))

    def report(self, trainer: Trainer) -> dict:
        dm = trainer.datamodule
        index = dm.skipped_report() if dm is not None and hasattr(dm, "skipped_report") else {"rows": []}
        rows = distinct_rows(list(index.get("rows", [])) + self.load_skips)
        by_reason = Counter(r.get("reason", "?") for r in rows)
        n_rows = len({(str(r.get("file")), int(r.get("row", -1))) for r in rows})
        return {"skipped": n_rows, "by_reason": dict(by_reason), "rows": rows}

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
