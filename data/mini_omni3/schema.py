"""The parquet schema of streaming (Mini-Omni3) data: one row = one online session or one offline turn.

| column        | arrow type              | meaning                                                                 |
|---------------|-------------------------|-------------------------------------------------------------------------|
| id            | string                  | unique row id                                                           |
| mode          | string                  | "online" (a streaming session) or "offline" (one turn)                  |
| audio         | binary, nullable        | encoded audio file bytes (wav/flac/ogg), any rate / channels            |
| features      | list<float16>, nullable | precomputed tower frames: online n_chunks * 10 * feature_dim (chunk-    |
|               |                         | major); offline clip_frames(duration_s) * feature_dim (one whole-clip   |
|               |                         | tower call, omni.mini_omni3.encoder.clip_frames: 57 for 2.3 s)          |
| feature_dim   | int32                   | width of `features` (0 when absent)                                     |
| n_chunks      | int32                   | 0.4 s chunks of the audio zero-padded to a multiple of 6400 samples     |
| duration_s    | float32                 | audio duration in seconds (offline: sets the AUDIO_PAD count, checked)  |
| reply_chunk   | list<int32>, nullable   | online: chunk index of each reply (ascending, distinct); offline: null  |
| reply_text    | list<string>, nullable  | online: the replies (may be empty: nothing needs an answer); offline:   |
|               |                         | exactly one answer                                                      |
| reply_emotion | list<string>, nullable  | emotion names aligned with reply_text (null entries / column: normal)  |
| user_text     | string, nullable        | offline: the [USER TEXT_BEGIN ... TEXT_END] text part                   |
| turn_kind     | list<string>, nullable  | provenance: kind of each turn (question, statement, ambient, alarm, ...) |
| turn_end_s    | list<float32>, nullable | provenance: when each turn's audio ends (s)                             |
| speaker       | string, nullable        | voice id of the user audio                                              |
| source        | string, nullable        | provenance                                                              |

A row needs `audio` or `features` (offline rows may instead have only `user_text`). When both are present,
`features` is used (it must then match the model's tower). Offline audio is capped at 20 s (50 chunks).
"""
from __future__ import annotations

import pyarrow as pa

MODES: tuple[str, ...] = ("online", "offline")

SCHEMA: pa.Schema = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),
    pa.field("audio", pa.binary()),
    pa.field("features", pa.list_(pa.float16())),
    pa.field("feature_dim", pa.int32(), nullable=False),
    pa.field("n_chunks", pa.int32(), nullable=False),
    pa.field("duration_s", pa.float32(), nullable=False),
    pa.field("reply_chunk", pa.list_(pa.int32())),
    pa.field("reply_text", pa.list_(pa.string())),
    pa.field("reply_emotion", pa.list_(pa.string())),
    pa.field("user_text", pa.string()),
    pa.field("turn_kind", pa.list_(pa.string())),
    pa.field("turn_end_s", pa.list_(pa.float32())),
    pa.field("speaker", pa.string()),
    pa.field("source", pa.string()),
])
REQUIRED: tuple[str, ...] = ("id", "mode", "audio", "features", "feature_dim", "n_chunks", "duration_s",
                             "reply_chunk", "reply_text", "reply_emotion", "user_text")
LIGHT_COLUMNS: tuple[str, ...] = ("id", "mode", "feature_dim", "n_chunks", "duration_s", "reply_chunk",
                                  "reply_text", "reply_emotion", "user_text")


def validate_schema(schema: pa.Schema, path: str) -> None:
    """Every REQUIRED column present with its SCHEMA type (provenance columns optional, extra columns allowed);
    raises ValueError naming the file and the column."""
    for name in REQUIRED:
        want = SCHEMA.field(name).type
        idx = schema.get_field_index(name)
        if idx < 0:
            raise ValueError(f"{path}: missing column {name!r} (expected {want}); see data/mini_omni3/schema.py")
        got = schema.field(idx).type
        if not got.equals(want):
            raise ValueError(f"{path}: column {name!r} has type {got}, expected {want}")


def empty_row(**values) -> dict:
    """A full row dict with every SCHEMA column (None / 0 defaults) updated by `values`; unknown keys fail."""
    unknown = sorted(set(values) - set(SCHEMA.names))
    if unknown:
        raise ValueError(f"unknown streaming column(s) {unknown}; valid: {SCHEMA.names}")
    row = {name: None for name in SCHEMA.names}
    row.update(feature_dim=0, n_chunks=0, duration_s=0.0)
    row.update(values)
    return row
