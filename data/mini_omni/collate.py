"""Collation: example dicts (data.mini_omni.dataset.OmniDataset) -> one padded Mini-Omni batch. Pure: no I/O, no devices.

Batch legend (B batch items, L longest sequence in the batch, B_a items with audio input, R = 8 rows =
7 SNAC audio layers + text, n_mels mel bins, F mel frames of the encoder window):

| key            | type / shape              | meaning                                                              |
|----------------|---------------------------|----------------------------------------------------------------------|
| input_ids      | (B, R, L) long            | LOCAL layout ids (layout.build_example inputs); right-padded with    |
|                |                           | PAD_A on audio rows 0..6 and PAD_T on the text row 7                 |
| targets        | (B, R, L) long            | next-token targets, IGNORE (-100) where no loss and on padding       |
| attention_mask | (B, L) long               | 1 on the item's real positions, 0 on padding                         |
| audio_mels     | (B_a, n_mels, F) float32  | Whisper log-mel windows of the audio items, or None when B_a == 0    |
| audio_index    | (B_a,) long               | batch item each mel window belongs to                                |
| audio_start    | (B_a,) long               | first position receiving encoder features (1: after INPUT_A)         |
| audio_len      | (B_a,) long               | T, encoder frames injected at [audio_start, audio_start + T)         |
| audio_text     | (B_a, S) long             | transcript token ids of each audio item (question_text, for the      |
|                |                           | auxiliary CTC loss), right-padded with 0                             |
| audio_text_len | (B_a,) long               | S_i, transcript length; 0 where the row has no question_text         |
| image_pixels   | (B_i, 3, H, W) float32    | vision-tower pixels of the image items (Mini-Omni2), or None         |
| image_index    | (B_i,) long               | batch item each image belongs to                                     |
| image_start    | (B_i,) long               | first position receiving image features (1: after IMAGE)             |
| image_len      | (B_i,) long               | N image tokens injected at [image_start, image_start + N)            |
| prompt_len     | (B,) long                 | P, prompt positions before the answer                                |
| tasks          | list[str] (B)             | task of each item                                                    |
| ids            | list[str] (B)             | row id of each item                                                  |
| answer_text    | list[str | None] (B)      | reference answer text (the transcript for asr)                       |
| n_tokens       | int                       | sum of the items' real lengths (useful, non-padding positions)       |
| skipped        | list[dict]                | load-time `Skipped` markers dropped from this batch (as dicts)       |

A batch whose items were all skipped has B == 0 (input_ids (0, R, 0)); the training step should skip it.
"""
from __future__ import annotations

from typing import Any

import torch

from data.packing import padding_column
from omni.mini_omni.layout import IMAGE_TOKENS, build_example
from omni.mini_omni.tokens import IGNORE, MiniOmniTokens


