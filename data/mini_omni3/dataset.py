"""Streaming parquet shards -> a light index (exact lengths) and a lazy dataset of laid-out sessions.

`StreamingIndex` reads only the light columns (never audio / features), checks every row's labels and computes its
exact sequence length (reply texts are tokenized here; they are short). It speaks the batch sampler's duck-typed
index protocol with its own `task_order` = ("online", "offline"): a row serves the task named by its `mode`.
`StreamingDataset[(row, task)]` reads the row group through a small LRU, decodes audio -> log-mel (online: one
whole-stream log-mel sliced per chunk; offline: one whole-clip log-mel for one tower call) or reads precomputed
tower features, and lays the sequence out; bad rows become `Skipped` (strict: ValueError naming file, row and
column). Online sessions longer than max_len are truncated (tail chunks dropped, `layout.chunks_within`), not
skipped; the index's length is the truncated one. An offline row's AUDIO_PAD count comes from its duration_s
(round(duration_s * 16000) samples -> encoder.clip_frames) and is checked against the decoded audio.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from data.audio import AudioDecodeError, decode_audio
from data.dataset import RowError, RowGroupDataset, RowIndex, Skipped, expand_paths
from data.mini_omni3.schema import LIGHT_COLUMNS, MODES, validate_schema
from data.text import encode_plain
from omni.mini_omni3.encoder import (
    CHUNK_SAMPLES, FRAMES_PER_CHUNK, OFFLINE_MAX_SAMPLES, SAMPLE_RATE, LogMel, clip_frames, pad_to_chunks,
)
from omni.mini_omni3.layout import (
    Reply, chunks_within, offline_prefix, offline_sequence, online_length, online_prefix, online_sequence,
    truncate_online,
)
from omni.mini_omni3.tokens import EMOTIONS, MiniOmni3Tokens


def offline_samples(rec: dict[str, Any]) -> int:
    """16 kHz samples of an offline row's clip (duration_s as written by data.mini_omni3.builder.offline_row)."""
    return int(round(float(rec["duration_s"]) * SAMPLE_RATE))


def offline_frames(rec: dict[str, Any]) -> int:
    """AUDIO_PAD placeholders of an offline row: the whole-clip tower output length (capped at 20 s)."""
    return clip_frames(offline_samples(rec)) if int(rec["n_chunks"]) > 0 else 0


def check_labels(rec: dict[str, Any]) -> None:
    """Consistency of a row's label columns (raises RowError)."""
    mode = rec["mode"]
    if mode not in MODES:
        raise RowError("mode", "bad_mode", f"mode {mode!r} is not one of {list(MODES)}")
    texts = rec["reply_text"] or []
    emotions = rec["reply_emotion"]
    if emotions is not None and len(emotions) != len(texts):
        raise RowError("reply_emotion", "bad_labels", f"{len(emotions)} emotions for {len(texts)} replies")
    for e in emotions or []:
        if e is not None and e not in EMOTIONS:
            raise RowError("reply_emotion", "bad_labels", f"emotion {e!r} is not one of {list(EMOTIONS)}")
    if any(not t for t in texts):
        raise RowError("reply_text", "empty_text", "a reply text is empty")
    if mode == "offline" and int(rec["n_chunks"]) > 0 and offline_frames(rec) <= 0:
        raise RowError("duration_s", "bad_labels", f"duration_s={rec['duration_s']} gives no whole tower frame")
    if any(not t.strip() for t in texts):
        raise RowError("reply_text", "blank_text", "a reply text is whitespace only")
    if rec["user_text"] is not None and rec["user_text"] and not rec["user_text"].strip():
        raise RowError("user_text", "blank_text", "user_text is whitespace only")
    duration = rec.get("duration_s")
    if duration is not None and not (np.isfinite(duration) and duration >= 0):
        raise RowError("duration_s", "bad_duration", f"duration_s is {duration!r} (must be a finite number >= 0)")
    n = int(rec["n_chunks"])
    if mode == "online":
        chunks = rec["reply_chunk"] or []
        if len(chunks) != len(texts):
            raise RowError("reply_chunk", "bad_labels", f"{len(chunks)} reply chunks for {len(texts)} replies")
        if any(b <= a for a, b in zip(chunks, chunks[1:])):
            raise RowError("reply_chunk", "bad_labels", f"reply chunks {chunks} are not strictly ascending")
        if chunks and not (0 <= chunks[0] and chunks[-1] < n):
            raise RowError("reply_chunk", "bad_labels", f"reply chunks {chunks} outside the {n} chunks")
        if n <= 0:
            raise RowError("n_chunks", "no_audio", "an online session needs n_chunks > 0")
    else:
        if len(texts) != 1:
            raise RowError("reply_text", "bad_labels", f"an offline row has exactly one answer, got {len(texts)}")
        if n <= 0 and not rec["user_text"]:
            raise RowError("user_text", "missing", "an offline row needs audio (n_chunks > 0) or user_text")


