"""Released MiniMind-O parquet shards -> an index with exact lengths and a lazy dataset of laid-out examples.

`MiniMindOIndex` reads each row group once, checks every row (conversation JSON, per-turn audio / code counts,
code ranges, embedding width, audio headers) and computes its exact un-augmented sequence length with the same
`RowReader.plan` the dataset uses, so token budgets and `max_len` hold. It speaks the batch sampler's duck-typed
index protocol with `task_order` = ("t2a", "a2a", "i2t"). Bad rows are skipped and counted (`skipped`, the
existing `data.dataset.Skipped` records) or, with `strict`, stop with a ValueError naming file, row and column.
Cost: question-audio headers are read at index time (one pass over the audio bytes of A2A files).

`MiniMindODataset[(row, task)]` re-reads the row through a small row-group LRU, applies the training
augmentations (explicit per-process numpy generator; `augment=None` in evaluation), decodes question audio to
encoder features and the image to pixels, and returns {id, task, layout, audio_mels, audio_frames,
pixel_values, speaker_emb, answer_text, file, row} or a `Skipped` marker.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import get_worker_info

from data.audio import AudioDecodeError, audio_duration, decode_audio
from data.dataset import RowError, RowGroupDataset, RowIndex, Skipped, expand_paths
from data.minimind_o.schema import TASKS, first_image, parse_conversation, validate_schema
from omni.minimind_o.encoders import AUDIO_SR, MEL_HOP, AudioEncoderSpec, VisionEncoderSpec
from omni.minimind_o.layout import (
    IMAGE_PLACEHOLDER, IMAGE_SEPS, Augment, Layout, add_system_prompt, augment_waveform, build_layout, frames_from_flat,
    place_image, render_chat, scheduled_sampling, spec_augment,
)
from omni.minimind_o.tokens import MiniMindOTokens


@dataclass
class Plan:
    """What one row becomes: the task, the messages up to the target turn (user turns carry their clip under
    "_audio"), per-user-turn encoder frames, answer / reference codes (N, 8) / (R, 8), speaker embedding."""

    task: str
    messages: list[dict]
    frames: list[int] = field(default_factory=list)
    answer_codes: torch.Tensor | None = None
    ref_codes: torch.Tensor | None = None
    speaker_emb: torch.Tensor | None = None
    image: bytes | None = None
    keep_think: bool = False
    added_system: bool = False  # an augmentation system prompt (dropped first when the row is too long)
    image_front: bool = True    # where `<image>` goes in its user text (released: front / back, "\n" / "\n\n")
    image_sep: str = "\n"


class RowReader:
    """Row -> Plan -> Layout, shared by the index (lengths) and the dataset (tensors)."""

    def __init__(self, tokens: MiniMindOTokens, tokenizer: Any, audio: AudioEncoderSpec, vision: VisionEncoderSpec,
                 spk_dim: int, max_len: int) -> None:
        self.tok, self.tokenizer, self.audio, self.vision = tokens, tokenizer, audio, vision
        self.spk_dim, self.max_len = int(spk_dim), int(max_len)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def plan(self, rec: dict[str, Any], clip_samples, rng: np.random.Generator | None,
             augment: Augment | None) -> Plan:
        """clip_samples(bytes) -> 16 kHz samples of a question clip (header read or decode)."""
        try:
            msgs = parse_conversation(rec.get("conversations"))
        except ValueError as exc:
            raise RowError("conversations", "bad_conversation", str(exc)) from exc
        clips, image = list(rec.get("question_audios") or []), first_image(rec.get("image_bytes"))
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        if len(clips) > len(users):
            raise RowError("question_audios", "bad_audio_count", f"{len(clips)} clips for {len(users)} user turns")
        task = "a2a" if clips else "i2t" if image else "t2a"
        if image:
            msgs = _first_image_only(msgs)
        answers = self._answer_codes(rec, msgs)  # a turn without answer audio trains its text only
        ends = list(answers)
        end = ends[int(rng.integers(len(ends)))] if rng is not None and augment and augment.random_turn else ends[-1]
        msgs = msgs[: end + 1]
        # released A2A: only the LAST user turn is spoken; a row with fewer clips than user turns keeps text questions
        spoken = max((i for i in users if i < end), default=None) if len(clips) == len(users) else None
        if spoken is not None:
            msgs[spoken] = {**msgs[spoken], "_audio": clips[users.index(spoken)]}
        added = rng is not None and augment is not None and rng.random() < augment.system_prompt
        if added:
            msgs = add_system_prompt(msgs, augment.system_prompts, rng)
        plan = Plan(task, msgs, answer_codes=answers[end], image=image, added_system=added,
                    keep_think=bool(rng is not None and augment and rng.random() < augment.keep_think))
        if image is not None and rng is not None and augment is not None:  # released: random place and joint
            plan.image_front, plan.image_sep = bool(rng.random() < 0.5), IMAGE_SEPS[int(rng.integers(2))]
        keep_ref = rng is None or augment is None or rng.random() < augment.keep_ref
        if rec.get("ref_audios") and keep_ref:
            plan.ref_codes = self._codes(rec["ref_audios"], "ref_audios")
        if rec.get("spk_emb") is not None and len(rec["spk_emb"]):
            emb = np.asarray(rec["spk_emb"], dtype=np.float32)
            if emb.shape != (self.spk_dim,) or not np.isfinite(emb).all():
                raise RowError("spk_emb", "bad_speaker", f"expected {self.spk_dim} finite floats, got {emb.shape}")
            plan.speaker_emb = torch.from_numpy(emb)
        plan.frames = self._frames(plan.messages, clip_samples)
        return plan

    def _answer_codes(self, rec: dict[str, Any], msgs: list[dict]) -> dict[int, torch.Tensor | None]:
        """{message index of each assistant turn: its (N, 8) codes or None}."""
        turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        audios = rec.get("answer_audios")
        if audios is None or len(audios) == 0:
            return {i: None for i in turns}
        if len(audios) != len(turns):
            raise RowError("answer_audios", "bad_codes", f"{len(audios)} answer audios for {len(turns)} assistant turns")
        return {i: self._codes(a, "answer_audios") if a is not None and len(a) >= self.tok.n_codebooks else None
                for i, a in zip(turns, audios)}

    def _codes(self, flat: Any, column: str) -> torch.Tensor:
        codes = frames_from_flat(flat, self.tok.n_codebooks)
        if codes.numel() == 0:
            raise RowError(column, "bad_codes", f"fewer than {self.tok.n_codebooks} codes (one frame)")
        if codes.min() < 0 or codes.max() >= self.tok.codebook_size:
            raise RowError(column, "bad_codes", f"code values in [{int(codes.min())}, {int(codes.max())}] outside "
                           f"[0, {self.tok.codebook_size})")
        return codes

    def _frames(self, msgs: list[dict], clip_samples) -> list[int]:
        frames = []
        for m in msgs:
            if m["role"] == "user" and "_audio" in m:
                try:
                    n = clip_samples(m["_audio"])
                except AudioDecodeError as exc:
                    raise RowError("question_audios", exc.reason, str(exc)) from exc
                if n > self.audio.window_s * AUDIO_SR:
                    raise RowError("question_audios", "audio_too_long",
                                   f"{n / AUDIO_SR:.2f} s > encoder window {self.audio.window_s:g} s")
                frames.append(self.audio.frames(n))
        return frames

    def augment_margin(self, augment: Augment | None) -> int:
        """Most positions the augmentations can add to a row: the longest system prompt turn + the think block (+
        the room a random `<image>` place / joint may take)."""
        if augment is None:
            return 0
        turn = lambda text: 3 + len(self.encode("system\n")) + len(self.encode(text)) + len(self.encode("\n"))  # noqa
        think = 2 + len(self.encode("\n\n")) * 2
        image = 2 * len(self.encode("\n\n"))  # I2T: the random `<image>` place / joint vs front + "\n"
        return max((turn(p) for p in augment.system_prompts), default=0) * (augment.system_prompt > 0) \
            + think * (augment.keep_think > 0) + image

    def layout(self, plan: Plan) -> Layout:
        """Plan -> Layout, dropping the earliest exchanges (user + assistant) until it fits max_len; a row that
        still does not fit is cut at max_len and trained (released: the answer is cut, no STOP where it is cut
        off). Only a prompt that leaves no answer position before max_len is a RowError."""
        while True:
            chat = render_chat(self.tok, self.encode, plan.messages, audio_frames=plan.frames,
                               n_image_tokens=self.vision.n_tokens, keep_think=plan.keep_think,
                               image_front=plan.image_front, image_sep=plan.image_sep)
            lay = self._build(chat, plan)
            if lay.length <= self.max_len:
                return lay
            if plan.added_system or plan.keep_think:  # augmentation extras go before any real turn
                plan.messages = plan.messages[1:] if plan.added_system else plan.messages
                plan.added_system = plan.keep_think = False
                continue
            first = next((i for i, m in enumerate(plan.messages) if m["role"] != "system"), None)
            nxt = next((i for i, m in enumerate(plan.messages) if i > first and m["role"] == "user"), None) \
                if first is not None else None
            if nxt is None or plan.image is not None and _has_image(plan.messages[first:nxt]):
                if lay.start >= self.max_len:
                    raise RowError("conversations", "too_long", f"prompt length {lay.start} >= max_len "
                                   f"{self.max_len}: no answer position is left")
                return self._cut(lay)
            dropped = plan.messages[first:nxt]
            plan.frames = plan.frames[sum("_audio" in m for m in dropped):]
            plan.messages = plan.messages[:first] + plan.messages[nxt:]

    def _build(self, chat: Any, plan: Plan) -> Layout:
        return build_layout(self.tok, chat.prompt, chat.answer, plan.answer_codes, plan.ref_codes,
                            speaker=plan.speaker_emb is not None, think=chat.think)

    def _cut(self, lay: Layout) -> Layout:
        return truncate(lay, self.max_len)


def truncate(lay: Layout, max_len: int) -> Layout:
    """The first `max_len` positions of a layout (inputs, targets, weights): targets past the cut are gone, so a
    codebook cut mid-answer has no STOP target."""
    return Layout(inputs=lay.inputs[:, :max_len].clone(), targets=lay.targets[:, :max_len].clone(),
                  weights=lay.weights[:, :max_len].clone(), start=lay.start)


def _has_image(msgs: list[dict]) -> bool:
    return any(IMAGE_PLACEHOLDER in m["content"] for m in msgs)


def _first_image_only(msgs: list[dict]) -> list[dict]:
    """Keep the first `<image>` of the conversation (the image the row carries); later ones are dropped. A
    conversation without one gets it at the start of its first user turn."""
    out, seen = [], False
    for m in msgs:
        content = m["content"]
        if m["role"] == "user" and IMAGE_PLACEHOLDER in content:
            head, _, tail = content.partition(IMAGE_PLACEHOLDER)
            content = head + ("" if seen else IMAGE_PLACEHOLDER) + tail.replace(IMAGE_PLACEHOLDER, "")
            seen = True
        out.append({**m, "content": content})
    if not seen:
        first = next((i for i, m in enumerate(out) if m["role"] == "user"), None)
        if first is None:
            raise RowError("conversations", "bad_conversation", "an image row needs a user turn")
        out[first] = {**out[first], "content": IMAGE_PLACEHOLDER + out[first]["content"]}
    return out


def check_target(plan: Plan) -> None:
    """RowError('conversations', 'blank_text') when the target (last) assistant turn is whitespace only."""
    target = plan.messages[-1] if plan.messages else None
    if target is not None and target["role"] == "assistant" and not target["content"].strip():
        raise RowError("conversations", "blank_text", "the target assistant turn is whitespace only")


@dataclass(frozen=True)
class Extent:
    """What the index needs of a layout: its length L and answer start s (`build_layout` makes the tensors)."""

    length: int
    start: int


class LengthReader(RowReader):
    """The index's RowReader: the same `plan` / `layout` rules (exchange dropping, cut at max_len, every RowError)
    over *light* records, without building tensors. Code lists arrive as `range(n_values)` stand-ins (their values
    were range-checked column-wise, `light_records`), the speaker embedding as a checked zero vector, and the layout
    length is computed as `build_layout` sizes its grid: L = max(s + m - 1, s + N + K if N else 0). Texts are
    tokenised per row group in one batched tokenizer call (`prefill`), each occurrence counted (no cross-row
    deduplication, so a corpus of repeated rows costs what a real one does); a text not prefilled is encoded alone."""

    CONSTANT_TEXTS = ("\n", "\n\n", "system\n", "user\n", "assistant\n")

    def __init__(self, reader: RowReader) -> None:
        super().__init__(reader.tok, reader.tokenizer, reader.audio, reader.vision, reader.spk_dim, reader.max_len)
        self._ids: dict[str, list[int]] = {}
        self._backend = getattr(reader.tokenizer, "backend_tokenizer", None)  # fast (Rust) tokenizers only
        if self._backend is not None:
            super().encode("\n")  # syncs the backend's special-token setting as encode() does
        self._batch = getattr(self._backend, "encode_batch_fast", None) or getattr(self._backend, "encode_batch", None)

    def encode(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = super().encode(text)
        return ids

    def prefill(self, plans: list[Plan]) -> None:
        """Tokenise every text the plans' chats will encode, in one batched call (fast tokenizers only)."""
        texts = list(self.CONSTANT_TEXTS)
        for plan in plans:
            for m in plan.messages:
                text = m["content"]
                if m["role"] == "user" and IMAGE_PLACEHOLDER in text:
                    texts.extend(p for p in place_image(text, plan.image_front, plan.image_sep)
                                 .split(IMAGE_PLACEHOLDER) if p)
                else:
                    texts.append(text)
        self._ids = {}
        if self._batch is not None:  # = tokenizer.encode(text, add_special_tokens=False), without its per-text wrapping
            self._ids = {t: e.ids for t, e in zip(texts, self._batch(texts, add_special_tokens=False))}

    def _codes(self, flat: Any, column: str) -> torch.Tensor:
        n = len(flat) // self.tok.n_codebooks  # flat: range(n_values), values already in range
        if n == 0:
            raise RowError(column, "bad_codes", f"fewer than {self.tok.n_codebooks} codes (one frame)")
        return torch.empty((n, self.tok.n_codebooks), dtype=torch.long)

    def _build(self, chat: Any, plan: Plan) -> Extent:
        s, m = len(chat.prompt) + len(chat.think), len(chat.answer)
        n = 0 if plan.answer_codes is None else int(plan.answer_codes.shape[0])
        return Extent(max(s + m - 1, s + n + self.tok.n_codebooks if n else 0), s)

    def _cut(self, lay: Extent) -> Extent:
        return Extent(self.max_len, lay.start)


