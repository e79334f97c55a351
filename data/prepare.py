"""What every family's data preparation shares: parquet shard writing (`ShardWriter`: atomic, row-grouped, zstd),
the manifest loop (`write_manifest`: JSONL / TSV records -> rows, duplicate ids and bad rows skipped and reported in
OUT/skipped.json, or --strict stopping naming file, line and field), file readers (question audio as FLAC 16 kHz
mono, images checked to decode) and parquet input listing. The families' preparation CLIs live in
data/<family>/prepare.py (Mini-Omni: `python -m data.mini_omni.prepare`, the `omni-data` script)."""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from data.audio import AudioDecodeError, decode_audio, encode_flac

QUESTION_SR = 16000


class PrepareError(ValueError):
    """A bad input row under --strict (message names the file, line/row and field)."""


class RowError(ValueError):
    """A bad input row: `field` is the offending manifest field / column, `reason` says what is wrong."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class ShardWriter:
    """Writes schema rows to OUT/shard-NNNNN.parquet, `shard_rows` rows per file, `row_group_rows` per row group.

    Use as a context manager; `add(row)` takes a dict with the SCHEMA columns. Shards are written to hidden temp
    files in OUT (`.shard-NNNNN.parquet.tmp-*`, same filesystem) and only `close()` (a run that got to its end)
    renames them into place and then removes stale shard files of an earlier run; leaving the `with` block on an
    exception (`abort()`) deletes the temp files and leaves OUT as it was. An input with no rows still yields one
    empty (schema-only) shard."""

    def __init__(self, out_dir: str, shard_rows: int = 500, row_group_rows: int = 64, compression: str = "zstd",
                 *, schema: pa.Schema):
        if shard_rows < 1 or row_group_rows < 1:
            raise ValueError(f"shard_rows and row_group_rows must be >= 1, got {shard_rows}, {row_group_rows}")
        self.out_dir = out_dir
        self.shard_rows = shard_rows
        self.row_group_rows = min(row_group_rows, shard_rows)
        self.compression = compression
        self.schema = schema  # the family's write schema
        self.paths: list[str] = []
        self.n_rows = 0
        self._buffer: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        self._temps: list[str] = []
        self._tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._done = False
        os.makedirs(out_dir, exist_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def add(self, row: dict) -> None:
        """Queue one row; flushes a row group when full and rolls to a new shard at `shard_rows`."""
        self._buffer.append(row)
        self.n_rows += 1
        room = self.shard_rows - self._rows_in_shard
        if len(self._buffer) >= min(self.row_group_rows, room):
            self._flush()

    def _open_shard(self) -> pq.ParquetWriter:
        name = f"shard-{len(self.paths):05d}.parquet"
        self.paths.append(os.path.join(self.out_dir, name))
        self._temps.append(os.path.join(self.out_dir, f".{name}{self._tag}"))
        self._rows_in_shard = 0
        return pq.ParquetWriter(self._temps[-1], self.schema, compression=self.compression)

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._writer = self._open_shard()
        table = pa.Table.from_pylist(self._buffer, schema=self.schema)
        self._writer.write_table(table, row_group_size=len(self._buffer))
        self._rows_in_shard += len(self._buffer)
        self._buffer = []
        if self._rows_in_shard >= self.shard_rows:
            self._writer.close()
            self._writer = None
            self._rows_in_shard = 0

    def close(self) -> list[str]:
        """Flush, close and commit: each temp shard is flushed to disk and renamed to its shard-NNNNN.parquet
        name, then shard files of an earlier run that this one did not write are removed. Returns the shard
        paths."""
        if self._done:
            return list(self.paths)
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.paths:  # keep OUT a valid (empty) data set
            self._open_shard().close()
        for temp, path in zip(self._temps, self.paths):
            _fsync(temp)
            os.replace(temp, path)
        for stale in set(glob.glob(os.path.join(self.out_dir, "shard-*.parquet"))) - set(self.paths):
            os.remove(stale)
        _fsync_dir(self.out_dir)
        self._done = True
        return list(self.paths)

    def abort(self) -> None:
        """Drop what this writer wrote (its temp files); existing shards in OUT are left as they were."""
        if self._done:
            return
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the temp file is deleted below anyway
                pass
            self._writer = None
        for temp in self._temps:
            if os.path.exists(temp):
                os.remove(temp)
        self._done = True


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        _fsync(path)
    except OSError:  # some filesystems cannot fsync a directory
        pass


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder renamed over it (never a partial file)."""
    temp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(temp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


@dataclass
class Report:
    """What a preparation run did; `skipped` entries: {id, line|row, file, field, reason}."""

    source: str
    n_written: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "n_written": self.n_written,
            "n_skipped": len(self.skipped),
            "shards": [os.path.basename(p) for p in self.shards],
            "skipped": self.skipped,
        }


def write_report(out_dir: str, report: Report) -> str:
    """Write OUT/skipped.json and print a summary (skipped ids with their reasons) to stderr."""
    path = os.path.join(out_dir, "skipped.json")
    write_atomic(path, json.dumps(report.to_json(), indent=2))
    print(f"[prepare] {report.source}: wrote {report.n_written} rows in {len(report.shards)} shard(s) to "
          f"{out_dir}; skipped {len(report.skipped)}", file=sys.stderr)
    for s in report.skipped:
        where = f"line {s['line']}" if "line" in s else f"row {s.get('row')}"
        print(f"  skipped {s.get('id')!r} ({where}, {s['field']}): {s['reason']}", file=sys.stderr)
    return path


