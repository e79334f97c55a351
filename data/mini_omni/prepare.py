"""Mini-Omni data preparation: build parquet shards in Mini-Omni's schema (data/mini_omni/schema.py) with the
shared shard writer (data/prepare.py).

Subcommands (`python -m data.mini_omni.prepare SUBCOMMAND ...`, or the `omni-data` script):

manifest
    A JSONL or TSV manifest plus an audio folder -> shards. Manifest fields (all optional but `id` recommended):
    id, task, question_text, question_audio (path relative to --audio-root), answer_text,
    answer_audio (path of the spoken answer; converted to SNAC codes at the codec rate), speaker, source,
    image (path of an image file, stored as its encoded bytes; Mini-Omni2 image tasks).
    Question audio of any rate / channel count is stored as FLAC 16 kHz mono bytes. Bad rows (missing or
    undecodable audio, unknown task, a row no task can use, duplicate id) are skipped, counted, printed and
    listed in OUT/skipped.json; with --strict the first one stops the run with an error naming the manifest,
    its line number and the field.

    python -m data.mini_omni.prepare manifest --manifest m.jsonl --audio-root wavs/ --out data/my_set/train \
        --codec /models/snac_24khz            # real SNAC weights (folder with config.json + pytorch_model.bin)

voiceassistant
    VoiceAssistant-400K parquet files (columns split_name, index, round, question, question_audio, answer,
    answer_snac) -> shards. `question_audio` may be an HF Audio struct {bytes, path} or raw binary.
    `answer_snac` is a string of frames, each introduced by '#' and holding the 7 codes of one SNAC coarse step
    in the spec's stream order, separated by spaces ("# c0 c1 c2 c3 c4 c5 c6 # c0 ..."; the layout read by
    SLAM-LLM's `get_snac_answer_token` and written by Mini-Omni's `reconscruct_snac`). Input files are streamed
    one record batch at a time.

    python -m data.mini_omni.prepare voiceassistant --input /data/VoiceAssistant-400K/data --out data/va400k

Output: OUT/shard-00000.parquet, OUT/shard-00001.parquet, ... (--shard-rows rows each, row groups of
--row-group-rows rows, zstd), and OUT/skipped.json. Existing shard-*.parquet files in OUT are replaced only when
the run succeeds: shards are written to hidden temp files in OUT and renamed into place at the end (a failed or
interrupted run, or --strict stopping at a bad row, leaves the existing output as it was). A wav that does not decode
or holds NaN / inf samples is a bad row like any other (skipped with its manifest line and field; --strict stops).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data.audio import AudioDecodeError, audio_duration, decode_audio, encode_flac
from data.mini_omni.schema import CODES_PER_FRAME, OPTIONAL_SCHEMA, SCHEMA, TASK_REQUIREMENTS, eligible_tasks
from data.mini_omni.schema import missing_fields
from data.prepare import (
    QUESTION_SR, PrepareError, Report, RowError, ShardWriter, _add_shard_args, _handle_bad, _read_file, _resolve,
    _text, image_bytes, iter_parquet_records, list_parquet, question_audio_flac, write_manifest, write_report,
)

SNAC_CODEBOOK = 4096
MANIFEST_FIELDS = (
    "id", "task", "question_text", "question_audio", "answer_text", "answer_audio", "speaker", "source",
)
VA_SOURCE = "VoiceAssistant-400K"
VA_COLUMNS = ("question", "answer", "answer_snac")
VA_OPTIONAL_COLUMNS = ("split_name", "index", "round", "question_audio")


WRITE_SCHEMA = pa.schema([*SCHEMA, *OPTIONAL_SCHEMA])  # shards always carry the optional columns


def make_row(
    *,
    id: str,
    task: str | None = None,
    question_text: str | None = None,
    question_audio: bytes | None = None,
    duration_s: float = 0.0,
    answer_text: str | None = None,
    answer_codes: list[int] | None = None,
    speaker: str | None = None,
    source: str | None = None,
    image: bytes | None = None,
) -> dict:
    """A SCHEMA row dict; checks that some task can use it (RowError otherwise)."""
    if answer_codes is not None and len(answer_codes) % CODES_PER_FRAME:
        raise RowError("answer_codes", f"{len(answer_codes)} codes is not a multiple of {CODES_PER_FRAME}")
    has = dict(
        has_audio=question_audio is not None,
        has_qtext=question_text is not None,
        has_atext=answer_text is not None,
        has_codes=answer_codes is not None,
        has_image=image is not None,
    )
    if task is not None and task not in TASK_REQUIREMENTS:
        raise RowError("task", f"unknown task {task!r}; valid tasks: {sorted(TASK_REQUIREMENTS)}")
    if not eligible_tasks(task, **has):
        if task is not None:
            raise RowError("task", f"task {task!r} needs missing field(s) {missing_fields(task, **has)}")
        raise RowError("(row)", "no task can use this row (empty or lacking fields)")
    return dict(
        id=id,
        task=task,
        question_text=question_text,
        question_audio=question_audio,
        duration_s=float(duration_s),
        answer_text=answer_text,
        answer_codes=None if answer_codes is None else [int(c) for c in answer_codes],
        n_frames=0 if answer_codes is None else len(answer_codes) // CODES_PER_FRAME,
        speaker=speaker,
        source=source,
        image=image,
    )


# --------------------------------------------------------------------------------------------- manifest


class AnswerEncoder:
    """Answer speech file -> flat SNAC codes (N * 7 ints). Loads the codec on first use and caches codes per
    file path (many rows share one spoken answer)."""

    def __init__(self, codec_path: str | None, codec_arch: str, seed: int = 0):
        self.codec_path, self.codec_arch, self.seed = codec_path, codec_arch, seed
        self._codec = None
        self._cache: dict[str, list[int]] = {}

    def codec(self):
        if self._codec is None:
            from data.mini_omni.codec import load_codec  # torch/snac import only when answers need encoding

            self._codec = load_codec(self.codec_path, arch=self.codec_arch, seed=self.seed)
        return self._codec

    def __call__(self, path: str, field_name: str = "answer_audio") -> list[int]:
        key = os.path.abspath(path)
        if key not in self._cache:
            from data.mini_omni.codec import codec_sample_rate, encode_frames

            codec = self.codec()
            try:
                wav = decode_audio(_read_file(path, field_name), codec_sample_rate(codec))
            except AudioDecodeError as exc:
                raise RowError(field_name, f"{path}: {exc}") from exc
            self._cache[key] = encode_frames(codec, wav).reshape(-1).tolist()
        return self._cache[key]


def manifest_row(rec: dict, line_no: int, manifest: str, audio_root: str, encode_answer: AnswerEncoder) -> dict:
    """One manifest record -> SCHEMA row. Raises RowError(field, reason) for a bad record."""
    rid = _text(rec.get("id")) or f"{os.path.splitext(os.path.basename(manifest))[0]}-{line_no}"
    q_audio, duration = None, 0.0
    if _text(rec.get("question_audio")):
        q_audio, duration = question_audio_flac(_resolve(audio_root, _text(rec["question_audio"]), "question_audio"))
    codes = None
    if _text(rec.get("answer_audio")):
        codes = encode_answer(_resolve(audio_root, _text(rec["answer_audio"]), "answer_audio"))
    return make_row(
        id=rid,
        task=_text(rec.get("task")),
        question_text=_text(rec.get("question_text")),
        question_audio=q_audio,
        duration_s=duration,
        answer_text=_text(rec.get("answer_text")),
        answer_codes=codes,
        speaker=_text(rec.get("speaker")),
        source=_text(rec.get("source")),
        image=image_bytes(_resolve(audio_root, _text(rec["image"]), "image")) if _text(rec.get("image")) else None,
    )


def prepare_manifest(
    manifest: str,
    audio_root: str,
    out: str,
    codec: str | None = None,
    codec_arch: str = "snac_24khz",
    codec_seed: int = 0,
    shard_rows: int = 500,
    row_group_rows: int = 64,
    strict: bool = False,
) -> Report:
    """Manifest (+ audio folder) -> OUT/shard-*.parquet and OUT/skipped.json. See the module docstring."""
    encode_answer = AnswerEncoder(codec, codec_arch, codec_seed)
    return write_manifest(manifest, out, lambda rec, line_no: manifest_row(rec, line_no, manifest, audio_root,
                                                                           encode_answer),
                          shard_rows=shard_rows, row_group_rows=row_group_rows, strict=strict, schema=WRITE_SCHEMA)


# --------------------------------------------------------------------------------------------- VoiceAssistant


def parse_answer_snac(text: Any) -> list[int]:
    """VoiceAssistant `answer_snac` string -> flat frame-major codes (N * 7 ints, spec stream order).

    Frames are '#'-separated; each holds 7 whitespace-separated ints in [0, 4096). Raises RowError."""
    if not isinstance(text, str) or not text.strip():
        raise RowError("answer_snac", "empty or missing")
    codes: list[int] = []
    chunks = [c for c in text.split("#") if c.strip()]
    if not chunks:
        raise RowError("answer_snac", "no frames")
    for i, chunk in enumerate(chunks):
        parts = chunk.split()
        if len(parts) != CODES_PER_FRAME:
            raise RowError("answer_snac", f"frame {i} has {len(parts)} codes, expected {CODES_PER_FRAME}")
        try:
            frame = [int(p) for p in parts]
        except ValueError as exc:
            raise RowError("answer_snac", f"frame {i}: non-integer code ({exc})") from exc
        if any(c < 0 or c >= SNAC_CODEBOOK for c in frame):
            raise RowError("answer_snac", f"frame {i}: code outside [0, {SNAC_CODEBOOK})")
        codes.extend(frame)
    return codes


def _audio_bytes(value: Any) -> bytes | None:
    """HF Audio struct {bytes, path} or raw binary -> bytes (None when absent)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise RowError("question_audio", f"expected bytes or an {{bytes, path}} struct, got {type(value).__name__}")
    return bytes(value) or None