class StreamingIndex(RowIndex):
    """Per-row metadata of every kept row across `paths` (n = kept rows), as numpy arrays: shard, group,
    row_in_group, row_in_file, group_id (n,) int32; task_mask (n,) uint8 over `task_order`; lengths (n, 2) int32
    exact sequence lengths (0 where the task is not served); n_chunks (n,) int32. Skipped rows: `skipped`."""

    task_order: tuple[str, ...] = MODES
    family = "streaming"

    def __init__(self, paths: Any, tokenizer: Any, tokens: MiniOmni3Tokens, system_ids: list[int], *,
                 max_len: int = 4096, strict: bool = False) -> None:
        self.files = expand_paths(paths)
        if not self.files:
            raise ValueError("StreamingIndex needs at least one parquet file")
        self.tokenizer, self.tok, self.max_len, self.strict = tokenizer, tokens, int(max_len), strict
        self.prefix_len = len(online_prefix(tokens, system_ids))
        assert self.prefix_len == len(offline_prefix(tokens, system_ids))
        self.skipped: list[Skipped] = []
        cols: dict[str, list[int]] = {k: [] for k in ("shard", "group", "row_in_group", "row_in_file", "group_id",
                                                      "task_mask", "n_chunks")}
        lengths: list[tuple[int, int]] = []
        group_base = 0
        for shard, path in enumerate(self.files):
            pf = self._open_shard(path)  # None: unreadable file, recorded (strict: ValueError naming it)
            if pf is None:
                continue
            validate_schema(pf.schema_arrow, path)
            row_in_file = 0
            for g in range(pf.num_row_groups):
                table = self._read_group(pf, path, g, row_in_file, list(LIGHT_COLUMNS))  # None: recorded
                if table is None:
                    row_in_file += pf.metadata.row_group(g).num_rows
                    continue
                recs = table.to_pylist()
                for r, rec in enumerate(recs):
                    length = self._length_or_skip(path, row_in_file + r, rec)
                    if length:
                        bit = MODES.index(rec["mode"])
                        for k, v in zip(cols, (shard, g, r, row_in_file + r, group_base + g, 1 << bit,
                                               rec["n_chunks"])):
                            cols[k].append(int(v))
                        lengths.append((length, 0) if bit == 0 else (0, length))
                row_in_file += len(recs)
            group_base += pf.num_row_groups
        for k, v in cols.items():
            setattr(self, k, np.asarray(v, dtype=np.uint8 if k == "task_mask" else np.int32))
        self.lengths = np.asarray(lengths, dtype=np.int32).reshape(-1, 2)
        self.n_groups = group_base

    def _length_or_skip(self, path: str, row: int, rec: dict[str, Any]) -> int:
        try:
            check_labels(rec)
            length = self.sequence_length(rec)
            if length > self.max_len:
                raise RowError("n_chunks", "too_long", f"sequence length {length} > max_len {self.max_len}"
                               + (" even with one chunk" if rec["mode"] == "online" else ""))
            self._claim_id(rec.get("id"), path, row)
            return length
        except RowError as err:
            if self.strict:
                raise ValueError(f"{path}: row {row} (id={rec.get('id')!r}), column {err.column!r}: {err.detail}") \
                    from err
            self.skipped.append(Skipped(path, row, str(rec.get("id")), err.column, err.reason, err.detail))
            return 0

    def sequence_length(self, rec: dict[str, Any]) -> int:
        """Exact laid-out length: prefix + per-chunk blocks + replies (online) or the offline turn."""
        texts = rec["reply_text"] or []
        n_text = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        if rec["mode"] == "online":
            n, replies = int(rec["n_chunks"]), dict(zip(rec["reply_chunk"] or [], n_text))
            keep = chunks_within(self.prefix_len, n, replies, self.max_len)
            return online_length(self.prefix_len, max(keep, 1), replies)  # > max_len when not even 1 fits
        frames = offline_frames(rec)
        audio = frames + 2 if frames > 0 else 0
        user = len(self.tokenizer(rec["user_text"], add_special_tokens=False)["input_ids"]) + 3 \
            if rec["user_text"] else 0
        return self.prefix_len + audio + user + 3 + n_text[0]