class MiniOmniCollator:
    """Callable collate_fn: list of example dicts / `Skipped` markers -> the batch dict of the module legend."""

    def __init__(self, tokens: MiniOmniTokens | dict[str, Any], n_image_tokens: int = IMAGE_TOKENS) -> None:
        self.tokens = MiniOmniTokens(**tokens) if isinstance(tokens, dict) else tokens
        self.n_image_tokens = int(n_image_tokens)

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        examples = [x for x in items if isinstance(x, dict)]
        skipped = [x.as_dict() for x in items if not isinstance(x, dict)]
        layouts = [self.layout(x) for x in examples]
        batch = self.pad([lay.inputs for lay in layouts], [lay.targets for lay in layouts])
        audio = [(i, x, lay) for i, (x, lay) in enumerate(zip(examples, layouts)) if x["mels"] is not None]
        batch.update(
            audio_mels=torch.stack([x["mels"] for _, x, _ in audio]).float() if audio else None,
            audio_index=torch.tensor([i for i, _, _ in audio], dtype=torch.long),
            audio_start=torch.tensor([lay.audio_start for _, _, lay in audio], dtype=torch.long),
            audio_len=torch.tensor([lay.audio_len for _, _, lay in audio], dtype=torch.long),
            **self.transcripts([x.get("transcript_ids") for _, x, _ in audio]),
            **self.images(examples, layouts),
            prompt_len=torch.tensor([lay.prompt_len for lay in layouts], dtype=torch.long),
            tasks=[x["task"] for x in examples],
            ids=[x["id"] for x in examples],
            answer_text=[_answer_text(x) for x in examples],
            skipped=skipped,
        )
        return batch

    def layout(self, example: dict[str, Any]):
        """One example dict -> layout.Layout (inputs / targets (R, L_i))."""
        return build_example(
            self.tokens,
            example["task"],
            answer_ids=example["answer_ids"],
            question_ids=example.get("question_ids"),
            n_audio_frames=int(example.get("n_audio_frames") or 0),
            answer_codes=example.get("answer_codes"),
            n_image_tokens=self.n_image_tokens,
        )

    @staticmethod
    def transcripts(ids: list[list[int] | None]) -> dict[str, torch.Tensor]:
        """audio_text (B_a, S) right-padded with 0 and audio_text_len (B_a,) (0 = no transcript)."""
        lens = [len(x or ()) for x in ids]
        text = torch.zeros(len(ids), max(lens, default=0), dtype=torch.long)
        for i, x in enumerate(ids):
            if x:
                text[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        return {"audio_text": text, "audio_text_len": torch.tensor(lens, dtype=torch.long)}

    @staticmethod
    def images(examples: list[dict[str, Any]], layouts: list) -> dict[str, Any]:
        """image_pixels / image_index / image_start / image_len of the items that carry an image."""
        items = [(i, x, lay) for i, (x, lay) in enumerate(zip(examples, layouts)) if x.get("pixels") is not None]
        return {
            "image_pixels": torch.stack([x["pixels"] for _, x, _ in items]).float() if items else None,
            "image_index": torch.tensor([i for i, _, _ in items], dtype=torch.long),
            "image_start": torch.tensor([lay.image_start for _, _, lay in items], dtype=torch.long),
            "image_len": torch.tensor([lay.image_len for _, _, lay in items], dtype=torch.long),
        }

    def pad(self, inputs: list[torch.Tensor], targets: list[torch.Tensor]) -> dict[str, Any]:
        """Right-pad (R, L_i) grids to (B, R, L): inputs with PAD_A / PAD_T per row, targets with IGNORE."""
        tok = self.tokens
        n, length = len(inputs), max((x.shape[1] for x in inputs), default=0)
        pad_col = torch.full((tok.n_rows,), tok.pad_a, dtype=torch.long)
        pad_col[tok.text_row] = tok.pad_t
        input_ids = pad_col.view(1, -1, 1).repeat(n, 1, length)  # (B, R, L)
        target_ids = torch.full((n, tok.n_rows, length), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.long)
        for i, (x, y) in enumerate(zip(inputs, targets)):
            input_ids[i, :, : x.shape[1]] = x
            target_ids[i, :, : y.shape[1]] = y
            mask[i, : x.shape[1]] = 1
        return {"input_ids": input_ids, "targets": target_ids, "attention_mask": mask,
                "n_tokens": int(sum(x.shape[1] for x in inputs))}


def _answer_text(example: dict[str, Any]) -> str | None:
    return example.get("question_text") if example["task"] == "asr" else example.get("answer_text")


def pack(batch: dict[str, Any], plan) -> dict[str, Any]:
    """Family packing hook (registry `packer`, data/packing.py): the padded batch's grids laid end to end by `plan`
    (a `data.packing.PackPlan`); audio / image features keep their item order, their `*_index` become the
    sequence and their `*_start` the position inside it. Per-item lists and lengths stay per item."""
    ids = batch["input_ids"]
    pad = padding_column(ids, batch["attention_mask"])
    out = {**batch, "input_ids": plan.grid(ids, pad), "targets": plan.grid(batch["targets"], IGNORE)}
    for kind in ("audio", "image"):
        index = batch[f"{kind}_index"]
        out[f"{kind}_start"] = batch[f"{kind}_start"] + plan.item_offset(index)
        out[f"{kind}_index"] = plan.item_seq(index)
    return out