def light_records(table: Any, reader: RowReader) -> tuple[list[dict[str, Any] | None], np.ndarray]:
    """A row group -> (records for `LengthReader`, or None where a row must take the exact path). Code columns
    become `range(n_values)` stand-ins (None / [] kept), `spk_emb` a zero vector; a row with a code outside
    [0, codebook_size), a null code, or a speaker embedding of the wrong width / non-finite is None (the exact
    path then reports it exactly as before)."""
    import pyarrow.compute as pc

    n, cb = table.num_rows, reader.tok.codebook_size
    exact = np.zeros(n, dtype=bool)
    cols: dict[str, list] = {}

    def bad_values(values: Any, rows: np.ndarray, ok) -> None:
        v = values.to_numpy(zero_copy_only=False) if len(values) else np.zeros(0)
        bad = ~ok(v) | (np.isnan(v) if v.dtype.kind == "f" else False)
        if bad.any():
            exact[np.unique(rows[bad])] = True

    for name in ("id", "conversations", "question_audios", "image_bytes"):
        if name in table.column_names:
            cols[name] = table.column(name).to_pylist()
    if "answer_audios" in table.column_names:
        outer = table.column("answer_audios").combine_chunks()
        turns = pc.list_flatten(outer)
        turn_row = pc.list_parent_indices(outer).to_numpy()
        turn_len = pc.list_value_length(turns).to_numpy(zero_copy_only=False)
        bad_values(pc.list_flatten(turns), turn_row[pc.list_parent_indices(turns).to_numpy()],
                   lambda v: (v >= 0) & (v < cb))
        per_row: list = [None if not valid else [] for valid in outer.is_valid().to_numpy(zero_copy_only=False)]
        for r, k in zip(turn_row.tolist(), turn_len.tolist()):
            per_row[r].append(None if k != k else range(int(k)))  # k != k: a null turn (NaN)
        cols["answer_audios"] = per_row
    if "ref_audios" in table.column_names:
        col = table.column("ref_audios").combine_chunks()
        lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        bad_values(pc.list_flatten(col), pc.list_parent_indices(col).to_numpy(), lambda v: (v >= 0) & (v < cb))
        cols["ref_audios"] = [None if k != k else range(int(k)) for k in lens.tolist()]
    if "spk_emb" in table.column_names:
        col = table.column("spk_emb").combine_chunks()
        lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        bad_values(pc.list_flatten(col), pc.list_parent_indices(col).to_numpy(), np.isfinite)
        exact |= (lens == lens) & (lens != 0) & (lens != reader.spk_dim)
        zero = np.zeros(reader.spk_dim, dtype=np.float32)
        cols["spk_emb"] = [None if k != k else zero if k else [] for k in lens.tolist()]
    recs = [None if exact[r] else {c: v[r] for c, v in cols.items()} for r in range(n)]
    return recs, exact


