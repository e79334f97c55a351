"""Mini-Omni's Hugging Face schema adapters (data/hf.py `HFSchema`; listed in omni/mini_omni/family.py `hf_schemas`).

- `voiceassistant`: VoiceAssistant-400K (columns split_name, index, round, question, question_audio, answer,
  answer_snac) -> Mini-Omni rows, the same mapping as `python -m data.mini_omni.prepare voiceassistant`
  (`va_id`, `parse_answer_snac`): id `va-{split_name}-{index}-{round}` (else `row-<n>`), question_text =
  question, question_audio = the encoded bytes as published, duration_s from the audio header, answer_text =
  answer, answer_codes / n_frames from answer_snac, source VoiceAssistant-400K.
- `omni`: our own schema (data/mini_omni/schema.py) as published, cast to its arrow types.

Rows stay 1:1 with the dataset; a bad value becomes what Mini-Omni's own checks record with the row's id: an
audio header that cannot be read -> duration_s NaN (`bad_duration`, its audio tasks dropped); an answer_snac that
does not parse -> answer_codes [] with n_frames = its '#' frame count (> 0), a `bad_codes` load-time skip naming
answer_codes (a string with no frame -> n_frames 0: its speech tasks are not offered).
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from data.audio import AudioDecodeError, audio_duration
from data.hf import HFSchema, audio_bytes
from data.mini_omni.prepare import VA_SOURCE, WRITE_SCHEMA, parse_answer_snac
from data.prepare import RowError

_VA_NEEDS = {
    "id": ("split_name", "index", "round"), "question_text": ("question",), "question_audio": ("question_audio",),
    "duration_s": ("question_audio",), "answer_text": ("answer",), "answer_codes": ("answer_snac",),
    "n_frames": ("answer_snac",),
}


def _frames(text: Any) -> int:
    return len([c for c in text.split("#") if c.strip()]) if isinstance(text, str) else 0


class VoiceAssistant(HFSchema):
    name = "voiceassistant"
    schema = WRITE_SCHEMA
    columns = ("question", "question_audio", "answer", "answer_snac")

    def needs(self, columns: list[str], available: list[str]) -> list[str]:
        out = [c for col in columns for c in _VA_NEEDS.get(col, ()) if c in available]
        return list(dict.fromkeys(out))

    def convert(self, table: pa.Table, columns: list[str], first_row: int) -> pa.Table:
        n = table.num_rows
        col = {c: table[c].to_pylist() for c in table.column_names}
        out: dict[str, list] = {}
        for name in columns:
            if name == "id":
                keys = [col.get(k) for k in ("split_name", "index", "round")]
                out[name] = ["va-" + "-".join(str(k[i]) for k in keys) if all(k is not None and k[i] is not None
                                                                                for k in keys)
                             else f"row-{first_row + i}" for i in range(n)]
            elif name == "question_text":
                out[name] = col["question"]
            elif name == "answer_text":
                out[name] = col["answer"]
            elif name == "question_audio":
                out[name] = [audio_bytes(v) for v in col["question_audio"]]
            elif name == "duration_s":
                out[name] = [_duration(v) for v in col["question_audio"]]
            elif name == "answer_codes":
                out[name] = [_codes(v) for v in col["answer_snac"]]
            elif name == "n_frames":
                out[name] = [_frames(v) for v in col["answer_snac"]]
            elif name == "source":
                out[name] = [VA_SOURCE] * n
            else:  # task, speaker, image: not in the published schema
                out[name] = [None] * n
        return pa.table({c: pa.array(out[c], type=self.schema.field(c).type) for c in columns})


def _duration(value: Any) -> float:
    data = audio_bytes(value)
    if data is None:
        return 0.0
    try:
        return float(audio_duration(data))
    except (AudioDecodeError, RuntimeError, ValueError):
        return float("nan")  # recorded by the index as bad_duration with the row's id


def _codes(text: Any) -> list[int] | None:
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return parse_answer_snac(text)
    except RowError:
        return []  # n_frames > 0 with no codes: a bad_codes skip naming answer_codes when the row is loaded


class Ours(HFSchema):
    name = "omni"
    schema = WRITE_SCHEMA
    columns = ("id", "duration_s", "n_frames", "answer_codes")

    def convert(self, table: pa.Table, columns: list[str], first_row: int) -> pa.Table:
        out = {}
        for name in columns:
            field = self.schema.field(name)
            if name not in table.column_names:
                if not field.nullable:
                    raise ValueError(f"row {first_row}...: missing column {name!r} (expected {field.type})")
                out[name] = pa.nulls(table.num_rows, type=field.type)
            else:
                out[name] = table[name].cast(field.type)
        return pa.table(out)


SCHEMAS = {"voiceassistant": VoiceAssistant(), "omni": Ours()}
