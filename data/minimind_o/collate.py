"""Collation: MiniMind-O example dicts (data.minimind_o.dataset) -> one padded batch. Pure: no I/O, no devices.

Batch legend (B items, L longest sequence, R = 9 rows = 8 Mimi codebooks + text, K = 8, A_n audio clips,
I_n images, S speaker-embedding width):

| key            | type / shape              | meaning                                                              |
|----------------|---------------------------|----------------------------------------------------------------------|
| input_ids      | (B, R, L) long            | layout inputs; right-padded with audio PAD (rows 0..7), text pad 0   |
| targets        | (B, R, L) long            | targets, IGNORE (-100) where no loss and on padding                  |
| audio_weights  | (B, K, L) float           | audio loss weights (1, STOP 10, 0 where IGNORE)                      |
| attention_mask | (B, L) long               | 1 on real positions (the model needs no mask for right padding)      |
| audio_mels     | (A_n, n_mels, F) float    | encoder input of every question clip, item by item, turn by turn    |
| audio_frames   | (A_n,) long               | encoder output frames of each clip (= its `<|audio_pad|>` count)     |
| pixel_values   | (I_n, 3, S, S) float      | one image per I2T item, in item order                                |
| speaker_emb    | (B, S) float or None      | speaker embedding (zeros for items without one); None if no item has |
| prompt_len     | (B,) long                 | s, the first answer position                                         |
| tasks / ids    | list[str] (B)             | task and row id of each item                                         |
| answer_text    | list[str] (B)             | reference answer (last assistant turn)                               |
| n_tokens       | int                       | useful (non-padding) positions                                        |
| skipped        | list[dict]                | load-time `Skipped` markers dropped from this batch                  |
"""
from __future__ import annotations

from typing import Any

import torch

from data.packing import padding_column
from omni.minimind_o.tokens import IGNORE, MiniMindOTokens


class MiniMindOCollator:
    def __init__(self, tokens: MiniMindOTokens, spk_dim: int = 192) -> None:
        self.tokens, self.spk_dim = tokens, int(spk_dim)

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        examples = [x for x in items if isinstance(x, dict)]
        tok = self.tokens
        n, length = len(examples), max((x["layout"].length for x in examples), default=0)
        pad_col = torch.full((tok.n_rows,), tok.a_pad, dtype=torch.long)
        pad_col[tok.text_row] = tok.pad
        input_ids = pad_col.view(1, -1, 1).repeat(n, 1, length)
        targets = torch.full((n, tok.n_rows, length), IGNORE, dtype=torch.long)
        weights = torch.zeros((n, tok.n_codebooks, length), dtype=torch.float32)
        mask = torch.zeros((n, length), dtype=torch.long)
        for i, x in enumerate(examples):
            lay, m = x["layout"], x["layout"].length
            input_ids[i, :, :m], targets[i, :, :m], weights[i, :, :m], mask[i, :m] = \
                lay.inputs, lay.targets, lay.weights, 1
        mels = [m for x in examples for m in x.get("audio_mels", [])]
        pixels = [p for x in examples for p in x.get("pixel_values", [])]
        spk = [x.get("speaker_emb") for x in examples]
        speaker = None
        if any(s is not None for s in spk):
            speaker = torch.stack([torch.zeros(self.spk_dim) if s is None else torch.as_tensor(s, dtype=torch.float32)
                                   for s in spk])
        return {
            "input_ids": input_ids, "targets": targets, "audio_weights": weights, "attention_mask": mask,
            "audio_mels": torch.stack(mels).float() if mels else None,
            "audio_frames": torch.tensor([f for x in examples for f in x.get("audio_frames", [])], dtype=torch.long),
            "pixel_values": torch.stack(pixels).float() if pixels else None,
            "speaker_emb": speaker,
            "prompt_len": torch.tensor([x["layout"].start for x in examples], dtype=torch.long),
            "tasks": [x["task"] for x in examples], "ids": [x["id"] for x in examples],
            "answer_text": [x.get("answer_text") for x in examples],
            "n_tokens": int(mask.sum()),
            "skipped": [x.as_dict() for x in items if not isinstance(x, dict)],
        }


def pack(batch: dict[str, Any], plan) -> dict[str, Any]:
    """Family packing hook (registry `packer`, data/packing.py): grids laid end to end by `plan` (a
    `data.packing.PackPlan`). Clips and images keep their reading order (the plan keeps the items' order), so the
    `<|audio_pad|>` / `<|image_pad|>` scatter needs no change; `speaker_emb` stays per item (N, S) and the model
    picks each position's item from `segment_ids`."""
    ids = batch["input_ids"]
    return {**batch, "input_ids": plan.grid(ids, padding_column(ids, batch["attention_mask"])),
            "targets": plan.grid(batch["targets"], IGNORE), "audio_weights": plan.grid(batch["audio_weights"], 0.0)}