def _text(value: Any) -> str | None:
    """Manifest value -> stripped string, or None when absent/empty."""
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def iter_manifest(path: str) -> Iterator[tuple[int, dict | RowError]]:
    """Yield (line number, record) for each data line of a .jsonl or .tsv manifest (1-based line numbers;
    a TSV's header is line 1). A line that does not parse yields a RowError instead of a record."""
    if path.endswith(".tsv"):
        yield from _iter_tsv(path)
    elif path.endswith((".jsonl", ".json")):
        yield from _iter_jsonl(path)
    else:
        raise ValueError(f"manifest {path!r}: expected a .jsonl or .tsv file")


def _iter_jsonl(path: str) -> Iterator[tuple[int, dict | RowError]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, RowError("(line)", f"invalid JSON: {exc}")
                continue
            yield line_no, rec if isinstance(rec, dict) else RowError("(line)", "a JSONL line must be an object")


def _iter_tsv(path: str) -> Iterator[tuple[int, dict | RowError]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        for line_no, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                yield line_no, RowError("(line)", f"{len(cells)} cells but {len(header)} header columns")
                continue
            yield line_no, dict(zip(header, cells))


def _resolve(audio_root: str, rel: str, field_name: str) -> str:
    path = rel if os.path.isabs(rel) else os.path.join(audio_root, rel)
    if not os.path.isfile(path):
        raise RowError(field_name, f"file not found: {path}")
    return path


def _read_file(path: str, field_name: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise RowError(field_name, f"empty file: {path}")
    return data


def question_audio_flac(path: str, field_name: str = "question_audio") -> tuple[bytes, float]:
    """Audio file -> (FLAC 16 kHz mono bytes, duration in seconds)."""
    try:
        wav = decode_audio(_read_file(path, field_name), QUESTION_SR)
    except AudioDecodeError as exc:
        raise RowError(field_name, f"{path}: {exc}") from exc
    return encode_flac(wav, QUESTION_SR), wav.shape[0] / QUESTION_SR


def image_bytes(path: str) -> bytes:
    """An image file's bytes, checked to decode (Pillow) so a bad image fails here, naming the file."""
    import io

    from PIL import Image, UnidentifiedImageError

    data = _read_file(path, "image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError) as exc:
        raise RowError("image", f"{path}: not a readable image ({exc})") from exc
    return data


def _handle_bad(report: Report, strict: bool, where: str, loc: dict, rid: Any, err: RowError) -> None:
    """Record a bad row, or raise PrepareError under --strict."""
    if strict:
        raise PrepareError(f"{where}: field {err.field!r}: {err.reason}") from err
    report.skipped.append({"id": rid, **loc, "field": err.field, "reason": err.reason})


def write_manifest(manifest: str, out: str, to_row: Callable[[dict, int], dict], *, shard_rows: int = 500,
                   row_group_rows: int = 64, strict: bool = False, schema: pa.Schema) -> Report:
    """The manifest loop every family's preparation shares: each record -> `to_row(record, line_no)` (RowError for
    a bad one); duplicate ids are rejected; bad rows are skipped and counted (strict: the first one stops the run
    naming manifest, line and field). Writes OUT/shard-*.parquet (the family's `schema`) + skipped.json."""
    report = Report(source=manifest)
    seen: set[str] = set()
    with ShardWriter(out, shard_rows, row_group_rows, schema=schema) as writer:
        for line_no, rec in iter_manifest(manifest):
            where, loc = f"{manifest}:{line_no}", {"line": line_no}
            rid = rec.get("id") if isinstance(rec, dict) else None
            try:
                if isinstance(rec, RowError):
                    raise rec
                row = to_row(rec, line_no)
                if row["id"] in seen:
                    raise RowError("id", f"duplicate id {row['id']!r}")
            except RowError as err:
                _handle_bad(report, strict, where, loc, rid, err)
                continue
            except Exception as exc:  # not a known bad-row case: stop, naming the line (existing output kept)
                raise PrepareError(f"{where}: {type(exc).__name__}: {exc}") from exc
            seen.add(row["id"])
            writer.add(row)
        report.shards = writer.close()
        report.n_written = writer.n_rows
    write_report(out, report)
    return report


def list_parquet(inputs: list[str]) -> list[str]:
    """Files and folders (searched recursively for *.parquet) -> sorted, de-duplicated parquet paths."""
    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            files.extend(glob.glob(os.path.join(item, "**", "*.parquet"), recursive=True))
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if not files:
        raise FileNotFoundError(f"no parquet files in {inputs}")
    return sorted(dict.fromkeys(os.path.abspath(f) for f in files))


def iter_parquet_records(path: str, columns: list[str], batch_rows: int) -> Iterator[tuple[int, dict]]:
    """Stream (row index, record dict) from one parquet file, one record batch at a time."""
    pf = pq.ParquetFile(path)
    row_idx = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        for rec in batch.to_pylist():
            yield row_idx, rec
            row_idx += 1


def _add_shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for shard-*.parquet and skipped.json")
    p.add_argument("--shard-rows", type=int, default=500, help="rows per parquet file")
    p.add_argument("--row-group-rows", type=int, default=64, help="rows per parquet row group")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
