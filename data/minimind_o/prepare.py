"""Build MiniMind-O parquet shards in the released schema (data/minimind_o/schema.py) from audio + text.

    python -m data.minimind_o.prepare --manifest m.jsonl --audio-root wavs/ --out data/my_o/train \
        --codec /models/mimi --speaker-model /models/wavlm-xvector

Manifest: JSONL, one conversation per line (paths relative to --audio-root):

    {"id": "q1", "conversations": [{"role": "user", "content": "what is two plus two"},
                                   {"role": "assistant", "content": "four"}],
     "question_audios": ["q/q1.wav"],      # optional (A2A): one clip per user turn
     "answer_audios": ["a/four.wav"],      # optional: one clip (or null) per assistant turn -> Mimi codes
     "ref_audio": "voices/slt.wav",        # optional: reference voice -> ref_audios (Mimi codes)
     "speaker_audio": "voices/slt.wav",    # optional: clip for spk_emb (default: ref_audio)
     "spk_emb": [0.1, ...],                # optional: a precomputed embedding instead
     "image": "img/q1.png"}                # optional (I2T): image bytes; put "<image>" in the user content

Answer / reference speech is resampled to the codec rate and encoded with Mimi (first 8 codebooks; `--codec`
local folder, else a seeded random `--codec-arch`), flattened frame-major. Question audio is stored as FLAC
16 kHz mono. Speaker embeddings come from `callbacks.speech.speaker` (resemblyzer GE2E by default, or a local
x-vector folder with --speaker-model). Bad lines are skipped, counted and listed in OUT/skipped.json; with
--strict the first one stops the run naming the manifest line and field.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from data.audio import AudioDecodeError, decode_audio
from data.minimind_o.schema import WRITE_SCHEMA, parse_conversation
from data.prepare import (
    PrepareError, Report, RowError, _read_file, _resolve, image_bytes, question_audio_flac, write_manifest,
)
from omni.minimind_o.layout import frames_to_flat

SPEAKER_SR = 16000


class Encoders:
    """Mimi codes and speaker embeddings per audio file, each model loaded on first use, results cached by path
    (many rows share an answer or a voice)."""

    def __init__(self, codec: str | None, codec_arch: str, codec_seed: int, speaker_model: str | None) -> None:
        self.codec_args, self.speaker_model = (codec, codec_arch, codec_seed), speaker_model
        self._mimi = self._speaker = None
        self._codes: dict[str, list[int]] = {}
        self._emb: dict[str, list[float]] = {}

    def codes(self, path: str, field_name: str) -> list[int]:
        from omni.minimind_o.codec import encode, load_mimi, sample_rate

        key = os.path.abspath(path)
        if key not in self._codes:
            if self._mimi is None:
                path_, arch, seed = self.codec_args
                self._mimi = load_mimi(path_, arch, seed)
            try:
                wav = decode_audio(_read_file(path, field_name), sample_rate(self._mimi))
            except AudioDecodeError as exc:
                raise RowError(field_name, f"{path}: {exc}") from exc
            self._codes[key] = frames_to_flat(encode(self._mimi, wav))
        return self._codes[key]

    def speaker(self, path: str, field_name: str) -> list[float]:
        key = os.path.abspath(path)
        if key not in self._emb:
            if self._speaker is None:
                from callbacks.speech.speaker import build_speaker_encoder

                self._speaker = build_speaker_encoder(self.speaker_model)
            try:
                wav = decode_audio(_read_file(path, field_name), SPEAKER_SR)
            except AudioDecodeError as exc:
                raise RowError(field_name, f"{path}: {exc}") from exc
            self._emb[key] = [float(x) for x in self._speaker.embed(wav, SPEAKER_SR)]
        return self._emb[key]


def _paths(value: Any, field_name: str) -> list[str | None]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RowError(field_name, "must be a list of paths (one per turn)")
    return [str(v) if v else None for v in value]


def manifest_row(rec: dict, line_no: int, manifest: str, root: str, enc: Encoders) -> dict:
    """One manifest record -> a WRITE_SCHEMA row. Raises RowError(field, reason)."""
    rid = str(rec.get("id") or f"{os.path.splitext(os.path.basename(manifest))[0]}-{line_no}")
    conv = rec.get("conversations")
    try:
        msgs = parse_conversation(conv if isinstance(conv, str) else json.dumps(conv))
    except ValueError as exc:
        raise RowError("conversations", str(exc)) from exc
    n_user = sum(m["role"] == "user" for m in msgs)
    n_assistant = sum(m["role"] == "assistant" for m in msgs)
    questions = _paths(rec.get("question_audios"), "question_audios")
    if questions and (len(questions) != n_user or None in questions):
        raise RowError("question_audios", f"{len(questions)} clips for {n_user} user turns (need one each)")
    answers = _paths(rec.get("answer_audios"), "answer_audios")
    if answers and len(answers) != n_assistant:
        raise RowError("answer_audios", f"{len(answers)} entries for {n_assistant} assistant turns")
    row: dict[str, Any] = {"id": rid, "conversations": json.dumps(msgs, ensure_ascii=False)}
    row["question_audios"] = [question_audio_flac(_resolve(root, q, "question_audios"), "question_audios")[0]
                              for q in questions] or None
    row["answer_audios"] = [enc.codes(_resolve(root, a, "answer_audios"), "answer_audios") if a else []
                            for a in answers] or None
    if rec.get("ref_audio"):
        row["ref_audios"] = enc.codes(_resolve(root, str(rec["ref_audio"]), "ref_audio"), "ref_audio")
    if rec.get("spk_emb") is not None:
        try:
            row["spk_emb"] = [float(x) for x in rec["spk_emb"]]
        except (TypeError, ValueError) as exc:
            raise RowError("spk_emb", f"must be a list of numbers ({exc})") from exc
        if not all(math.isfinite(x) for x in row["spk_emb"]):
            raise RowError("spk_emb", "holds NaN / inf values")
    elif rec.get("speaker_audio") or rec.get("ref_audio"):
        field_name = "speaker_audio" if rec.get("speaker_audio") else "ref_audio"
        row["spk_emb"] = enc.speaker(_resolve(root, str(rec[field_name]), field_name), field_name)
    if rec.get("image"):
        if not any("<image>" in m["content"] for m in msgs if m["role"] == "user"):
            raise RowError("image", "the row has an image but no user turn contains <image>")
        row["image_bytes"] = image_bytes(_resolve(root, str(rec["image"]), "image"))
    return row


def prepare_manifest(manifest: str, audio_root: str, out: str, codec: str | None = None, codec_arch: str = "mimi",
                     codec_seed: int = 0, speaker_model: str | None = None, shard_rows: int = 500,
                     row_group_rows: int = 64, strict: bool = False) -> Report:
    """Manifest (+ audio folder) -> OUT/shard-*.parquet (released schema) and OUT/skipped.json."""
    enc = Encoders(codec, codec_arch, codec_seed, speaker_model)
    return write_manifest(manifest, out, lambda rec, line_no: manifest_row(rec, line_no, manifest, audio_root, enc),
                          shard_rows=shard_rows, row_group_rows=row_group_rows, strict=strict, schema=WRITE_SCHEMA)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.minimind_o.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="FILE.jsonl (one conversation per line)")
    p.add_argument("--audio-root", default=".", help="folder the manifest's paths are relative to")
    p.add_argument("--out", required=True, help="output folder for shard-*.parquet and skipped.json")
    p.add_argument("--codec", default=None, help="local Mimi folder (MimiModel.from_pretrained)")
    p.add_argument("--codec-arch", default="mimi", choices=["mimi", "tiny"],
                   help="random-weight Mimi architecture used when --codec is not given")
    p.add_argument("--codec-seed", type=int, default=0)
    p.add_argument("--speaker-model", default=None, help="local x-vector folder; default resemblyzer (GE2E)")
    p.add_argument("--shard-rows", type=int, default=500)
    p.add_argument("--row-group-rows", type=int, default=64)
    p.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    prepare_manifest(a.manifest, a.audio_root, a.out, codec=a.codec, codec_arch=a.codec_arch,
                     codec_seed=a.codec_seed, speaker_model=a.speaker_model, shard_rows=a.shard_rows,
                     row_group_rows=a.row_group_rows, strict=a.strict)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
