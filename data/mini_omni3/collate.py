"""Collation of streaming examples into one padded batch. Pure: no I/O, no devices.

Batch legend (B items, L longest sequence, C chunks with audio over the batch, M mel bins, E tower width):

| key             | type / shape          | meaning                                                              |
|-----------------|-----------------------|----------------------------------------------------------------------|
| input_ids       | (B, L) long           | layout ids, right-padded with PAD                                    |
| targets         | (B, L) long           | next-token targets (layout.next_token_targets), IGNORE on padding    |
| attention_mask  | (B, L) long           | 1 on real positions                                                  |
| decision_mask   | (B, L) bool           | online chunk ASSISTANT positions (the listen/speak decision is next) |
| audio_mels      | (C, M, 40) float32    | online: per-chunk log-mel of the items' chunks in order, or None     |
| audio_features  | (C, 10, E) float32    | online: precomputed tower frames instead of mels, or None            |
| audio_positions | (C * 10,) long        | flat index b * L + p receiving each chunk frame, same order          |
| clip_mels       | (M, sum F) float32    | offline: whole-clip log-mels concatenated (one tower audio each)     |
| clip_lens       | (K,) long             | offline: mel frames F of each clip                                   |
| clip_features   | (sum N, E) float32    | offline: precomputed whole-clip tower frames instead, or None        |
| clip_positions  | (sum N,) long         | flat index b * L + p receiving each clip frame, same order           |
| n_chunks        | (B,) long             | chunks per item                                                      |
| tasks, ids      | list[str] (B)         | mode ("online" / "offline") and row id of each item                 |
| reply_text      | list[list[str]] (B)   | reference replies                                                    |
| n_tokens        | int                   | real (non-padding) positions                                         |
| skipped         | list[dict]            | load-time `Skipped` markers dropped from this batch                  |
"""
from __future__ import annotations

from typing import Any

import torch

from data.packing import padding_column
from omni.mini_omni3.layout import next_token_targets
from omni.mini_omni3.tokens import IGNORE, MiniOmni3Tokens


class StreamingCollator:
    def __init__(self, tokens: MiniOmni3Tokens) -> None:
        self.tok = tokens

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        examples = [x for x in items if isinstance(x, dict)]
        skipped = [x.as_dict() for x in items if not isinstance(x, dict)]
        seqs = [x["sequence"] for x in examples]
        B, L = len(seqs), max((len(s) for s in seqs), default=0)
        input_ids = torch.full((B, L), self.tok.pad, dtype=torch.long)
        targets = torch.full((B, L), IGNORE, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        decision = torch.zeros((B, L), dtype=torch.bool)
        positions: list[torch.Tensor] = []
        clip_positions: list[torch.Tensor] = []
        for b, s in enumerate(seqs):
            n = len(s)
            input_ids[b, :n] = torch.tensor(s.ids)
            targets[b, :n] = torch.tensor(next_token_targets(s.labels))
            mask[b, :n] = 1
            decision[b, s.decision_positions] = True
            # flat b * L + p, one tensor op per item (a session has C * 10 frame positions)
            (positions if s.mode == "online" else clip_positions).append(
                torch.tensor(s.audio_positions, dtype=torch.long) + b * L)
        online = [x for x, s in zip(examples, seqs) if s.mode == "online"]
        offline = [x for x, s in zip(examples, seqs) if s.mode != "online"]
        mels = [x["mels"] for x in online if x["mels"] is not None]
        feats = [x["features"] for x in online if x["features"] is not None]
        clip_mels = [x["mels"] for x in offline if x["mels"] is not None]
        clip_feats = [x["features"] for x in offline if x["features"] is not None]
        if (mels or clip_mels) and (feats or clip_feats):
            raise ValueError("a batch mixes rows with precomputed features and rows with audio; use one kind per "
                             "data set (data.mini_omni3.features precomputes a whole split)")
        return {
            "input_ids": input_ids, "targets": targets, "attention_mask": mask, "decision_mask": decision,
            "audio_mels": torch.cat(mels).float() if mels else None,
            "audio_features": torch.cat(feats).float() if feats else None,
            "audio_positions": _flat(positions),
            "clip_mels": torch.cat(clip_mels, dim=-1).float() if clip_mels else None,
            "clip_lens": torch.tensor([m.shape[-1] for m in clip_mels], dtype=torch.long),
            "clip_features": torch.cat(clip_feats).float() if clip_feats else None,
            "clip_positions": _flat(clip_positions),
            "n_chunks": torch.tensor([s.n_chunks for s in seqs], dtype=torch.long),
            "tasks": [x["task"] for x in examples], "ids": [x["id"] for x in examples],
            "reply_text": [x["reply_text"] for x in examples],
            "n_tokens": int(sum(len(s) for s in seqs)), "skipped": skipped,
        }


def _flat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def pack(batch: dict[str, Any], plan) -> dict[str, Any]:
    """Family packing hook (registry `packer`, data/packing.py): grids laid end to end by `plan` (a
    `data.packing.PackPlan`); the flat frame positions b * L + p move to seq * L' + offset + p. Chunks and clips
    keep their order; the model takes each decision's session (row) from `segment_ids`."""
    ids, length = batch["input_ids"], batch["input_ids"].shape[-1]
    return {**batch, "input_ids": plan.grid(ids, padding_column(ids, batch["attention_mask"])),
            "targets": plan.grid(batch["targets"], IGNORE), "decision_mask": plan.grid(batch["decision_mask"], False),
            "audio_positions": plan.flat_positions(batch["audio_positions"], length),
            "clip_positions": plan.flat_positions(batch["clip_positions"], length)}