def header_samples(data: bytes) -> int:
    """16 kHz samples of an encoded clip from its header only (what decode_audio would return)."""
    return int(round(audio_duration(data) * AUDIO_SR))


def row_id(rec: dict[str, Any], path: str, row: int) -> str:
    return str(rec.get("id") or f"{os.path.splitext(os.path.basename(path))[0]}:{row}")


class MiniMindOIndex(RowIndex):
    """Per-row metadata of every kept row across `paths` (n = kept rows): shard, group, row_in_group, row_in_file,
    group_id (n,) int32; task_mask (n,) uint8 over `task_order`; lengths (n, 3) int32 exact sequence lengths
    (+ `margin` for training augmentations; 0 where the task is not served). Skipped rows: `skipped`."""

    task_order: tuple[str, ...] = TASKS
    family = "MiniMind-O"

    def __init__(self, paths: Any, reader: RowReader, *, strict: bool = False, margin: int = 0) -> None:
        self.files = expand_paths(paths)
        if not self.files:
            raise ValueError("MiniMindOIndex needs at least one parquet file")
        self.reader, self.strict = reader, strict
        self._fast: LengthReader | None = None
        self.skipped: list[Skipped] = []
        rows: list[tuple[int, ...]] = []
        group_base = 0
        for shard, path in enumerate(self.files):
            pf = self._open_shard(path)  # None: unreadable file, recorded (strict: ValueError naming it)
            if pf is None:
                continue
            columns = validate_schema(pf.schema_arrow, path)
            row_in_file = 0
            for g in range(pf.num_row_groups):
                table = self._read_group(pf, path, g, row_in_file, columns)  # None: recorded row by row
                if table is None:
                    row_in_file += pf.metadata.row_group(g).num_rows
                    continue
                for r, (task, length) in enumerate(self._group_lengths(path, row_in_file, table)):
                    if length:
                        rows.append((shard, g, r, row_in_file + r, group_base + g, TASKS.index(task), length))
                row_in_file += table.num_rows
            group_base += pf.num_row_groups
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 7)
        for k, name in enumerate(("shard", "group", "row_in_group", "row_in_file", "group_id")):
            setattr(self, name, arr[:, k].astype(np.int32))
        self.task_mask = (1 << arr[:, 5]).astype(np.uint8)
        self.lengths = np.zeros((len(arr), len(TASKS)), dtype=np.int32)
        # + margin: room for training augmentations, so token budgets hold for augmented rows too
        self.lengths[np.arange(len(arr)), arr[:, 5]] = np.minimum(arr[:, 6] + int(margin), reader.max_len)
        self.n_groups = group_base

    def _group_lengths(self, path: str, first_row: int, table: Any) -> list[tuple[str, int]]:
        """(task, exact length) of each row of a row group ("", 0: skipped and recorded), in row order. Light rows
        (`light_records`) are planned first, their texts tokenised in one batch, then laid out by `LengthReader`
        (no tensors); the others (bad codes / embedding) take the exact tensor path, which names their error."""
        if self._fast is None:
            self._fast = LengthReader(self.reader)
        recs, exact = light_records(table, self.reader)
        plans: list[Plan | RowError] = []
        for r, rec in enumerate(recs):
            if rec is None:
                recs[r] = table.slice(r, 1).to_pylist()[0]
                plans.append(None)
                continue
            try:
                plans.append(self._fast.plan(rec, header_samples, None, None))
            except RowError as err:
                plans.append(err)
        self._fast.prefill([p for p in plans if isinstance(p, Plan)])
        return [self._length_or_skip(path, first_row + r, rec, plan, self.reader if exact[r] else self._fast)
                for r, (rec, plan) in enumerate(zip(recs, plans))]

    def _length_or_skip(self, path: str, row: int, rec: dict[str, Any], plan: Any = None,
                        reader: RowReader | None = None) -> tuple[str, int]:
        reader = reader or self.reader
        try:
            if isinstance(plan, RowError):
                raise plan
            plan = plan or reader.plan(rec, header_samples, None, None)
            check_target(plan)
            length = reader.layout(plan).length
            if rec.get("id") is not None:  # default ids (<file stem>:<row>) are unique
                self._claim_id(row_id(rec, path, row), path, row)
            return plan.task, length
        except RowError as err:
            if self.strict:
                raise ValueError(f"{path}: row {row} (id={row_id(rec, path, row)!r}), column {err.column!r}: "
                                 f"{err.detail}") from err
            self.skipped.append(Skipped(path, row, row_id(rec, path, row), err.column, err.reason, err.detail))
            return "", 0



