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
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import get_worker_info

from data.audio import AudioDecodeError, audio_duration, decode_audio
from data.dataset import IndexCache, RowError, RowGroupDataset, RowIndex, Skipped, expand_paths, open_table
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
        self._n_image_tokens: int | None = None
        self._known: dict[str, list[int]] = {}  # the chat template's constant texts, encoded once
        # fast (Rust) tokenizers: the backend's encode without transformers' per-call wrapping (same ids)
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        if self._backend is not None:
            self.tokenizer.encode("\n", add_special_tokens=False)  # syncs the backend's special-token setting

    CONSTANT_TEXTS = ("\n", "\n\n", "system\n", "user\n", "assistant\n")

    def encode(self, text: str) -> list[int]:
        ids = self._known.get(text)
        if ids is None:
            ids = self._backend.encode(text, add_special_tokens=False).ids if self._backend is not None \
                else list(self.tokenizer.encode(text, add_special_tokens=False))
            if text in self.CONSTANT_TEXTS:
                self._known[text] = ids
        return ids

    @property
    def n_image_tokens(self) -> int:
        if self._n_image_tokens is None:  # read from the encoder config once (not per row)
            self._n_image_tokens = int(self.vision.n_tokens)
        return self._n_image_tokens

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
        ref = rec.get("ref_audios")
        if ref is not None and len(ref) and keep_ref:
            plan.ref_codes = self._codes(rec["ref_audios"], "ref_audios")
        if rec.get("spk_emb") is not None and len(rec["spk_emb"]):
            emb = np.array(rec["spk_emb"], dtype=np.float32)  # a copy: the row may be a view of a cached group
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
        arr = codes.numpy()
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.tok.codebook_size:
            raise RowError(column, "bad_codes", f"code values in [{lo}, {hi}] outside [0, {self.tok.codebook_size})")
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
                               n_image_tokens=self.n_image_tokens, keep_think=plan.keep_think,
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


class _Frames:
    """What the index knows of a code column: its (frames, K) shape (no tensor is allocated)."""

    __slots__ = ("shape",)

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape


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
        return _Frames((n, self.tok.n_codebooks))

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


CODE_COLUMNS = ("answer_audios", "ref_audios", "spk_emb")


def row_getters(table: Any) -> dict[str, Any] | None:
    """A row group -> {column: row -> value}: list columns of numbers (`CODE_COLUMNS`) as numpy slices of the
    column's flat values (None where the list is null; `answer_audios` a list of per-turn arrays / None), the
    others as Python values (`to_pylist` of the row). None when a code list holds a null value (the generic
    per-row reading then applies)."""
    getters: dict[str, Any] = {}
    for name in table.column_names:
        col = table.column(name)
        if name not in CODE_COLUMNS or not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            getters[name] = lambda r, col=col: col[r].as_py()
            continue
        outer = col.combine_chunks()
        if isinstance(outer, pa.ChunkedArray):  # pyarrow may return a one-chunk ChunkedArray
            outer = outer.chunk(0) if outer.num_chunks else pa.array([], type=col.type)
        nested = pa.types.is_list(outer.type.value_type) or pa.types.is_large_list(outer.type.value_type)
        inner = outer.values
        leaf = inner.values if nested else inner
        if leaf.null_count:
            return None
        flat = leaf.to_numpy(zero_copy_only=False)
        off = outer.offsets.to_numpy()
        valid = outer.is_valid().to_numpy(zero_copy_only=False)
        if not nested:
            getters[name] = lambda r, f=flat, o=off, v=valid: f[o[r]:o[r + 1]] if v[r] else None
            continue
        ioff, ivalid = inner.offsets.to_numpy(), inner.is_valid().to_numpy(zero_copy_only=False)
        getters[name] = lambda r, f=flat, o=off, v=valid, io=ioff, iv=ivalid: \
            [f[io[j]:io[j + 1]] if iv[j] else None for j in range(o[r], o[r + 1])] if v[r] else None
    return getters


def header_samples(data: bytes) -> int:
    """16 kHz samples of an encoded clip from its header only (what decode_audio would return)."""
    return int(round(audio_duration(data) * AUDIO_SR))


