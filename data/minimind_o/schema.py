"""The released MiniMind-O parquet schema (sft_t2a / sft_a2a / sft_i2t files), read as is. Any column may be
absent except `conversations`; extra columns are ignored.

| column          | arrow type                  | meaning                                                           |
|-----------------|-----------------------------|-------------------------------------------------------------------|
| conversations   | string (JSON text)          | [{role: system/user/assistant, content}]; I2T user content holds  |
|                 |                             | the literal `<image>`                                             |
| answer_audios   | list<list<int>>             | one entry per assistant turn: Mimi codes flattened frame-major    |
|                 |                             | [f0c0..f0c7, f1c0..]; values 0..2047; a partial frame is dropped  |
| ref_audios      | list<int>                   | reference-voice clip, flattened the same way                      |
| spk_emb         | list<float> (192)           | speaker embedding (CAM++ in the release, not normalised)          |
| question_audios | list<binary>                | A2A: encoded audio file bytes, one per user turn                  |
| image_bytes     | binary or list<binary>      | I2T: encoded image bytes; the first image is used                 |
| id              | string (ours, optional)     | row id; default `<file stem>:<row>`                               |

Tasks (the row's columns decide): `a2a` = question_audios present; `i2t` = image_bytes present; `t2a` = text
question with answer audio for the last assistant turn. Only the last assistant turn is a target.
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

TASKS: tuple[str, ...] = ("t2a", "a2a", "i2t")  # bit i of an index task mask = TASKS[i]
COLUMNS: tuple[str, ...] = ("conversations", "answer_audios", "ref_audios", "spk_emb", "question_audios",
                            "image_bytes", "id")

# What data/minimind_o/prepare.py writes (the released types, int32 codes / float32 embeddings)
WRITE_SCHEMA: pa.Schema = pa.schema([
    pa.field("id", pa.string()),
    pa.field("conversations", pa.string()),
    pa.field("answer_audios", pa.list_(pa.list_(pa.int32()))),
    pa.field("ref_audios", pa.list_(pa.int32())),
    pa.field("spk_emb", pa.list_(pa.float32())),
    pa.field("question_audios", pa.list_(pa.binary())),
    pa.field("image_bytes", pa.binary()),
])


def _is_list_of(t: pa.DataType, pred) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pred(t.value_type)


def _binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


CHECKS = {
    "conversations": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string (JSON text)"),
    "answer_audios": (lambda t: _is_list_of(t, lambda v: _is_list_of(v, pa.types.is_integer)), "list<list<int>>"),
    "ref_audios": (lambda t: _is_list_of(t, pa.types.is_integer), "list<int>"),
    "spk_emb": (lambda t: _is_list_of(t, pa.types.is_floating), "list<float>"),
    "question_audios": (lambda t: _is_list_of(t, _binary), "list<binary>"),
    "image_bytes": (lambda t: _binary(t) or _is_list_of(t, _binary), "binary or list<binary>"),
    "id": (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string"),
}


def validate_schema(schema: pa.Schema, path: str) -> list[str]:
    """The schema columns present in a file (conversations required; present columns must have the released
    types). Raises ValueError naming the file and the column."""
    if schema.get_field_index("conversations") < 0:
        raise ValueError(f"{path}: missing column 'conversations' (string holding JSON); "
                         "see data/minimind_o/schema.py")
    present = []
    for name in COLUMNS:
        idx = schema.get_field_index(name)
        if idx < 0:
            continue
        ok, want = CHECKS[name]
        if not ok(schema.field(idx).type):
            raise ValueError(f"{path}: column {name!r} has type {schema.field(idx).type}, expected {want}")
        present.append(name)
    return present


def parse_conversation(text: Any) -> list[dict]:
    """JSON text -> [{role, content}], checked (raises ValueError with the reason)."""
    if not text:
        raise ValueError("conversations is empty")
    try:
        msgs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"conversations is not valid JSON: {exc}") from exc
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("conversations must be a non-empty JSON list of {role, content} objects")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise ValueError(f"conversations[{i}] is not a {{role: system/user/assistant, content: str}} object")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError("conversations has no assistant turn")
    return msgs


def first_image(value: Any) -> bytes | None:
    """image_bytes cell (binary or list<binary>) -> the first image's bytes, or None."""
    if isinstance(value, (list, tuple)):
        value = next((v for v in value if v), None)
    return value or None
