"""The parquet schema every prepared data set uses (the one source of truth).

One row is one example: a question (audio and/or text) and an answer (text and/or SNAC codes).

| column         | arrow type          | meaning                                                                  |
|----------------|---------------------|--------------------------------------------------------------------------|
| id             | string              | unique row id                                                            |
| task           | string, nullable    | restrict the row to one task; null = every task its fields allow         |
| question_text  | string, nullable    | transcript of question_audio, or the text prompt                         |
| question_audio | binary, nullable    | encoded audio file bytes (wav/flac/ogg), any sample rate / channels      |
| duration_s     | float32             | question audio duration in seconds (0.0 when no audio)                   |
| answer_text    | string, nullable    | answer (or TTS text)                                                     |
| answer_codes   | list<int32>, nullable | SNAC codes, frame-major, 7 per frame in the spec's stream order        |
| n_frames       | int32               | number of answer SNAC frames (0 when none)                               |
| speaker        | string, nullable    | voice id of the question audio                                           |
| source         | string, nullable    | provenance                                                               |
| image          | binary, nullable    | OPTIONAL column (Mini-Omni2): encoded image bytes (png / jpeg / ...)     |

`answer_codes` holds `n_frames * 7` ints: frame t is
[L0[t], L1[2t], L2[4t], L2[4t+1], L1[2t+1], L2[4t+2], L2[4t+3]] (see omni/mini_omni/layout.py `snac_to_frames`).

Tasks and the fields they need (`TASK_REQUIREMENTS`): a row serves every task whose fields are all present,
or only its `task` when that column is set.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("question_text", pa.string()),
        pa.field("question_audio", pa.binary()),
        pa.field("duration_s", pa.float32(), nullable=False),
        pa.field("answer_text", pa.string()),
        pa.field("answer_codes", pa.list_(pa.int32())),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("speaker", pa.string()),
        pa.field("source", pa.string()),
    ]
)

# Columns a shard may omit; when present they must have these types.
OPTIONAL_SCHEMA: pa.Schema = pa.schema([pa.field("image", pa.binary())])

CODES_PER_FRAME = 7

TASK_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "asr": ("question_audio", "question_text"),
    "a1t2": ("question_audio", "answer_text"),
    "a1a2": ("question_audio", "answer_text", "answer_codes"),
    "t1t2": ("question_text", "answer_text"),
    "t1a2": ("question_text", "answer_text", "answer_codes"),
    "tts": ("answer_text", "answer_codes"),
    # Mini-Omni2 image input (the image tasks need the optional `image` column)
    "image_a1t2": ("image", "question_audio", "answer_text"),
    "image_a1a2": ("image", "question_audio", "answer_text", "answer_codes"),
    "caption": ("image", "answer_text"),
}


def _present(has_audio: bool, has_qtext: bool, has_atext: bool, has_codes: bool, has_image: bool) -> dict[str, bool]:
    """Field name -> present, for the TASK_REQUIREMENTS fields."""
    return {"question_audio": has_audio, "question_text": has_qtext, "answer_text": has_atext,
            "answer_codes": has_codes, "image": has_image}


def eligible_tasks(task: str | None, has_audio: bool, has_qtext: bool, has_atext: bool, has_codes: bool,
                   has_image: bool = False) -> list[str]:
    """Tasks a row can serve: all tasks whose required fields are present, restricted to `task` when set.

    Returns them in `TASK_REQUIREMENTS` order; [] when none fits. Raises ValueError for an unknown `task`.
    """
    if task is not None and task not in TASK_REQUIREMENTS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {sorted(TASK_REQUIREMENTS)}")
    present = _present(has_audio, has_qtext, has_atext, has_codes, has_image)
    candidates = [task] if task is not None else list(TASK_REQUIREMENTS)
    return [t for t in candidates if all(present[f] for f in TASK_REQUIREMENTS[t])]


def missing_fields(task: str, has_audio: bool, has_qtext: bool, has_atext: bool, has_codes: bool,
                   has_image: bool = False) -> list[str]:
    """The fields `task` needs that the row lacks (for error messages)."""
    present = _present(has_audio, has_qtext, has_atext, has_codes, has_image)
    return [f for f in TASK_REQUIREMENTS[task] if not present[f]]


def validate_table(table: pa.Table | pa.Schema, path: str) -> None:
    """Check that `table` (or a schema) has every SCHEMA column with the right arrow type.

    Extra columns are allowed; OPTIONAL_SCHEMA columns may be absent. Raises ValueError naming `path` and the
    missing or mistyped column.
    """
    schema = table if isinstance(table, pa.Schema) else table.schema
    for field in (*SCHEMA, *OPTIONAL_SCHEMA):
        idx = schema.get_field_index(field.name)
        if idx < 0 and field.name in OPTIONAL_SCHEMA.names:
            continue
        if idx < 0:
            raise ValueError(f"{path}: missing column {field.name!r} (expected {field.type})")
        got = schema.field(idx).type
        if not got.equals(field.type):
            raise ValueError(f"{path}: column {field.name!r} has type {got}, expected {field.type}")