def id_digest(name: str) -> int:
    """A 64-bit hash of a row id (stable across processes, unlike `hash`)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def row_id(rec: dict[str, Any], path: str, row: int) -> str:
    return str(rec.get("id") or f"{os.path.splitext(os.path.basename(path))[0]}:{row}")


class MiniMindOIndex(RowIndex):
    """Per-row metadata of every kept row across `paths` (n = kept rows): shard, group, row_in_group, row_in_file,
    group_id (n,) int32; task_mask (n,) uint8 over `task_order`; lengths (n, 3) int32 exact sequence lengths
    (+ `margin` for training augmentations; 0 where the task is not served). Skipped rows: `skipped`."""

    task_order: tuple[str, ...] = TASKS
    family = "MiniMind-O"

    def __init__(self, paths: Any, reader: RowReader, *, strict: bool = False, margin: int = 0,
                 cache: str | os.PathLike | None = None) -> None:
        """`cache`: a folder for per-shard results (`data.dataset.IndexCache`; None: none), so a rerun over
        unchanged shards reads their lengths instead of every row."""
        self.files = expand_paths(paths)
        if not self.files:
            raise ValueError("MiniMindOIndex needs at least one parquet file")
        self.reader, self.strict = reader, strict
        self._fast: LengthReader | None = None
        self.skipped: list[Skipped] = []
        self.cache = IndexCache(cache, self.fingerprint()) if cache else None
        parts: list[tuple[int, dict[str, Any]]] = []
        for shard, path in enumerate(self.files):
            part = self._cached(path)
            if part is None:
                part = self._scan(path)  # None: unreadable file, recorded (strict: ValueError naming it)
                if part is None:
                    continue
                if self.cache is not None and part.pop("cacheable"):
                    self.cache.store(path, {k: part[k] for k in self.CACHED},
                                     {"skipped": [x.as_dict() for x in part["skipped"]]})
            self.skipped.extend(part["skipped"])
            parts.append((shard, part))
        self._drop_duplicate_ids(parts)
        cols: list[list[np.ndarray]] = [[] for _ in range(7)]
        group_base = 0
        for shard, part in parts:
            sizes = part["group_rows"].astype(np.int64)
            n = int(sizes.sum())
            group = np.repeat(np.arange(len(sizes)), sizes)
            in_file = np.arange(n)
            keep = part["task"] >= 0
            for k, v in enumerate((np.full(n, shard), group, in_file - (np.cumsum(sizes) - sizes)[group], in_file,
                                   group_base + group, part["task"], part["length"])):
                cols[k].append(np.asarray(v, dtype=np.int64)[keep])
            group_base += len(sizes)
        arr = [np.concatenate(c) if c else np.zeros(0, dtype=np.int64) for c in cols]
        for k, name in enumerate(("shard", "group", "row_in_group", "row_in_file", "group_id")):
            setattr(self, name, arr[k].astype(np.int32))
        self.task_mask = (1 << arr[5]).astype(np.uint8)
        self.lengths = np.zeros((len(arr[5]), len(TASKS)), dtype=np.int32)
        # + margin: room for training augmentations, so token budgets hold for augmented rows too
        self.lengths[np.arange(len(arr[5])), arr[5]] = np.minimum(arr[6] + int(margin), reader.max_len)
        self.n_groups = group_base

    # per-shard results: rows per row group; per row of the file: task (index in TASKS, -1: left out), exact
    # length (un-augmented), whether the row claims an id, and a 64-bit hash of that id (duplicates across shards
    # are found from the hashes and confirmed on the ids themselves)
    CACHED = ("group_rows", "task", "length", "claims", "id_hash")

    def fingerprint(self) -> dict[str, Any]:
        """Everything besides the shard itself that decides the index's per-shard results: the token table, the
        tokenizer (its serialised vocabulary / rules), the encoders' frame / token counts, speaker width,
        max_len, and the source of the code that computes lengths."""
        import dataclasses
        import hashlib

        r = self.reader
        backend = getattr(r.tokenizer, "backend_tokenizer", None)
        tokenizer = hashlib.sha1(backend.to_str().encode()).hexdigest() if backend is not None \
            else repr(r.tokenizer)
        source = _SOURCE_DIGEST if type(r).__module__ == __name__ else f"{_SOURCE_DIGEST}+{type(r).__module__}"
        return {"family": self.family, "tokens": dataclasses.asdict(r.tok), "tokenizer": tokenizer,
                "n_tokenizer": len(r.tokenizer), "audio": dataclasses.asdict(r.audio),
                "audio_frames": [r.audio.frames(n) for n in (1, 16000, 160000, 480000)],
                "window_s": r.audio.window_s, "n_image_tokens": r.n_image_tokens, "spk_dim": r.spk_dim,
                "max_len": r.max_len, "reader": type(r).__qualname__, "source": source}

    def _cached(self, path: str) -> dict[str, Any] | None:
        """The cached results of `path` (this version of it), or None (miss / rejected / strict with bad rows:
        the scan then names the first one)."""
        if self.cache is None:
            return None

        def check(arrays: dict[str, np.ndarray], extra: Any) -> None:
            if set(arrays) != set(self.CACHED):
                raise ValueError(f"arrays {sorted(arrays)}, expected {sorted(self.CACHED)}")
            n = int(arrays["group_rows"].astype(np.int64).sum())
            if arrays["group_rows"].ndim != 1 or (arrays["group_rows"] < 0).any():
                raise ValueError("bad group_rows")
            for k in self.CACHED[1:]:
                if arrays[k].shape != (n,):
                    raise ValueError(f"{k} has shape {arrays[k].shape}, expected ({n},)")
            task, length = arrays["task"], arrays["length"]
            kept = task >= 0
            if (task >= len(TASKS)).any() or (task < -1).any() \
                    or (length[kept] < 1).any() or (length[kept] > self.reader.max_len).any():
                raise ValueError("task / length values out of range")
            if not isinstance(extra, dict) or not isinstance(extra.get("skipped"), list):
                raise ValueError("no skipped-row records")
            [Skipped(**x) for x in extra["skipped"]]  # TypeError when a record is malformed

        got = self.cache.load(path, check)
        if got is None:
            return None
        arrays, extra = got
        if self.strict and extra["skipped"]:
            return None
        return {**arrays, "skipped": [Skipped(**x) for x in extra["skipped"]]}

    def _scan(self, path: str) -> dict[str, Any] | None:
        """Read and check every row of one shard: its `CACHED` arrays, its `skipped` records and whether the
        results may be cached (not when a row group could not be read: that may pass)."""
        pf = self._open_shard(path)  # None: unreadable file, recorded (strict: ValueError naming it)
        if pf is None:
            return None
        first_skip = len(self.skipped)
        columns = validate_schema(pf.schema_arrow, path)
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        n = sum(sizes)
        task = np.full(n, -1, dtype=np.int8)
        length = np.zeros(n, dtype=np.int32)
        claims = np.zeros(n, dtype=bool)
        id_hash = np.zeros(n, dtype=np.uint64)
        cacheable, row_in_file = True, 0
        for g in range(pf.num_row_groups):
            table = self._read_group(pf, path, g, row_in_file, columns)  # None: recorded row by row
            if table is None:
                cacheable = False
            else:
                for r, (t, k, claim) in enumerate(self._group_lengths(path, row_in_file, table)):
                    if k:
                        task[row_in_file + r], length[row_in_file + r] = TASKS.index(t), k
                        if claim is not None:
                            claims[row_in_file + r] = True
                            id_hash[row_in_file + r] = id_digest(claim)
            row_in_file += sizes[g]
        skipped = self.skipped[first_skip:]
        del self.skipped[first_skip:]
        return {"group_rows": np.asarray(sizes, dtype=np.int64), "task": task, "length": length, "claims": claims,
                "id_hash": id_hash, "skipped": skipped, "cacheable": cacheable}

    def _drop_duplicate_ids(self, parts: list[tuple[int, dict[str, Any]]]) -> None:
        """A kept row whose id an earlier kept row (file order, then row order) has is left out (`duplicate_id`,
        column id; strict: ValueError naming it). Candidates are rows sharing an id hash; their ids are read back
        and compared, so a hash collision never drops a row."""
        hashes = [p["id_hash"][p["claims"]] for _, p in parts]
        if not hashes or not sum(len(h) for h in hashes):
            return
        flat = np.concatenate(hashes)
        _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        shared = counts[inverse] > 1
        if not shared.any():
            return
        seen: dict[str, tuple[str, int]] = {}
        offset = 0
        for shard, part in parts:
            rows = np.flatnonzero(part["claims"])
            mine = rows[shared[offset: offset + len(rows)]]
            offset += len(rows)
            if not len(mine):
                continue
            path = self.files[shard]
            ids = open_table(path).read(columns=["id"]).column("id").take(pa.array(mine)).to_pylist()
            for row, value in zip(mine.tolist(), ids):
                name = row_id({"id": value}, path, row)
                if name not in seen:
                    seen[name] = (path, row)
                    continue
                first = seen[name]
                detail = f"id {name!r} is already used by {first[0]} row {first[1]}"
                if self.strict:
                    raise ValueError(f"{path}: row {row} (id={name!r}), column 'id': {detail}")
                self.skipped.append(Skipped(path, row, name, "id", "duplicate_id", detail))
                part["task"] = part["task"].copy()  # cached arrays may be read-only
                part["task"][row] = -1
                part["claims"] = part["claims"].copy()
                part["claims"][row] = False

    def _group_lengths(self, path: str, first_row: int, table: Any) -> list[tuple[str, int, str | None]]:
        """(task, exact length, the id it claims or None) of each row of a row group ("", 0, None: skipped and
        recorded), in row order. Light rows
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
                        reader: RowReader | None = None) -> tuple[str, int, str | None]:
        reader = reader or self.reader
        try:
            if isinstance(plan, RowError):
                raise plan
            plan = plan or reader.plan(rec, header_samples, None, None)
            check_target(plan)
            length = reader.layout(plan).length
            # default ids (<file stem>:<row>) are unique; duplicates are found across the index (_drop_duplicate_ids)
            return plan.task, length, row_id(rec, path, row) if rec.get("id") is not None else None
        except RowError as err:
            if self.strict:
                raise ValueError(f"{path}: row {row} (id={row_id(rec, path, row)!r}), column {err.column!r}: "
                                 f"{err.detail}") from err
            self.skipped.append(Skipped(path, row, row_id(rec, path, row), err.column, err.reason, err.detail))
            return "", 0, None



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
        return {**super().__getstate__(), "_rng": None, "_columns": {}}

    def _row(self, i: int) -> dict[str, Any]:
        """Kept row `i` as a {column: value} dict; the code / embedding columns are numpy views into the row group
        (not Python lists: `plan` turns them into arrays anyway), decoded column-wise once per cached row group."""
        key = (int(self.index.shard[i]), int(self.index.group[i]))
        table = self._row_group(*key)
        cached = self.__dict__.setdefault("_columns", {}).get(key)
        if cached is None or cached[0] is not table:
            for stale in [k for k in self._columns if k not in self._cache]:
                del self._columns[stale]
            cached = self._columns[key] = (table, row_getters(table))
        getters, r = cached[1], int(self.index.row_in_group[i])
        if getters is None:  # a null inside a code list: the generic reading (its error is the exact path's)
            return super()._row(i)
        return {name: get(r) for name, get in getters.items()}

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


def _source_digest() -> str:
    """sha1 of the source this process imported for computing lengths (hashed at import, so a file edited while
    the process runs does not change this process's fingerprint: it still runs the code it loaded)."""
    import hashlib
    import inspect
    import sys

    digest = hashlib.sha1()
    for name in ("data.audio", "data.dataset", "data.minimind_o.schema", "omni.minimind_o.encoders",
                 "omni.minimind_o.layout", "omni.minimind_o.tokens", __name__):
        module = sys.modules.get(name)
        digest.update(inspect.getsource(module).encode() if module is not None else name.encode())
    return digest.hexdigest()


_SOURCE_DIGEST = _source_digest()  # every module above is imported by now (this module imports them)