def va_question_audio(value: Any, reencode: bool) -> tuple[bytes | None, float]:
    """VoiceAssistant question_audio cell -> (stored bytes, duration s): passed through, or FLAC 16 kHz mono."""
    data = _audio_bytes(value)
    if data is None:
        return None, 0.0
    try:
        if reencode:
            wav = decode_audio(data, QUESTION_SR)
            return encode_flac(wav, QUESTION_SR), wav.shape[0] / QUESTION_SR
        return data, audio_duration(data)
    except AudioDecodeError as exc:
        raise RowError("question_audio", str(exc)) from exc


def va_id(rec: dict, file_stem: str, row_idx: int) -> str:
    """Row id 'va-{split_name}-{index}-{round}', or '{file stem}-{row}' when those columns are absent."""
    parts = [rec.get(k) for k in ("split_name", "index", "round")]
    if all(p is not None for p in parts):
        return "va-" + "-".join(str(p) for p in parts)
    return f"{file_stem}-{row_idx}"


def va_row(rec: dict, file_stem: str, row_idx: int, reencode: bool) -> dict:
    """One VoiceAssistant-400K record -> SCHEMA row (task null). Raises RowError."""
    rid = va_id(rec, file_stem, row_idx)
    audio, duration = va_question_audio(rec.get("question_audio"), reencode)
    return make_row(
        id=rid,
        question_text=_text(rec.get("question")),
        question_audio=audio,
        duration_s=duration,
        answer_text=_text(rec.get("answer")),
        answer_codes=parse_answer_snac(rec.get("answer_snac")),
        speaker=None,
        source=VA_SOURCE,
    )


