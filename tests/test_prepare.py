"""Data preparation (data/prepare.py, data/mini_omni/prepare.py, data/mini_omni/schema.py, data/audio.py) and the bundled sample. Hermetic, tiny codec."""
import glob
import io
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from data.audio import AudioDecodeError, decode_audio, encode_flac, encode_wav  # noqa: E402
from data.mini_omni.codec import encode_frames, load_codec  # noqa: E402
from data.mini_omni.prepare import (  # noqa: E402
    PrepareError,
    ShardWriter,
    convert_voiceassistant,
    main,
    make_row,
    parse_answer_snac,
    prepare_manifest,
    RowError,
    WRITE_SCHEMA,
)
from data.mini_omni.schema import SCHEMA, TASK_REQUIREMENTS, eligible_tasks, validate_table  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "data", "sample")
ALL_TASKS = ["asr", "a1t2", "a1a2", "t1t2", "t1a2", "tts"]


def _sine(seconds: float, sr: int, freq: float = 300.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _read_dir(out) -> pa.Table:
    paths = sorted(glob.glob(os.path.join(str(out), "shard-*.parquet")))
    for p in paths:
        validate_table(pq.read_schema(p), p)
    return pa.concat_tables([pq.read_table(p) for p in paths])


# ------------------------------------------------------------------------------------------------ schema/audio


def test_eligible_tasks():
    assert eligible_tasks(None, True, True, True, True) == ALL_TASKS
    assert eligible_tasks(None, True, True, False, False) == ["asr"]
    assert eligible_tasks(None, False, True, True, False) == ["t1t2"]
    assert eligible_tasks("tts", False, False, True, True) == ["tts"]
    assert eligible_tasks("a1a2", True, True, True, False) == []
    assert eligible_tasks(None, False, False, False, False) == []
    with pytest.raises(ValueError, match="valid tasks"):
        eligible_tasks("bogus", True, True, True, True)
    assert set(TASK_REQUIREMENTS) == set(ALL_TASKS) | {"image_a1t2", "image_a1a2", "caption"}
    assert eligible_tasks(None, True, True, True, True, has_image=True) == list(TASK_REQUIREMENTS)
    assert eligible_tasks(None, False, False, True, False, has_image=True) == ["caption"]


def test_validate_table_names_file_and_column():
    good = pa.Table.from_pylist([make_row(id="a", question_text="q", answer_text="x")], schema=SCHEMA)
    validate_table(good, "ok.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet.*'n_frames'"):
        validate_table(good.drop_columns(["n_frames"]), "bad.parquet")
    wrong = good.set_column(good.schema.get_field_index("duration_s"), "duration_s",
                            pa.array([1.0], type=pa.float64()))
    with pytest.raises(ValueError, match=r"typed\.parquet.*'duration_s'.*double"):
        validate_table(wrong, "typed.parquet")


def test_decode_audio_mixes_resamples_and_rejects_garbage():
    stereo = np.stack([_sine(0.5, 44100), _sine(0.5, 44100, 500.0)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 44100, format="WAV")
    wav = decode_audio(buf.getvalue(), 16000)
    assert wav.dtype == np.float32 and wav.ndim == 1 and abs(wav.shape[0] - 8000) <= 2
    flac = encode_flac(wav, 16000)
    assert sf.info(io.BytesIO(flac)).format == "FLAC"
    assert decode_audio(encode_wav(wav, 16000), 16000).shape == wav.shape
    for bad in (b"", b"definitely not audio" * 10):
        with pytest.raises(AudioDecodeError):
            decode_audio(bad, 16000)


def test_shard_writer_rolls_shards_and_row_groups(tmp_path):
    with ShardWriter(str(tmp_path), shard_rows=5, row_group_rows=2, schema=WRITE_SCHEMA) as w:
        for i in range(12):
            w.add(make_row(id=str(i), question_text="q", answer_text="a"))
    paths = sorted(glob.glob(str(tmp_path / "shard-*.parquet")))
    groups = [[pq.ParquetFile(p).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(p).num_row_groups)]
              for p in paths]
    assert groups == [[2, 2, 1], [2, 2, 1], [2]]


# ------------------------------------------------------------------------------------------------ manifest


@pytest.fixture()
def manifest_dir(tmp_path):
    """Audio folder + manifest with 3 good rows and 3 bad ones (missing file, corrupt file, empty row)."""
    audio = tmp_path / "audio"
    audio.mkdir()
    stereo = np.stack([_sine(1.0, 44100), _sine(1.0, 44100, 450.0)], axis=1)
    sf.write(audio / "q_stereo44k.wav", stereo, 44100)
    noise = (np.random.default_rng(0).standard_normal(8000) * 0.1).astype(np.float32)
    sf.write(audio / "q_mono16k.wav", noise, 16000)
    sf.write(audio / "answer.wav", _sine(0.7, 22050, 200.0), 22050)
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 8)
    rows = [
        dict(id="full", question_text="what is one plus one", question_audio="q_stereo44k.wav",
             answer_text="two", answer_audio="answer.wav", speaker="spk_a", source="unit"),
        dict(id="asr_only", task="asr", question_text="noise", question_audio="q_mono16k.wav", speaker="spk_b"),
        dict(id="missing", question_text="x", question_audio="nope.wav", answer_text="y"),
        dict(id="corrupt", question_text="x", question_audio="corrupt.wav", answer_text="y"),
        dict(id="empty"),
        dict(id="text_only", question_text="hello", answer_text="hi"),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path, str(manifest), str(audio)


def test_manifest_round_trip(manifest_dir):
    tmp, manifest, audio = manifest_dir
    out = tmp / "out"
    rc = main(["manifest", "--manifest", manifest, "--audio-root", audio, "--out", str(out),
               "--codec-arch", "tiny", "--shard-rows", "2", "--row-group-rows", "1"])
    assert rc == 0
    assert len(glob.glob(str(out / "shard-*.parquet"))) == 2
    table = _read_dir(out)
    assert table.schema.equals(WRITE_SCHEMA)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["asr_only", "full", "text_only"]

    full = rows["full"]
    wav, sr = sf.read(io.BytesIO(full["question_audio"]))
    assert sr == 16000 and wav.ndim == 1 and abs(len(wav) - 16000) <= 2
    assert sf.info(io.BytesIO(full["question_audio"])).format == "FLAC"
    assert full["duration_s"] == pytest.approx(1.0, abs=1e-3)
    assert full["n_frames"] == int(np.ceil(0.7 * 24000 / 2048)) == 9
    assert len(full["answer_codes"]) == 7 * full["n_frames"]
    expected = encode_frames(load_codec(arch="tiny"), decode_audio(open(os.path.join(audio, "answer.wav"), "rb").read(),
                                                                   24000))
    assert full["answer_codes"] == expected.reshape(-1).tolist()
    assert full["task"] is None and full["speaker"] == "spk_a" and full["source"] == "unit"

    asr = rows["asr_only"]
    assert asr["task"] == "asr" and asr["answer_codes"] is None and asr["n_frames"] == 0
    assert asr["duration_s"] == pytest.approx(0.5, abs=1e-3)
    assert rows["text_only"]["question_audio"] is None and rows["text_only"]["duration_s"] == 0.0

    report = json.loads((out / "skipped.json").read_text())
    assert report["n_written"] == 3 and report["n_skipped"] == 3
    skipped = {s["id"]: s for s in report["skipped"]}
    assert set(skipped) == {"missing", "corrupt", "empty"}
    assert skipped["missing"]["field"] == "question_audio" and "not found" in skipped["missing"]["reason"]
    assert skipped["corrupt"]["field"] == "question_audio" and skipped["corrupt"]["line"] == 4
    assert skipped["empty"]["line"] == 5


def test_manifest_strict_names_file_line_field(manifest_dir):
    tmp, manifest, audio = manifest_dir
    with pytest.raises(PrepareError, match=r"m\.jsonl:3: field 'question_audio'.*not found"):
        prepare_manifest(manifest, audio, str(tmp / "strict"), codec_arch="tiny", strict=True)


def test_manifest_tsv_and_task_check(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("id\ttask\tquestion_text\tanswer_text\n"
                        "a\t\tcount to three\tone two three\n"
                        "b\ta1a2\tno audio\there\n")
    with pytest.raises(PrepareError, match=r"m\.tsv:3: field 'task'.*question_audio"):
        prepare_manifest(str(manifest), str(tmp_path), str(tmp_path / "o"), strict=True)
    report = prepare_manifest(str(manifest), str(tmp_path), str(tmp_path / "o"))
    assert report.n_written == 1 and report.skipped[0]["id"] == "b"
    (row,) = _read_dir(tmp_path / "o").to_pylist()
    assert row["task"] is None and row["answer_text"] == "one two three"


# ------------------------------------------------------------------------------------------------ VoiceAssistant


def test_parse_answer_snac_formats():
    two = list(range(1, 15))
    assert parse_answer_snac("# 1 2 3 4 5 6 7 # 8 9 10 11 12 13 14") == two
    assert parse_answer_snac("#1 2 3 4 5 6 7#8 9 10 11 12 13 14#") == two
    for bad in ("", "# 1 2 3", "# 1 2 3 4 5 6 x", "# 1 2 3 4 5 6 4096", None):
        with pytest.raises(RowError):
            parse_answer_snac(bad)


def _va_file(path: str) -> None:
    """A hand-made 3-row VoiceAssistant-400K parquet; row 1 has a malformed answer_snac."""
    audio = io.BytesIO()
    sf.write(audio, _sine(0.5, 22050), 22050, format="WAV")
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "split_name": ["a", "a", "b"],
        "index": pa.array([0, 1, 2], type=pa.int64()),
        "round": pa.array([0, 0, 1], type=pa.int64()),
        "question": ["what is two plus two", "broken", "say hi"],
        "question_audio": pa.array([{"bytes": audio.getvalue(), "path": "q0.wav"},
                                    {"bytes": audio.getvalue(), "path": "q1.wav"},
                                    {"bytes": audio.getvalue(), "path": "q2.wav"}], type=audio_type),
        "answer": ["four", "oops", "hi"],
        "answer_snac": ["# 1 2 3 4 5 6 7 # 8 9 10 11 12 13 14 ", "# 1 2 3 # 4 5", "# 0 0 0 0 0 0 4095"],
    })
    pq.write_table(table, path, row_group_size=2)


