"""MiniMind-O's Hugging Face schema adapter (data/hf.py `HFSchema`; listed in omni/minimind_o/family.py
`hf_schemas`): the released parquet schema (data/minimind_o/schema.py; `conversations` required, the other columns
optional) is the family's own, so rows pass through as published. An `image_bytes` / `question_audios` cell that
`datasets` holds as an Image / Audio struct ({bytes, path}) is read as its bytes. Bad values are recorded by
MiniMind-O's own index with the row's id (default id `<split>:<row>`)."""
from __future__ import annotations

import pyarrow as pa

from data.hf import HFSchema, audio_bytes
from data.minimind_o.schema import WRITE_SCHEMA


def _bytes_column(col: pa.ChunkedArray, listed: bool) -> pa.Array:
    values = col.to_pylist()
    if listed:
        return pa.array([None if v is None else [audio_bytes(x) for x in v] for v in values],
                        type=pa.list_(pa.binary()))
    return pa.array([audio_bytes(v) for v in values], type=pa.binary())


class Released(HFSchema):
    name = "minimind_o"
    columns = ("conversations",)

    def __init__(self) -> None:
        self.schema = WRITE_SCHEMA

    def convert(self, table: pa.Table, columns: list[str], first_row: int) -> pa.Table:
        out = {}
        for name in columns:
            if name not in table.column_names:
                out[name] = pa.nulls(table.num_rows, type=self.schema.field(name).type)
                continue
            col = table[name]
            t = col.type
            if name == "image_bytes" and pa.types.is_struct(t):
                col = _bytes_column(col, listed=False)
            elif name in ("question_audios", "image_bytes") and pa.types.is_list(t) and pa.types.is_struct(t.value_type):
                col = _bytes_column(col, listed=True)
            out[name] = col
        return pa.table(out)


SCHEMAS = {"minimind_o": Released()}
