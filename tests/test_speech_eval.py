"""Training with the speech-evaluation callbacks: every metric and the audio samples reach an offline wandb run
and the run directory."""
import json
import struct
import time
import zlib

import pytest
import soundfile as sf

from omni.train import train
from tests.conftest import compose_cfg

SPEECH = ["callbacks=speech_eval", "callbacks.speech_set.every_n_epochs=1", "callbacks.speech_set.max_examples=2",
          "callbacks.speech_set.max_new_tokens=12", "callbacks.speech_set.producer.codec_arch=tiny"]


def test_callbacks_log_speech_metrics_and_samples_to_wandb(tmp_path):
    cfg = compose_cfg(["debug=fast", "data.max_tokens=1200", "logger=many", "test=false",
                       "callbacks.text_metrics.max_examples=1", *SPEECH], tmp_path)
    metrics = train(cfg)
    for key in ("val/speech/text_cer", "val/speech/asr_cer_text", "val/speech/asr_cer_ref", "val/speech/sim",
                "val/speech/sim_seen", "val/speech/sim/assistant", "val/speech/mos", "val/speech/mos_sig"):
        assert key in metrics, sorted(k for k in metrics if "speech" in k)
    assert 1.0 <= metrics["val/speech/mos"] <= 5.0 and -1.0 <= metrics["val/speech/sim"] <= 1.0

    folder = tmp_path / "speech_samples" / "epoch000"
    records = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for rec in records:
        assert {"prompt", "text", "reference", "asr_text", "asr_cer_text", "similarity", "mos"} <= set(rec)
        info = sf.info(rec["wav"])
        assert info.samplerate == 24000 and info.frames == rec["n_frames"] * 2048 > 0
        assert sf.info(rec["reference_wav"]).samplerate == 24000

    run = next((tmp_path / "wandb").glob("offline-run-*"))
    assert list(run.glob("run-*.wandb"))
    audio = sorted((run / "files" / "media" / "audio").rglob("*.wav"))
    assert len(audio) >= 2, "the table's generated + reference audio should be stored with the run"
    tables = list((run / "files" / "media" / "table").rglob("*.table.json"))
    table = json.loads(tables[0].read_text())
    assert {"prompt", "text", "reference", "audio", "asr_cer_text", "similarity", "mos"} <= set(table["columns"])
    assert len(table["data"]) == 2
    logged = {}  # the run's history as recorded in its .wandb file (offline runs write no summary json)
    for record in read_wandb_records(next(run.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            logged.update({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    for key in ("val/speech/asr_cer_ref", "val/speech/sim", "val/speech/mos", "val/speech/text_cer"):
        assert -1.0 <= float(logged[key]) <= 5.0, key
    assert logged["val/speech/samples/_type"] == '"table-file"'
    assert logged["val/speech/samples_audio/_type"] == '"audio"' and logged["val/speech/samples_audio/count"] == "2"


def read_wandb_records(path, timeout=60.0):
    """Protobuf records of a finished offline run's .wandb file. The file is a 7-byte header (":W&B", magic,
    version), then LevelDB-log framing counted from the start of the file (32 KiB blocks; each chunk: crc32 of
    type + data (4), length (2), type (1: full, 2: first, 3: middle, 4: last)). wandb's service can still be
    writing the last block when `wandb.finish()` returns, so this waits (up to `timeout` s) for the run's `exit`
    record; a chunk whose checksum fails is an error, never silently the end."""
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        data = path.read_bytes()
        assert len(data) < 7 or data[:4] == b":W&B", data[:7]  # (< 7: the header itself is still being written)
        pos, block, records, parts = 7, 32768, [], b""
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # block trailer too short for a header: skip to the next block
                pos += block - pos % block
                continue
            crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0 or pos + 7 + length > len(data):  # zero fill / a chunk still being written
                break
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: bad checksum at byte {pos - length - 7}"
            parts = chunk if kind in (1, 2) else parts + chunk
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(parts)
                records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s ({len(records)} records)"
        time.sleep(0.2)


def test_scorer_callbacks_need_the_speech_set(tmp_path):
    cfg = compose_cfg(["debug=fast", "data.max_tokens=1200", "logger=csv", "test=false", *SPEECH,
                       "callbacks.speech_set=null", "callbacks.text_metrics=null", "callbacks.speaker_similarity=null",
                       "callbacks.speech_quality=null", "callbacks.speech_samples=null"], tmp_path)
    with pytest.raises(ValueError, match="callbacks.speech_set"):
        train(cfg)