def test_voiceassistant_conversion(tmp_path):
    src = tmp_path / "va"
    src.mkdir()
    _va_file(str(src / "train-00000.parquet"))
    out = tmp_path / "out"
    assert main(["voiceassistant", "--input", str(src), "--out", str(out)]) == 0
    rows = _read_dir(out).to_pylist()
    assert [r["id"] for r in rows] == ["va-a-0-0", "va-b-2-1"]
    first = rows[0]
    assert first["task"] is None and first["source"] == "VoiceAssistant-400K"
    assert first["question_text"] == "what is two plus two" and first["answer_text"] == "four"
    assert first["answer_codes"] == list(range(1, 15)) and first["n_frames"] == 2
    assert first["duration_s"] == pytest.approx(0.5, abs=1e-3)
    assert decode_audio(first["question_audio"], 16000).shape[0] == pytest.approx(8000, abs=2)
    assert rows[1]["answer_codes"] == [0, 0, 0, 0, 0, 0, 4095] and rows[1]["n_frames"] == 1
    report = json.loads((out / "skipped.json").read_text())
    assert report["n_skipped"] == 1
    assert report["skipped"][0]["row"] == 1 and report["skipped"][0]["field"] == "answer_snac"
    with pytest.raises(PrepareError, match=r"train-00000\.parquet: row 1: field 'answer_snac'"):
        convert_voiceassistant([str(src)], str(tmp_path / "strict"), strict=True)


