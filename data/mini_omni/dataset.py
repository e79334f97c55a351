"""Parquet shards -> a light in-memory index and a lazy map-style dataset of (row, task) items.

`ParquetIndex` reads only light columns (id, task, duration_s, n_frames and the character lengths of the two text
columns); never question_audio or answer_codes. Presence of the heavy fields is read from their light proxies:
audio present <=> duration_s > 0, codes present <=> n_frames > 0 (the schema's contract, data/mini_omni/schema.py).

`OmniDataset[(row, task)]` reads that row's parquet row group through a small per-process LRU cache, decodes and
featurizes audio, tokenizes text and returns a plain example dict (see `OmniDataset`), or a `Skipped` marker for a
corrupt row (the collator drops it and reports it in the batch's `skipped` list). The reading, cache and bad-row
handling are `RowGroupDataset`'s (data/dataset.py), which every family's dataset shares.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from data.audio import AudioDecodeError, decode_audio
from data.dataset import RowError, RowGroupDataset, RowIndex, Skipped, expand_paths, open_table
from data.mini_omni.lengths import AUDIO_IN, IMAGE_IN, TASK_ORDER, encoder_frames, estimate_length
from data.mini_omni.schema import CODES_PER_FRAME, SCHEMA, TASK_REQUIREMENTS, validate_table
from data.text import encode_plain

LIGHT_COLUMNS = ("id", "task", "duration_s", "n_frames", "question_text", "answer_text")
MASK = np.uint16  # task bitmask dtype: bit i = TASK_ORDER[i]
SAMPLE_RATE = 16000  # Whisper input rate
HOP = 160  # Whisper mel hop (10 ms): 100 mel frames per second, 2 per encoder frame
DURATION_TOLERANCE_S = 0.02  # decoded audio may exceed its declared duration_s by one encoder frame (resampling)
# the column that usually dominates a task's length (named in "too_long" skip records)
LENGTH_COLUMN = {"asr": "question_audio", "a1t2": "question_audio", "a1a2": "answer_codes",
                 "t1t2": "answer_text", "t1a2": "answer_codes", "tts": "answer_codes",
                 "image_a1t2": "question_audio", "image_a1a2": "answer_codes", "caption": "answer_text"}


class ParquetIndex(RowIndex):
    """Light per-row metadata of every kept row across `paths`, as compact numpy arrays (n = kept rows).

    shard, group, row_in_group, row_in_file: (n,) int32 location; group_id: (n,) int32 global row-group id;
    task_mask: (n,) uint16, bit i = row serves TASK_ORDER[i]; duration: (n,) float32 s; n_frames, q_chars, a_chars:
    (n,) int32; lengths: (n, n_tasks) int32 estimated sequence length (0 where the task is not served).
    Rows with no eligible task, audio longer than `window_s` (audio tasks dropped) or an estimate over `max_len`
    (that task dropped) are recorded in `skipped`.
    """

    task_order: tuple[str, ...] = TASK_ORDER
    family = "Mini-Omni"

    def __init__(
        self,
        paths: Any,
        *,
        window_s: float = 30.0,
        max_len: int = 2048,
        chars_per_token: float = 3.0,
        max_audio_frames: int | None = 1500,
        strict: bool = False,
        n_image_tokens: int = 50,
    ) -> None:
        self.files = expand_paths(paths)
        self.n_image_tokens = int(n_image_tokens)
        if not self.files:
            raise ValueError("ParquetIndex needs at least one parquet file")
        self.window_s, self.max_len, self.chars_per_token = float(window_s), int(max_len), float(chars_per_token)
        self.max_audio_frames, self.strict = max_audio_frames, strict
        self.skipped: list[Skipped] = []
        parts, group_base = [], 0
        for shard, path in enumerate(self.files):
            part = self._index_file(shard, path, group_base)
            group_base += part.pop("n_groups")
            parts.append(part)
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        keep = cols["task_mask"] != 0
        for name, arr in cols.items():
            setattr(self, name, np.ascontiguousarray(arr[keep]))
        self.n_groups = group_base

    def _index_file(self, shard: int, path: str, group_base: int) -> dict[str, np.ndarray]:
        pf = self._open_shard(path)
        if pf is None:  # unreadable footer: recorded, no rows
            pf_sizes: list[int] = []
            table = pa.table({c: pa.array([], type=SCHEMA.field(c).type) for c in LIGHT_COLUMNS})
            readable = np.zeros(0, dtype=bool)
        else:
            validate_table(pf.schema_arrow, path)
            pf_sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            table, readable = self._read_light(pf, path, pf_sizes)
        sizes = pf_sizes
        n = table.num_rows
        group = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        starts = np.repeat(np.cumsum([0] + sizes)[:-1], sizes).astype(np.int64)
        cols = {
            "shard": np.full(n, shard, dtype=np.int32),
            "group": group,
            "group_id": group + np.int32(group_base),
            "row_in_group": (np.arange(n) - starts).astype(np.int32),
            "row_in_file": np.arange(n, dtype=np.int32),
            "duration": table["duration_s"].to_numpy(zero_copy_only=False).astype(np.float32),
            "n_frames": pc.fill_null(table["n_frames"], 0).to_numpy(zero_copy_only=False).astype(np.int32),
            "q_chars": _char_lengths(table["question_text"]),
            "a_chars": _char_lengths(table["answer_text"]),
            "has_image": _image_present(table, n),
        }
        ids = table["id"].to_pylist()
        self._check_values(path, cols, table, ids, readable)
        mask = self._eligibility(path, table["task"].to_pylist(), cols, ids,
                                 recorded={int(r) for r in np.flatnonzero(~readable)})
        cols["task_mask"], cols["lengths"] = self._length_checks(path, mask, cols, ids)
        self._unique_ids(path, cols["task_mask"], ids)
        cols["n_groups"] = len(sizes)
        return cols

    def _read_light(self, pf: pq.ParquetFile, path: str, sizes: list[int]) -> tuple[pa.Table, np.ndarray]:
        """The light columns (+ the optional `image`) of every row of `pf` and (n,) bool readable. A row group that
        cannot be read is recorded row by row (`_read_group`; strict: ValueError naming path and row group) and
        stands in as null rows, which no task can use."""
        columns = list(LIGHT_COLUMNS) + (["image"] if "image" in pf.schema_arrow.names else [])
        try:  # column projection: audio / codes bytes are never read
            table = pf.read(columns=columns)
            return table, np.ones(table.num_rows, dtype=bool)
        except (OSError, pa.ArrowException):
            pass  # find the unreadable row group(s)
        schema = pa.schema([pa.field(c, pf.schema_arrow.field(c).type) for c in columns])  # all nullable
        parts, readable, first = [], [], 0
        for g, size in enumerate(sizes):
            part = self._read_group(pf, path, g, first, columns)
            readable.append(np.full(size, part is not None))
            parts.append(part.cast(schema) if part is not None else
                         pa.table({c: pa.nulls(size, type=schema.field(c).type) for c in columns}, schema=schema))
            first += size
        return pa.concat_tables(parts), np.concatenate(readable) if readable else np.zeros(0, dtype=bool)

    def _bad(self, path: str, row: int, row_id: Any, column: str, reason: str, detail: str) -> None:
        """A data error in one row: ValueError naming file, row, id and column when strict, else recorded."""
        if self.strict:
            raise ValueError(f"{path}: row {row} (id={row_id!r}), column {column!r}: {detail}")
        self._skip(path, row, row_id, column, reason, detail)

    def _check_values(self, path: str, cols: dict, table: pa.Table, ids: list, readable: np.ndarray) -> None:
        """Whitespace-only question / answer text counts as absent (`blank_text`: the tasks needing it are
        dropped); a NaN, inf or negative duration_s drops the row's audio tasks (`bad_duration`: lengths and the
        encoder-window check are computed from it). Each is recorded with the row id (strict: ValueError)."""
        for column, key in (("question_text", "q_chars"), ("answer_text", "a_chars")):
            col = table[column]
            trimmed = pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0).to_numpy(zero_copy_only=False)
            for row in np.flatnonzero((cols[key] > 0) & (trimmed == 0) & readable):
                self._bad(path, int(row), ids[row], column, "blank_text", f"{column} is whitespace only")
                cols[key][row] = 0
        dur = cols["duration"]
        dur[~readable] = 0.0  # null stand-ins of unreadable row groups
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(dur) | (dur < 0)
        for row in np.flatnonzero(bad & readable):
            self._bad(path, int(row), ids[row], "duration_s", "bad_duration",
                      f"duration_s is {float(dur[row])!r} (must be a finite number >= 0)")
            dur[row] = 0.0

    def _unique_ids(self, path: str, mask: np.ndarray, ids: list) -> None:
        """A kept row whose id an earlier kept row of this index has is left out (`duplicate_id`, in `mask`)."""
        for row in np.flatnonzero(mask != 0):
            try:
                self._claim_id(ids[row], path, int(row))
            except RowError as err:
                self._bad(path, int(row), ids[row], "id", err.reason, err.detail)
                mask[row] = 0

    def _skip(self, path: str, row: int, row_id: str, column: str, reason: str, detail: str = "") -> None:
        self.skipped.append(Skipped(path, int(row), str(row_id), column, reason, detail))

    def _eligibility(self, path: str, tasks: list, cols: dict, ids: list, recorded: set[int] | None = None) \
            -> np.ndarray:
        """(n,) uint16 task bitmask from field presence and the row's `task`; records bad-task and empty rows
        (except the `recorded` ones, already recorded for another reason)."""
        present = {
            "question_audio": cols["duration"] > 0,
            "question_text": cols["q_chars"] > 0,
            "answer_text": cols["a_chars"] > 0,
            "answer_codes": cols["n_frames"] > 0,
            "image": cols["has_image"],
        }
        mask, recorded = np.zeros(len(tasks), dtype=MASK), set(recorded or ())
        for b, task in enumerate(TASK_ORDER):
            ok = np.logical_and.reduce([present[f] for f in TASK_REQUIREMENTS[task]])
            mask |= (ok.astype(MASK) << b).astype(MASK)
        for row, task in enumerate(tasks):
            if task is None:
                continue
            if task not in TASK_ORDER:
                if self.strict:
                    raise ValueError(f"{path}: row {row} (id={ids[row]!r}), column 'task': unknown task {task!r}; "
                                     f"valid tasks: {list(TASK_ORDER)}")
                self._skip(path, row, ids[row], "task", "bad_task", f"unknown task {task!r}")
                mask[row] = 0
                recorded.add(row)
                continue
            mask[row] &= MASK(1 << TASK_ORDER.index(task))
            if not mask[row]:
                self._skip(path, row, ids[row], "task", "empty", f"fields missing for its task {task!r}")
                recorded.add(row)
        for row in np.flatnonzero(mask == 0):
            if int(row) not in recorded:
                self._skip(path, row, ids[row], "*", "empty", "no task is possible with the fields present")
        return mask

    def _length_checks(self, path: str, mask: np.ndarray, cols: dict, ids: list) -> tuple[np.ndarray, np.ndarray]:
        """Drop audio tasks of rows whose audio exceeds the encoder window and tasks whose estimated length exceeds
        max_len; returns the updated mask and (n, n_tasks) int32 lengths."""
        lengths = np.zeros((len(mask), len(TASK_ORDER)), dtype=np.int32)
        audio_bits = MASK(sum(1 << TASK_ORDER.index(t) for t in AUDIO_IN))
        too_long_audio = (cols["duration"] > self.window_s) & ((mask & audio_bits) != 0)
        for row in np.flatnonzero(too_long_audio):
            self._skip(path, row, ids[row], "question_audio", "audio_too_long",
                       f"{cols['duration'][row]:.2f} s > encoder window {self.window_s:g} s")
        mask = np.where(too_long_audio, mask & ~audio_bits, mask).astype(MASK)
        for b, task in enumerate(TASK_ORDER):
            on = (mask >> b & 1).astype(bool)
            est = estimate_length(task, cols["duration"], cols["n_frames"], cols["q_chars"], cols["a_chars"],
                                  self.chars_per_token, self.max_audio_frames, self.n_image_tokens)
            over = on & (est > self.max_len)
            for row in np.flatnonzero(over):
                self._skip(path, row, ids[row], LENGTH_COLUMN[task], "too_long",
                           f"task {task}: estimated length {int(est[row])} > max_len {self.max_len}")
            mask = np.where(over, mask & MASK(~(1 << b) & 0xFFFF), mask).astype(MASK)
            lengths[:, b] = np.where(on & ~over, est, 0)
        return mask, lengths


def _image_present(table: pa.Table, n: int) -> np.ndarray:
    """(n,) bool: the optional `image` column holds non-empty bytes. This column is read at index time (images
    are small next to audio); shards without the column have no images."""
    if "image" not in table.column_names:
        return np.zeros(n, dtype=bool)
    col = table["image"]
    return pc.fill_null(pc.greater(pc.binary_length(col), 0), False).to_numpy(zero_copy_only=False)


def calibrate_chars_per_token(paths: Any, tokenizer: Any, max_texts: int = 2000, margin: float = 0.9) -> float:
    """Mean characters per token of `tokenizer` over the first `max_texts` question/answer texts of `paths`
    (only the two text columns are read), times `margin` (< 1 over-estimates lengths slightly, so token budgets
    and max_len hold for texts that tokenize worse than average). 1.0 when there is no text."""
    chars = toks = seen = 0
    for path in expand_paths(paths):
        try:
            for batch in open_table(path).iter_batches(batch_size=256, columns=["question_text", "answer_text"]):
                for text in batch.column(0).to_pylist() + batch.column(1).to_pylist():
                    if text and text.strip():
                        chars += len(text)
                        toks += len(tokenizer.encode(text, add_special_tokens=False))
                        seen += 1
                if seen >= max_texts:
                    return chars / max(toks, 1) * margin
        except (OSError, pa.ArrowException):
            continue  # an unreadable shard is recorded (or, strict, stops the run) by the index
    return chars / toks * margin if toks else 1.0


def _char_lengths(col: pa.ChunkedArray) -> np.ndarray:
    """(n,) int32 character counts of a string column; null -> 0."""
    return pc.fill_null(pc.utf8_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int32)


def window_log_mel(wav: np.ndarray, mel_filters: np.ndarray, n_samples: int, n_fft: int = 400) -> torch.Tensor:
    """Whisper's log-mel (n_mels, n_samples // HOP) of `wav` zero-padded (or cut) to `n_samples`, as
    WhisperFeatureExtractor computes it (torch STFT, centred reflect-padded frames, power, mel, log10 clamped at
    1e-10, floored at max - 8, (x + 4) / 4; no dither), but with the STFT over the audio only: a frame whose window
    lies wholly past the audio (in the zero padding) has power exactly 0, so only the frames up to the audio's end
    plus one window are computed and the rest are filled with power 0 (log10(1e-10)) before the max / floor. The
    sample clips fill ~1/4 of the 10 s window, so this is ~4x less STFT work per row."""
    n = min(len(wav), n_samples)
    n_mel_frames = n_samples // HOP
    # frames computed: those of a buffer holding the audio and >= one window of zeros (its end reflects zeros)
    length = min(n_samples, -(-(n + n_fft) // HOP) * HOP)
    x = torch.zeros(length, dtype=torch.float32)
    x[:n] = torch.from_numpy(np.asarray(wav[:n], dtype=np.float32))
    window, filters = _stft_constants(n_fft, mel_filters)
    stft = torch.stft(x, n_fft, HOP, window=window, return_complex=True)[..., :-1]
    power = stft.real.square() + stft.imag.square()  # |z|^2 without abs()'s hypot + sqrt (4x cheaper, same to 1 ulp)
    log_valid = torch.clamp(filters @ power, min=1e-10).log10_()
    k = log_valid.shape[1]
    top = log_valid.max() if k == n_mel_frames else torch.clamp(log_valid.max(), min=-10.0)  # padding: log10(1e-10)
    out = torch.empty(filters.shape[0], n_mel_frames, dtype=torch.float32)
    torch.maximum(log_valid, top - 8.0, out=out[:, :k])
    out[:, k:] = torch.clamp(top - 8.0, min=-10.0)  # padding frames: max(-10, top - 8)
    return out.add_(4.0).div_(4.0)


_STFT_CONSTANTS: dict[tuple[int, int], tuple[np.ndarray, torch.Tensor, torch.Tensor]] = {}


def _stft_constants(n_fft: int, mel_filters: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(Hann window, mel filters (n_mels, n_freq) float32), made once per process and filter bank (the entry keeps
    the bank alive, so its id cannot be reused by another array)."""
    key = (n_fft, id(mel_filters))
    if key not in _STFT_CONSTANTS:
        _STFT_CONSTANTS[key] = (mel_filters, torch.hann_window(n_fft),
                                torch.from_numpy(mel_filters).to(torch.float32).T.contiguous())
    return _STFT_CONSTANTS[key][1:]