class MiniMindODataset(RowGroupDataset):
    """`RowGroupDataset` over a `MiniMindOIndex`: `example(rec)` with the row's `row_id` as "id" (also in
    `Skipped` records and strict errors)."""

    stamp_id = True
    feature_columns = {"audio_mels": "question_audios", "pixel_values": "image_bytes", "speaker_emb": "spk_emb"}

    def __init__(self, index: MiniMindOIndex, *, augment: Augment | None = None, seed: int = 0,
                 cache_row_groups: int = 4, strict: bool = False) -> None:
        self.index, self.reader, self.augment = index, index.reader, augment
        self.seed, self.strict = int(seed), strict
        self._init_cache(max(1, int(cache_row_groups)))
        self._rng: np.random.Generator | None = None
        self._featurizer = self._image_processor = None

    def __getstate__(self) -> dict[str, Any]:  # worker copies start with an empty cache and their own generator
        return {**super().__getstate__(), "_rng": None}

    def rng(self) -> np.random.Generator:
        """Per-process augmentation generator: seed + the worker's seed (Lightning/torch reseed workers each
        epoch), so every worker draws differently and runs are reproducible."""
        if self._rng is None:
            info = get_worker_info()
            self._rng = np.random.default_rng([self.seed, info.seed if info is not None else 0])
        return self._rng

    def _row_ids(self, rec: dict[str, Any], path: str, row: int) -> tuple[str, str]:
        return (row_id(rec, path, row),) * 2

    def example(self, rec: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng() if self.augment is not None else None
        wavs: dict[int, np.ndarray] = {}

        def samples(data: bytes) -> int:
            wav = decode_audio(data, AUDIO_SR)
            if rng is not None and rng.random() < self.augment.waveform:
                wav = augment_waveform(wav, rng)
            wavs[id(data)] = wav
            return len(wav)

        plan = self.reader.plan(rec, samples, rng, self.augment)
        check_target(plan)
        lay = self.reader.layout(plan)
        if rng is not None and self.augment.scheduled_sampling > 0:
            lay.inputs = scheduled_sampling(self.reader.tok, lay.inputs, lay.start, self.augment.scheduled_sampling,
                                            rng)
        spec = self.reader.audio
        if self._featurizer is None and wavs:
            self._featurizer = spec.featurizer()
        clips = [m["_audio"] for m in plan.messages if "_audio" in m]
        mels = [spec.features(wavs[id(c)], self._featurizer) for c in clips]
        if rng is not None and self.augment.spec_augment > 0:
            valid = [len(wavs[id(c)]) // MEL_HOP for c in clips]
            mels = [spec_augment(m, v, rng) if rng.random() < self.augment.spec_augment else m
                    for m, v in zip(mels, valid)]
        pixels = []
        if plan.image is not None:
            if self._image_processor is None:
                self._image_processor = self.reader.vision.processor()
            try:
                pixels = [self.reader.vision.pixels(plan.image, self._image_processor)]
            except Exception as exc:  # Pillow raises UnidentifiedImageError / OSError / ValueError
                raise RowError("image_bytes", "bad_image", f"cannot decode the image: {exc}") from exc
        return {"task": plan.task, "layout": lay, "audio_mels": mels, "audio_frames": list(plan.frames),
                "pixel_values": pixels, "speaker_emb": plan.speaker_emb,
                "answer_text": plan.messages[-1]["content"]}
