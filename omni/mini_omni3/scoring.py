"""Exact listen/speak scores over a whole split (summed counts, not batch means), two ways:

- teacher-forced: the training layout, argmax at every chunk's ASSISTANT (what `val/reply_f1` logs: DecisionMetrics);
- free-running: each session's audio replayed through a `StreamingSession` (greedy), the model's own decisions
  and replies fed back, predicted reply chunks compared with the labelled ones.

    python -m omni.mini_omni3.scoring CKPT [--split test]
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch

from omni.mini_omni3.metrics import add_counts, decision_counts, scores
from omni.mini_omni3.session import SessionConfig, StreamingSession


@torch.no_grad()
def teacher_forced(model: Any, loader: Any) -> dict[str, float]:
    """Summed decision counts over `loader`'s batches -> scores + counts."""
    total: dict[str, float] = {}
    for batch in loader:
        if batch["ids"]:
            total = add_counts(total, model(batch).get("decision_counts", {}))
    return {**scores(total), **total} if total else {}


@torch.no_grad()
def free_running(model: Any, tokenizer: Any, sessions: list[tuple[np.ndarray, list[int]]],
                 max_reply_tokens: int = 32) -> dict[str, float]:
    """sessions: (16 kHz audio, labelled reply chunks). Greedy sessions -> scores + counts (a chunk is predicted
    positive when the session chose TEXT_BEGIN there)."""
    total: dict[str, float] = {}
    cfg = SessionConfig(temperature=0.0, max_reply_tokens=max_reply_tokens)
    for b, (wav, reply_chunks) in enumerate(sessions):
        session = StreamingSession(model, tokenizer, cfg)
        events = list(session.feed(wav)) + list(session.flush())
        n = session.chunks_seen
        pred = torch.zeros(n, dtype=torch.bool)
        pred[[e.chunk for e in events if e.kind == "reply_start"]] = True
        true = torch.zeros(n, dtype=torch.bool)
        true[[c for c in reply_chunks if c < n]] = True
        total = add_counts(total, decision_counts(pred, true, pred == true, torch.zeros(n, dtype=torch.long)))
    return {**scores(total), **total} if total else {}


def online_sessions(dataset: Any) -> list[tuple[np.ndarray, list[int]]]:
    """(audio, reply chunks) of every online row of a StreamingDataset's index."""
    from data.audio import decode_audio
    from omni.mini_omni3.encoder import SAMPLE_RATE

    out = []
    for i in dataset.index.rows_for("online"):
        rec = dataset._row(int(i))
        if rec["audio"]:
            out.append((decode_audio(rec["audio"], SAMPLE_RATE), list(rec["reply_chunk"] or [])))
    return out


def score_checkpoint(ckpt: str, split: str = "test") -> dict[str, Any]:
    from omni.checkpoint import load_for_eval
    from omni.families import instantiate_stored, load_tokenizer

    model, run_cfg = load_for_eval(ckpt)  # checkpoints are data: allow-listed classes only (omni.families)
    dm = instantiate_stored(run_cfg, "data", ckpt)
    dm.setup("test" if split == "test" else "validate")
    loader = {"test": dm.test_dataloader, "val": dm.val_dataloader}[split]()
    report = {"teacher_forced": teacher_forced(model, loader),
              "free_running": free_running(model, load_tokenizer(model.cfg.tokenizer_path),
                                           online_sessions(dm.datasets[split]))}
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni.mini_omni3.scoring", description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--split", default="test", choices=["test", "val"])
    args = p.parse_args(argv)
    print(json.dumps(score_checkpoint(args.ckpt, args.split), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