class StreamingDataset(RowGroupDataset):
    """Map-style dataset over a `StreamingIndex` (a `RowGroupDataset`); items are (row, task) keys from the batch
    sampler. Returns an example dict {id, task, sequence (layout.Sequence), mels (C, M, 40) | None,
    features (C, 10, E) | None, reply_text, speaker, file, row} or `Skipped`."""

    feature_columns = {"mels": "audio", "features": "features"}

    def __init__(self, index: StreamingIndex, system_ids: list[int], *, n_mels: int = 128,
                 cache_row_groups: int = 4, strict: bool = False) -> None:
        self.index, self.tok, self.tokenizer = index, index.tok, index.tokenizer
        self.system_ids, self.strict = list(system_ids), strict
        self.mel = LogMel(n_mels)
        self._init_cache(max(1, int(cache_row_groups)))

    def _row_ids(self, rec: dict[str, Any], path: str, row: int) -> tuple[Any, str]:
        return rec.get("id"), str(rec.get("id", "?"))  # strict errors name a row that cannot be read id=None

    def _row(self, i: int) -> dict[str, Any]:
        """Kept row `i` as a {column: value} dict, `features` as a (n,) float16 numpy array (or None) read straight
        from Arrow: as a Python list it was ~60x slower (~4 ms a session, most of the loader's time)."""
        table = self._row_group(int(self.index.shard[i]), int(self.index.group[i]))
        one = table.slice(int(self.index.row_in_group[i]), 1)
        if "features" not in one.column_names:
            return one.to_pylist()[0]
        rec = one.drop_columns(["features"]).to_pylist()[0]
        feats = one.column("features").combine_chunks()
        rec["features"] = None if feats.null_count else feats.flatten().to_numpy(zero_copy_only=False)
        return rec

    # -- one row -----------------------------------------------------------------------------------------------
    def example(self, rec: dict[str, Any]) -> dict[str, Any]:
        check_labels(rec)
        n = int(rec["n_chunks"])
        mels, feats = self.audio(rec, n) if n > 0 else (None, None)
        # online: chunks; offline: tower frames of the whole clip (mels (M, F) -> clip_frames)
        n_used = 0 if mels is None and feats is None else offline_frames(rec) if rec["mode"] == "offline" else n
        texts = list(rec["reply_text"] or [])
        emotions = list(rec["reply_emotion"] or [None] * len(texts))
        replies = [Reply(tuple(self.tokenize(t, "reply_text")), e or "normal") for t, e in zip(texts, emotions)]
        if rec["mode"] == "online":
            seq = online_sequence(self.tok, self.system_ids, n, dict(zip(rec["reply_chunk"] or [], replies)))
            if len(seq) > self.index.max_len:  # truncated, not skipped: drop tail chunks (and their replies)
                lens = {c: len(r.ids) for c, r in zip(rec["reply_chunk"] or [], replies)}
                keep = chunks_within(self.index.prefix_len, n, lens, self.index.max_len)
                seq = truncate_online(seq, keep)
                mels = mels[:keep] if mels is not None else None
                feats = feats[:keep] if feats is not None else None
        else:
            user = self.tokenize(rec["user_text"], "user_text") if rec["user_text"] else None
            seq = offline_sequence(self.tok, self.system_ids, list(replies[0].ids), n_used, user)
        return {"id": rec["id"], "task": rec["mode"], "sequence": seq, "mels": mels, "features": feats,
                "reply_text": texts, "speaker": rec.get("speaker")}

    def tokenize(self, text: str, column: str) -> list[int]:
        ids = encode_plain(self.tokenizer, text)
        if not ids:
            raise RowError(column, "empty_text", f"{column} {text!r} tokenizes to no tokens")
        try:
            self.tok.check_text_ids(ids, column)
        except ValueError as exc:
            raise RowError(column, "bad_text", str(exc)) from exc
        return ids

    def audio(self, rec: dict[str, Any], n: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Online -> (mels (C, M, 40), None) or (None, features (C, 10, E)), C = n. Offline -> (mels (M, F), None)
        of the whole clip (<= 20 s) or (None, features (N, E)), N = its whole-clip tower frames."""
        online = rec["mode"] == "online"
        if rec["features"] is not None:
            dim = int(rec["feature_dim"])
            arr = np.asarray(rec["features"], dtype=np.float32)
            frames = n * FRAMES_PER_CHUNK if online else offline_frames(rec)
            if dim <= 0 or arr.size != frames * dim:
                what = f"n_chunks * {FRAMES_PER_CHUNK}" if online else "clip_frames(duration_s)"
                raise RowError("features", "bad_features", f"{arr.size} values, expected {what} * feature_dim = "
                               f"{frames} * {dim}")
            arr = arr.reshape(frames, dim)
            return None, torch.from_numpy(arr.reshape(n, FRAMES_PER_CHUNK, dim) if online else arr)
        if not rec["audio"]:
            raise RowError("audio", "missing", f"n_chunks={n} but neither audio nor features is present")
        try:
            raw = decode_audio(rec["audio"], SAMPLE_RATE)
        except AudioDecodeError as exc:
            raise RowError("audio", exc.reason, str(exc)) from exc
        wav = pad_to_chunks(raw)
        got = len(wav) // CHUNK_SAMPLES
        if got > n:  # never cut to the declared length
            raise RowError("audio", "audio_longer_than_declared", f"the audio has {got} chunks but n_chunks is {n}")
        if got != n:
            raise RowError("n_chunks", "bad_labels", f"the audio has {got} chunks but n_chunks is {n}")
        if online:
            return self.mel.stream(wav), None
        clip = raw[:OFFLINE_MAX_SAMPLES]
        if clip_frames(len(clip)) != offline_frames(rec):
            raise RowError("duration_s", "bad_labels", f"duration_s={rec['duration_s']} gives "
                           f"{offline_frames(rec)} tower frames but the audio ({len(clip)} samples) gives "
                           f"{clip_frames(len(clip))}")
        return self.mel.clip(clip), None


def encode_system_prompt(tokenizer: Any, tok: MiniOmni3Tokens, text: str) -> list[int]:
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    tok.check_text_ids(ids, "system prompt")
    return ids