def test_voiceassistant_raw_binary_audio_and_reencode(tmp_path):
    audio = io.BytesIO()
    sf.write(audio, np.stack([_sine(0.25, 44100)] * 2, axis=1), 44100, format="WAV")
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"question": ["q"], "question_audio": [audio.getvalue()], "answer": ["a"],
                             "answer_snac": ["# 1 2 3 4 5 6 7"]}), path)
    convert_voiceassistant([str(path)], str(tmp_path / "out"), reencode=True)
    (row,) = _read_dir(tmp_path / "out").to_pylist()
    assert row["id"] == "raw-0"
    info = sf.info(io.BytesIO(row["question_audio"]))
    assert info.format == "FLAC" and info.samplerate == 16000 and info.channels == 1
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["q"], "answer": ["a"]}), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet.*answer_snac"):
        convert_voiceassistant([str(bad)], str(tmp_path / "out2"))


# ------------------------------------------------------------------------------------------------ bundled sample


def _split_tables() -> dict[str, pa.Table]:
    tables = {}
    for split in ("train", "val", "test"):
        paths = sorted(glob.glob(os.path.join(SAMPLE, split, "shard-*.parquet")))
        assert paths, f"no shards in data/sample/{split}"
        for p in paths:
            validate_table(pq.read_schema(p), p)
        tables[split] = pa.concat_tables([pq.read_table(p) for p in paths])
    return tables


def test_bundled_sample_loads_and_voices_are_held_out():
    tables = _split_tables()
    assert len(glob.glob(os.path.join(SAMPLE, "train", "shard-*.parquet"))) >= 2
    speakers = {k: set(t.column("speaker").to_pylist()) for k, t in tables.items()}
    assert len(speakers["train"]) >= 3
    assert not speakers["train"] & speakers["val"]
    assert not speakers["train"] & speakers["test"]
    ids = [i for t in tables.values() for i in t.column("id").to_pylist()]
    assert len(ids) == len(set(ids))
    for t in tables.values():
        rows = t.slice(0, 3).to_pylist()
        for r in rows:
            assert r["task"] is None and r["question_text"] and r["answer_text"]
            assert r["n_frames"] > 0 and len(r["answer_codes"]) == 7 * r["n_frames"]
            assert decode_audio(r["question_audio"], 16000).shape[0] == pytest.approx(r["duration_s"] * 16000, abs=2)
    total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(SAMPLE, "**", "*"), recursive=True)
                if os.path.isfile(p))
    assert total <= 15 * 1024 * 1024


def test_tiny_tokenizer_has_512_entries():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(REPO, "omni", "assets", "tiny_tokenizer"))
    assert len(tok) == 512
    ids = tok("what is three plus four")["input_ids"]
    assert max(ids) < 512 and tok.decode(ids) == "what is three plus four"