def _va_columns(path: str) -> list[str]:
    names = set(pq.read_schema(path).names)
    missing = [c for c in VA_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: not VoiceAssistant-400K format, missing column(s) {missing}")
    return list(VA_COLUMNS) + [c for c in VA_OPTIONAL_COLUMNS if c in names]


def convert_voiceassistant(
    inputs: list[str],
    out: str,
    shard_rows: int = 500,
    row_group_rows: int = 64,
    batch_rows: int = 256,
    reencode: bool = False,
    strict: bool = False,
    limit: int | None = None,
) -> Report:
    """VoiceAssistant-400K parquet files -> OUT/shard-*.parquet + OUT/skipped.json (see module docstring)."""
    files = list_parquet(inputs)
    report = Report(source=",".join(inputs))
    with ShardWriter(out, shard_rows, row_group_rows, schema=WRITE_SCHEMA) as writer:
        for path in files:
            columns = _va_columns(path)
            stem = os.path.splitext(os.path.basename(path))[0]
            for row_idx, rec in iter_parquet_records(path, columns, batch_rows):
                if limit is not None and writer.n_rows >= limit:
                    break
                try:
                    row = va_row(rec, stem, row_idx, reencode)
                except RowError as err:
                    _handle_bad(report, strict, f"{path}: row {row_idx}", {"file": path, "row": row_idx},
                                va_id(rec, stem, row_idx), err)
                    continue
                except Exception as exc:  # not a known bad-row case: stop, naming the row (existing output kept)
                    raise PrepareError(f"{path}: row {row_idx}: {type(exc).__name__}: {exc}") from exc
                writer.add(row)
        report.shards = writer.close()
        report.n_written = writer.n_rows
    write_report(out, report)
    return report


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data.mini_omni.prepare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifest", help="JSONL/TSV manifest + audio folder -> parquet shards")
    m.add_argument("--manifest", required=True, help="FILE.jsonl or FILE.tsv")
    m.add_argument("--audio-root", default=".", help="folder the manifest's audio paths are relative to")
    m.add_argument("--codec", default=None, help="local SNAC folder (config.json + pytorch_model.bin)")
    m.add_argument("--codec-arch", default="snac_24khz", choices=["snac_24khz", "tiny"],
                   help="random-weight architecture used when --codec is not given")
    m.add_argument("--codec-seed", type=int, default=0, help="seed of the random-weight codec")
    _add_shard_args(m)
    v = sub.add_parser("voiceassistant", help="VoiceAssistant-400K parquet -> parquet shards")
    v.add_argument("--input", required=True, nargs="+", help="parquet files and/or folders")
    v.add_argument("--reencode", action="store_true", help="store question audio as FLAC 16 kHz mono")
    v.add_argument("--limit", type=int, default=None, help="stop after this many written rows")
    _add_shard_args(v)
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 0 on success. Bad rows under --strict raise PrepareError."""
    args = build_parser().parse_args(argv)
    if args.command == "manifest":
        prepare_manifest(
            args.manifest, args.audio_root, args.out, codec=args.codec, codec_arch=args.codec_arch,
            codec_seed=args.codec_seed, shard_rows=args.shard_rows, row_group_rows=args.row_group_rows,
            strict=args.strict,
        )
    else:
        convert_voiceassistant(
            args.input, args.out, shard_rows=args.shard_rows, row_group_rows=args.row_group_rows,
            reencode=args.reencode, strict=args.strict, limit=args.limit,
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