class OmniDataset(RowGroupDataset):
    """Map-style dataset over a `ParquetIndex`; an item key is (row, task) as yielded by the batch sampler.
    `dataset[(row, task)]` -> example dict (keys: id, task, question_ids, mels, n_audio_frames, transcript_ids,
    answer_ids, answer_codes, answer_text, question_text, speaker, file, row) or `Skipped` for a bad row (strict:
    ValueError); rows are read as `RowGroupDataset` reads them.

    Audio -> 16 kHz mono -> Whisper log-mel (n_mels, F) with F = 2 * max_source_positions (the encoder window,
    padded / truncated), T = int(duration_ms / 20) + 1 encoder frames clamped to max_source_positions. Text is
    tokenized without special tokens.
    """

    unreadable = "cannot read row group {group}: {exc}"
    feature_columns = {"mels": "question_audio", "pixels": "image"}

    def __init__(
        self,
        index: ParquetIndex,
        tokenizer: Any,
        tokens: Any,
        *,
        n_mels: int = 80,
        max_source_positions: int = 1500,
        cache_row_groups: int = 4,
        strict: bool = False,
        vision_arch: str = "clip",
        vision_path: str | None = None,
        image_size: int = 224,
    ) -> None:
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        self.index, self.tokens, self.strict = index, tokens, strict
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) \
            else tokenizer
        if len(self.tokenizer) > tokens.text_vocab:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} ids but tokens.text_vocab is {tokens.text_vocab}: "
                             "its ids would collide with the text specials")
        if cache_row_groups < 1:
            raise ValueError(f"cache_row_groups must be >= 1, got {cache_row_groups}")
        self.n_mels, self.max_source_positions = int(n_mels), int(max_source_positions)
        self.n_samples = 2 * self.max_source_positions * HOP  # encoder window in samples
        self.features = WhisperFeatureExtractor(
            feature_size=self.n_mels, sampling_rate=SAMPLE_RATE, hop_length=HOP,
            chunk_length=int(np.ceil(self.n_samples / SAMPLE_RATE)),  # must be an int; max_length sets the window
        )
        self._init_cache(cache_row_groups)
        self.vision = (vision_arch, vision_path, int(image_size))
        self._image_processor: Any = None  # built on the first image (Pillow processor of the vision tower)

    def _example(self, rec: dict[str, Any], task: str) -> dict[str, Any]:
        needs = TASK_REQUIREMENTS[task]
        for column in needs:
            if rec.get(column) in (None, b"", ""):
                raise RowError(column, "missing", f"task {task} needs {column} but it is empty")
            if isinstance(rec[column], str) and not rec[column].strip():
                raise RowError(column, "blank_text", f"task {task} needs {column} but it is whitespace only")
        mels, n_audio = self._audio(rec["question_audio"], rec.get("duration_s")) if task in AUDIO_IN \
            else (None, 0)
        pixels = self._image(rec["image"]) if task in IMAGE_IN else None
        question_ids = None
        if task in ("t1t2", "t1a2"):
            question_ids = self._tokenize(rec["question_text"], "question_text")
        elif task == "tts":
            question_ids = self._tokenize(rec["answer_text"], "answer_text")
        answer_ids = self._tokenize(rec["question_text"], "question_text") if task == "asr" \
            else self._tokenize(rec["answer_text"], "answer_text")
        codes = self._codes(rec["answer_codes"], rec["n_frames"]) if "answer_codes" in needs else None
        # the question's transcript for audio input (auxiliary CTC targets; None when the row has no question_text)
        transcript_ids = None
        if task == "asr":  # the answer is the transcript: tokenized once
            transcript_ids = list(answer_ids)
        elif task in AUDIO_IN and rec.get("question_text"):
            transcript_ids = encode_plain(self.tokenizer, rec["question_text"])
        return {
            "id": rec["id"], "task": task, "question_ids": question_ids, "mels": mels, "n_audio_frames": n_audio,
            "transcript_ids": transcript_ids,
            "answer_ids": answer_ids, "answer_codes": codes, "answer_text": rec["answer_text"],
            "question_text": rec["question_text"], "speaker": rec["speaker"], "pixels": pixels,
        }

    def _image(self, data: bytes) -> torch.Tensor:
        """Encoded image bytes -> (3, H, W) float32 pixels for the vision tower."""
        from omni.mini_omni.vision import image_processor, load_pixels

        if self._image_processor is None:
            self._image_processor = image_processor(*self.vision)
        try:
            return load_pixels(data, self._image_processor)
        except ValueError as exc:
            raise RowError("image", "bad_image", str(exc)) from exc

    def _audio(self, data: bytes, declared_s: float | None = None) -> tuple[torch.Tensor, int]:
        """Encoded bytes -> ((n_mels, F) float32 log-mel of the padded window, T valid encoder frames). Audio longer
        than its row's `duration_s` by more than one encoder frame (20 ms) is a RowError, never cut: lengths,
        token budgets and the encoder-window check were all computed from the declared duration."""
        try:
            wav = decode_audio(data, SAMPLE_RATE)
        except AudioDecodeError as exc:
            raise RowError("question_audio", exc.reason, str(exc)) from exc
        actual = len(wav) / SAMPLE_RATE
        if declared_s is not None and actual > float(declared_s) + DURATION_TOLERANCE_S:
            raise RowError("question_audio", "audio_longer_than_declared",
                           f"the audio lasts {actual:.3f} s but duration_s declares {float(declared_s):.3f} s")
        n_frames = int(encoder_frames(len(wav) / SAMPLE_RATE, self.max_source_positions))
        if self.features.dither != 0.0:  # dither touches the padding too: only the extractor's own path is right
            feats = self.features(wav, sampling_rate=SAMPLE_RATE, return_tensors="np", padding="max_length",
                                  max_length=self.n_samples, truncation=True)["input_features"][0]
            return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)), n_frames
        return window_log_mel(wav, self.features.mel_filters, self.n_samples, self.features.n_fft), n_frames

    def _tokenize(self, text: str, column: str) -> list[int]:
        ids = encode_plain(self.tokenizer, text)
        if not ids:
            raise RowError(column, "empty_text", f"{column} {text!r} tokenizes to no tokens")
        return ids

    def _codes(self, codes: list[int], n_frames: int) -> torch.Tensor:
        """Flat frame-major SNAC codes -> (N, 7) long; length must be n_frames * 7 and values in the codebook."""
        arr = np.asarray(codes, dtype=np.int64)
        if arr.size != n_frames * CODES_PER_FRAME or arr.size == 0:
            raise RowError("answer_codes", "bad_codes",
                            f"{arr.size} codes, expected n_frames * {CODES_PER_FRAME} = {n_frames * CODES_PER_FRAME}")
        size = self.tokens.codebook_size
        if arr.min() < 0 or arr.max() >= size:
            raise RowError("answer_codes", "bad_codes",
                            f"code values in [{arr.min()}, {arr.max()}] outside the codebook [0, {size})")
        return torch.from_numpy(arr.reshape(n_frames, CODES_PER_FRAME))
