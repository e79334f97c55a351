"""Issue 13 part C: every bad input is named, non-finite audio never trains, data.mini_omni.prepare is safe.

Each case is built on real small parquet / wav inputs and goes through the code a user runs (the DataModules,
Lightning's fit with DataHealthCallback, `data.mini_omni.prepare.main`). Expected rows, ids and counts are hand-derived in
each test from the rows it writes."""
from __future__ import annotations

import glob
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from data.mini_omni.datamodule import MiniOmniDataModule as OmniDataModule
from omni.config import load_group_config
from tests.test_datamodule import MAX_POS, N_MELS, row, tokenizer_dir, wav_bytes, write_shard  # noqa: F401

torch.set_num_threads(1)


def float_wav(seconds: float, bad: float | None = None, at: int = 100, sr: int = 16000) -> bytes:
    """32-bit float WAV (it can hold NaN / inf) of low noise; `bad` written at sample `at`."""
    wav = 0.05 * np.random.default_rng(1).standard_normal(int(seconds * sr)).astype(np.float32)
    if bad is not None:
        wav[at] = bad
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def omni_dm(tokenizer_dir, train, val=None, **kw) -> OmniDataModule:
    args = dict(tokens=dict(text_vocab=512, codebook_size=64), tokenizer_path=tokenizer_dir, n_mels=N_MELS,
                max_source_positions=MAX_POS, tasks={"asr": 1.0}, max_tokens=200, max_len=100, window_rows=64,
                seed=0, chars_per_token=1.0)
    args.update(kw)
    return OmniDataModule(train=str(train), val=None if val is None else str(val), **args)


def load_all(dm: OmniDataModule) -> tuple[list[dict], list[dict]]:
    """(loaded batches, every load-time skip record) of one train epoch."""
    batches = list(dm.train_dataloader())
    return batches, [s for b in batches for s in b["skipped"]]


# ------------------------------------------------------------------------------------ non-finite audio


def test_nonfinite_audio_is_skipped_as_its_own_reason_and_strict_names_it(tmp_path, tokenizer_dir):
    # rows 0-2: 0.5 s float WAVs with finite samples (negative control: a float WAV as such is fine);
    # row 3: a NaN at sample 100; row 4: +inf at sample 7000
    rows = [row(i, audio=float_wav(0.5), seconds=0.5) for i in range(3)]
    rows += [row(3, audio=float_wav(0.5, np.nan), seconds=0.5), row(4, audio=float_wav(0.5, np.inf, 7000), seconds=0.5)]
    path = write_shard(tmp_path / "d" / "s.parquet", rows)
    dm = omni_dm(tokenizer_dir, tmp_path / "d")
    dm.setup("fit")
    batches, skipped = load_all(dm)
    assert sorted((s["id"], s["row"], s["column"], s["reason"]) for s in skipped) == [
        ("r3", 3, "question_audio", "nonfinite_audio"), ("r4", 4, "question_audio", "nonfinite_audio")]
    assert all(s["file"] == str(path) for s in skipped)
    assert "1 non-finite" in skipped[0]["detail"]
    assert sorted(i for b in batches for i in b["ids"]) == ["r0", "r1", "r2"]
    assert all(torch.isfinite(b["audio_mels"]).all() for b in batches if b["audio_mels"] is not None)
    strict = omni_dm(tokenizer_dir, tmp_path / "d", strict=True)
    strict.setup("fit")
    with pytest.raises(ValueError, match=r"s\.parquet: row [34] \(id='r[34]'\), column 'question_audio': "
                                         r"decoded audio .* 1 non-finite"):
        load_all(strict)


def test_nonfinite_features_backstop_names_the_column(tmp_path, tokenizer_dir, monkeypatch):
    """Finite audio whose computed log-mel is not finite (here: the feature extractor made to return NaN for
    row 1's audio, standing in for an overflow) is skipped as `nonfinite_features` naming question_audio."""
    from data.mini_omni.dataset import OmniDataset

    rows = [row(0, audio=wav_bytes(0.5, seed=0), seconds=0.5), row(1, audio=wav_bytes(0.5, seed=1), seconds=0.5)]
    write_shard(tmp_path / "d" / "s.parquet", rows)
    dm = omni_dm(tokenizer_dir, tmp_path / "d")
    dm.setup("fit")
    real = OmniDataset._audio

    def audio(self, data, declared_s=None):
        mels, n = real(self, data, declared_s)
        return (mels * float("nan"), n) if data == rows[1]["question_audio"] else (mels, n)

    monkeypatch.setattr(OmniDataset, "_audio", audio)
    _, skipped = load_all(dm)
    assert [(s["id"], s["column"], s["reason"]) for s in skipped] == [("r1", "question_audio", "nonfinite_features")]


# ------------------------------------------------------------------------------------ per-row counts + resume


class _Recorder:
    """A LightningModule that records each step's ids and skipped ids."""

    @staticmethod
    def make():
        import lightning.pytorch as pl

        class Recorder(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))
                self.steps: list[list[str]] = []

            def training_step(self, batch, batch_idx):
                self.steps.append([s["id"] for s in batch["skipped"]])
                return (self.w ** 2).sum()

            def validation_step(self, batch, batch_idx):
                return None

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Recorder()


def _fit(tmp_path, tokenizer_dir, *, val, epochs, ckpt_path=None, every_step=False, name="run"):
    import lightning.pytorch as pl

    from callbacks.data_health import DataHealthCallback

    dm = omni_dm(tokenizer_dir, tmp_path / "train", val=val, max_tokens=120, max_len=60)
    health = DataHealthCallback(report_path=str(tmp_path / name / "data_health_sft.json"))
    callbacks = [health]
    if every_step:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}",
                                                      every_n_train_steps=1, save_top_k=-1))
    model = _Recorder.make()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, use_distributed_sampler=False,
                         enable_checkpointing=every_step, default_root_dir=tmp_path / name)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, json.loads((tmp_path / name / "data_health_sft.json").read_text())


def _train_rows() -> list[dict]:
    # 12 asr rows of 0.3 s; rows 3 and 7 hold a NaN sample. Each row is drawn once per epoch (asr weight 1 only).
    return [row(i, audio=float_wav(0.3, np.nan if i in (3, 7) else None), seconds=0.3, q="hi " * (i % 3 + 1))
            for i in range(12)]


def test_two_bad_rows_count_two_over_epochs_and_validation(tmp_path, tokenizer_dir, capsys):
    """2 epochs, validation every epoch: r3 and r7 are loaded twice each in training and the bad val row v1 at
    every validation pass (sanity check + 2 epochs). Per distinct row: 3 rows, 3 x nonfinite_audio."""
    write_shard(tmp_path / "train" / "a.parquet", _train_rows(), row_group_size=4)
    val = [row(100, audio=float_wav(0.3), seconds=0.3), {**row(101, audio=float_wav(0.3, np.inf), seconds=0.3),
                                                         "id": "v1"}]
    write_shard(tmp_path / "val" / "v.parquet", val)
    model, report = _fit(tmp_path, tokenizer_dir, val=tmp_path / "val", epochs=2)
    assert sum(len(s) for s in model.steps) == 4  # the loads the old per-load count added up (+ the val ones)
    assert report["skipped"] == 3 and report["by_reason"] == {"nonfinite_audio": 3}
    assert sorted(r["id"] for r in report["rows"]) == ["r3", "r7", "v1"]
    assert "[data] skipped 3 rows: {'nonfinite_audio': 3}" in capsys.readouterr().out


def test_skip_counts_survive_resume(tmp_path, tokenizer_dir):
    """One epoch, a checkpoint after every step. Resuming from the step after the last bad row's batch replays
    none of the bad rows (each is drawn once per epoch), so only the checkpointed callback state can report them."""
    write_shard(tmp_path / "train" / "a.parquet", _train_rows(), row_group_size=4)
    full, report = _fit(tmp_path, tokenizer_dir, val=None, epochs=1, every_step=True, name="full")
    assert sorted(i for s in full.steps for i in s) == ["r3", "r7"] and report["skipped"] == 2
    last_bad = max(k for k, s in enumerate(full.steps) if s) + 1  # global step after the last bad row's batch
    assert last_bad < len(full.steps)  # the resumed run has batches left, none with a bad row
    resumed, again = _fit(tmp_path, tokenizer_dir, val=None, epochs=1, name="resumed",
                          ckpt_path=str(tmp_path / "ckpt" / f"step={last_bad}.ckpt"))
    assert len(resumed.steps) == len(full.steps) - last_bad and not any(resumed.steps)
    assert again["skipped"] == 2 and sorted(r["id"] for r in again["rows"]) == ["r3", "r7"]
    assert again["by_reason"] == {"nonfinite_audio": 2}


# ------------------------------------------------------------------------------------ index-time row checks


def test_duplicate_ids_blank_text_bad_durations_and_audio_longer_than_declared(tmp_path, tokenizer_dir):
    """Hand table. Every row has question_text, answer_text and 0.5 s of audio (no codes) unless noted, so a good
    row serves asr (audio + question_text), a1t2 (audio + answer_text) and t1t2 (question_text + answer_text):
    row 0 r0 good                                      -> asr, a1t2, t1t2
    row 1 r1 good                                      -> asr, a1t2, t1t2
    row 2 id 'r1' again                                -> left out: duplicate_id (column id)
    row 3 r3 question_text '  \\t '                    -> blank_text (question_text): asr, t1t2 dropped -> a1t2
    row 4 r4 answer_text ' '                            -> blank_text (answer_text): a1t2, t1t2 dropped -> asr
    row 5 r5 duration_s NaN                             -> bad_duration: audio tasks dropped -> t1t2
    row 6 r6 duration_s -1                              -> bad_duration: audio tasks dropped -> t1t2
    row 7 r7 0.5 s audio, duration_s 0.3                -> all three at index time; loading asr:
                                                          audio_longer_than_declared (never cut)
    row 8 r8 0.5 s audio, duration_s 0.49 (within 20 ms) -> loads (negative control of the tolerance)"""
    audio = wav_bytes(0.5)
    r = lambda i, **kw: {**row(i, audio=audio, seconds=0.5), **kw}  # noqa: E731
    rows = [r(0), r(1), r(2, id="r1"), r(3, question_text="  \t "), r(4, answer_text=" "),
            r(5, duration_s=float("nan")), r(6, duration_s=-1.0), r(7, duration_s=0.3), r(8, duration_s=0.49)]
    path = write_shard(tmp_path / "d" / "s.parquet", rows)
    dm = omni_dm(tokenizer_dir, tmp_path / "d", tasks={"asr": 1.0, "t1t2": 1.0})
    dm.setup("fit")
    index = dm.indexes["train"]
    got = {(s.row, s.id, s.column, s.reason) for s in index.skipped}
    assert got == {(2, "r1", "id", "duplicate_id"), (3, "r3", "question_text", "blank_text"),
                   (4, "r4", "answer_text", "blank_text"),
                   (5, "r5", "duration_s", "bad_duration"), (6, "r6", "duration_s", "bad_duration")}
    assert "already used by" in next(s.detail for s in index.skipped if s.reason == "duplicate_id")
    kept = {int(f): index.tasks_of(i) for i, f in enumerate(index.row_in_file)}
    three = ["asr", "a1t2", "t1t2"]
    assert kept == {0: three, 1: three, 3: ["a1t2"], 4: ["asr"], 5: ["t1t2"], 6: ["t1t2"], 7: three, 8: three}
    report = dm.skipped_report()
    assert report["counts"] == {"duplicate_id": 1, "blank_text": 2, "bad_duration": 2}
    ds = dm.datasets["train"]
    pos = {int(f): i for i, f in enumerate(index.row_in_file)}
    longer = ds[(pos[7], "asr")]
    assert (longer.reason, longer.column, longer.id) == ("audio_longer_than_declared", "question_audio", "r7")
    assert "0.500 s but duration_s declares 0.300 s" in longer.detail
    assert ds[(pos[8], "asr")]["n_audio_frames"] == int(500 / 20) + 1  # within tolerance: loads, not cut
    assert ds[(pos[7], "t1t2")]["id"] == "r7"  # text task: the audio is not read
    for bad_row, column in ((2, "id"), (3, "question_text"), (5, "duration_s")):
        only = write_shard(tmp_path / f"strict{bad_row}" / "s.parquet", rows[:2] + [rows[bad_row]])
        strict = omni_dm(tokenizer_dir, only.parent, tasks={"asr": 1.0, "t1t2": 1.0}, strict=True)
        with pytest.raises(ValueError, match=rf"s\.parquet: row 2 \(id='r\d'\), column '{column}'"):
            strict.setup("fit")
    ds.strict = True  # what data.strict=true builds
    with pytest.raises(ValueError, match=r"s\.parquet: row 7 \(id='r7'\), column 'question_audio': the audio lasts "
                                         r"0\.500 s"):
        ds[(pos[7], "asr")]
    assert index.files == [str(path)]


# ------------------------------------------------------------------------------------ corrupt / truncated shards


def _corrupt_column_chunk(path: Path, group: int, column: str) -> None:
    """Overwrite the first 64 bytes of one column chunk (its page header) with 0xFF."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    chunk = meta.row_group(group).column(names.index(column))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * 64)


def test_truncated_and_corrupt_shards_are_named(tmp_path, tokenizer_dir):
    """a.parquet: 4 good rows (r0-r3). b.parquet: truncated to half its size (footer gone). c.parquet: rows
    r10-r15 in row groups of 2, the `id` chunk of row group 1 (file rows 2, 3) overwritten. d.parquet: rows
    r20-r23 in row groups of 2, the question_audio chunk of row group 1 (rows 2, 3) overwritten: only loading
    reads it. Not strict: b is one unreadable_shard record (row -1, its row count is unknown), c's rows 2 and 3 are
    `unreadable` with the row group named, the other rows train; d's rows 2, 3 are skipped at load time."""
    audio = wav_bytes(0.3)
    a = write_shard(tmp_path / "d" / "a.parquet", [row(i, audio=audio, seconds=0.3) for i in range(4)])
    b = write_shard(tmp_path / "d" / "b.parquet", [row(i, audio=audio, seconds=0.3) for i in range(4, 8)])
    b.write_bytes(b.read_bytes()[: b.stat().st_size // 2])
    c = write_shard(tmp_path / "d" / "c.parquet", [row(i, audio=audio, seconds=0.3) for i in range(10, 16)],
                    row_group_size=2)
    _corrupt_column_chunk(c, 1, "id")
    d = write_shard(tmp_path / "d" / "e.parquet", [row(i, audio=audio, seconds=0.3) for i in range(20, 24)],
                    row_group_size=2)
    _corrupt_column_chunk(d, 1, "question_audio")
    with pytest.raises(Exception):  # the negative control: pyarrow itself cannot read either file
        pq.read_table(b)
    with pytest.raises(Exception):
        pq.read_table(c, columns=["id"])
    dm = omni_dm(tokenizer_dir, tmp_path / "d")
    dm.setup("fit")
    index = dm.indexes["train"]
    recs = {(s.file, s.row, s.reason) for s in index.skipped}
    assert recs == {(str(b), -1, "unreadable_shard"), (str(c), 2, "unreadable"), (str(c), 3, "unreadable")}
    assert all("row group 1 (file rows 2-3)" in s.detail for s in index.skipped if s.file == str(c))
    batches, skipped = load_all(dm)
    assert sorted(i for x in batches for i in x["ids"]) == sorted(
        ["r0", "r1", "r2", "r3", "r10", "r11", "r14", "r15", "r20", "r21"])
    assert sorted((s["file"], s["row"], s["reason"]) for s in skipped) == [(str(d), 2, "unreadable"),
                                                                         (str(d), 3, "unreadable")]
    assert all("row group 1" in s["detail"] for s in skipped)
    assert dm.skipped_report()["counts"] == {"unreadable_shard": 1, "unreadable": 2}
    for bad, match in ((b, r"b\.parquet: cannot open the parquet file"), (c, r"c\.parquet: row group 1 \(file rows 2-3\)")):
        strict = omni_dm(tokenizer_dir, bad, strict=True)
        with pytest.raises(ValueError, match=match):
            strict.setup("fit")
    assert str(a).endswith("a.parquet")


# ------------------------------------------------------------------------------ data.mini_omni.prepare


def _manifest(tmp_path: Path, rows: list[dict]) -> str:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _write_wavs(root: Path) -> None:
    root.mkdir(exist_ok=True)
    for name, bad in (("good", None), ("nan", np.nan), ("inf", -np.inf)):
        (root / f"{name}.wav").write_bytes(float_wav(0.5, bad))


def test_prepare_skips_nonfinite_wavs_naming_line_and_field_and_keeps_existing_output(tmp_path):
    from data.mini_omni.prepare import PrepareError, main

    audio = tmp_path / "audio"
    _write_wavs(audio)
    rows = [dict(id="ok", question_text="q", question_audio="good.wav", answer_text="a"),
            dict(id="nan", question_text="q", question_audio="nan.wav", answer_text="a"),
            dict(id="inf", question_text="q", question_audio="inf.wav", answer_text="a"),
            dict(id="ok2", question_text="q2", answer_text="a2")]
    manifest, out = _manifest(tmp_path, rows), tmp_path / "out"
    assert main(["manifest", "--manifest", manifest, "--audio-root", str(audio), "--out", str(out)]) == 0
    report = json.loads((out / "skipped.json").read_text())
    assert [(s["id"], s["line"], s["field"]) for s in report["skipped"]] == [("nan", 2, "question_audio"),
                                                                         ("inf", 3, "question_audio")]
    assert all("non-finite" in s["reason"] and ".wav" in s["reason"] for s in report["skipped"])
    shards = sorted(glob.glob(str(out / "shard-*.parquet")))
    assert [r["id"] for r in pq.read_table(shards[0]).to_pylist()] == ["ok", "ok2"]
    before = {p: Path(p).read_bytes() for p in shards}
    # --strict into the same folder: stops at line 2 naming the field; the shard already there is untouched
    with pytest.raises(PrepareError, match=r"m\.jsonl:2: field 'question_audio': .*nan\.wav.*non-finite"):
        main(["manifest", "--manifest", manifest, "--audio-root", str(audio), "--out", str(out), "--strict"])
    assert {p: Path(p).read_bytes() for p in glob.glob(str(out / "shard-*.parquet"))} == before
    assert sorted(os.listdir(out)) == ["shard-00000.parquet", "skipped.json"]  # no temp files left behind


def test_prepare_crash_mid_run_keeps_existing_shards_and_names_the_line(tmp_path, monkeypatch):
    """A run that dies after writing complete shards (1 row per shard) leaves the old output as it was."""
    import data.mini_omni.prepare as prepare

    rows = [dict(id=f"t{i}", question_text=f"q{i}", answer_text="a") for i in range(4)]
    manifest, out = _manifest(tmp_path, rows), tmp_path / "out"
    prepare.main(["manifest", "--manifest", manifest, "--out", str(out), "--shard-rows", "3"])
    before = {p: Path(p).read_bytes() for p in glob.glob(str(out / "*"))}
    assert sorted(os.path.basename(p) for p in before) == ["shard-00000.parquet", "shard-00001.parquet",
                                                           "skipped.json"]
    real = prepare.make_row

    def make_row(**kw):
        if kw["id"] == "t3":
            raise RuntimeError("disk on fire")
        return real(**kw)

    monkeypatch.setattr(prepare, "make_row", make_row)
    with pytest.raises(prepare.PrepareError, match=r"m\.jsonl:4: RuntimeError: disk on fire"):
        prepare.main(["manifest", "--manifest", manifest, "--out", str(out), "--shard-rows", "1"])
    assert {p: Path(p).read_bytes() for p in glob.glob(str(out / "*"))} == before
    assert not [f for f in os.listdir(out) if f.startswith(".")]
    # a successful run with fewer shards replaces them and removes the stale one
    monkeypatch.setattr(prepare, "make_row", real)
    prepare.main(["manifest", "--manifest", manifest, "--out", str(out), "--shard-rows", "10"])
    assert sorted(os.listdir(out)) == ["shard-00000.parquet", "skipped.json"]
    assert pq.read_table(out / "shard-00000.parquet").num_rows == 4


def test_minimind_prepare_skips_nonfinite_wav(tmp_path):
    from data.minimind_o.prepare import main

    audio = tmp_path / "audio"
    _write_wavs(audio)
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    rows = [dict(id="ok", conversations=conv, question_audios=["good.wav"]),
            dict(id="nan", conversations=conv, question_audios=["nan.wav"]),
            dict(id="emb", conversations=conv, spk_emb=[0.1, float("nan")])]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json writes NaN as NaN (read back as nan)
    out = tmp_path / "out"
    assert main(["--manifest", str(path), "--audio-root", str(audio), "--out", str(out)]) == 0
    report = json.loads((out / "skipped.json").read_text())
    assert [(s["id"], s["line"], s["field"]) for s in report["skipped"]] == [("nan", 2, "question_audios"),
                                                                         ("emb", 3, "spk_emb")]
    assert [r["id"] for r in pq.read_table(out / "shard-00000.parquet").to_pylist()] == ["ok"]


# ------------------------------------------------------------------------------------ the other two families


def _float_encoder(bad: float | None = None):
    def encode(wav: np.ndarray, sr: int) -> bytes:
        wav = np.array(wav, dtype=np.float32)
        if bad is not None:
            wav[len(wav) // 2] = bad
        buf = io.BytesIO()
        sf.write(buf, wav, sr, format="WAV", subtype="FLOAT")
        return buf.getvalue()
    return encode


def test_streaming_bad_rows_each_named(tmp_path):
    """Online sessions (one 1 s tone + a reply). Index time: row 2 repeats id s0 (duplicate_id), row 3's reply is
    whitespace (blank_text), row 4's duration_s is NaN (bad_duration). Load time: row 1's audio holds a NaN
    (nonfinite_audio), row 5 carries precomputed features with a NaN (nonfinite_features, column features), row 6
    declares one chunk fewer than its audio has (audio_longer_than_declared, never cut). Only s0 trains."""
    from data.mini_omni3.builder import Turn, build_session, session_row
    from data.mini_omni3.datamodule import StreamingDataModule
    from data.mini_omni3.schema import SCHEMA as STREAM_SCHEMA

    sr = 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)).astype(np.float32)
    s = build_session([Turn(tone, "seven", lead=np.zeros(4800, np.float32))], tail=np.zeros(9600, np.float32))
    good = session_row("s0", s, _float_encoder())
    dim = 4
    feats = np.zeros(s.n_chunks * 10 * dim, dtype=np.float16)
    feats[7] = np.nan
    assert max(good["reply_chunk"]) < s.n_chunks - 1  # row 6 keeps a valid reply chunk
    rows = [good, session_row("s1", s, _float_encoder(np.nan)), {**good},
            {**good, "id": "s3", "reply_text": ["   "]}, {**good, "id": "s4", "duration_s": float("nan")},
            {**good, "id": "s5", "audio": None, "features": feats.tolist(), "feature_dim": dim},
            {**good, "id": "s6", "n_chunks": s.n_chunks - 1}]
    path = tmp_path / "d" / "s.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=STREAM_SCHEMA), path)
    tokenizer = Path(__file__).resolve().parents[1] / "omni" / "assets" / "tiny_tokenizer"
    dm = StreamingDataModule(train=str(path.parent), tokens={"after_vocab": 512}, tokenizer_path=str(tokenizer),
                             tasks={"online": 1.0}, max_tokens=4096, max_len=2048)
    dm.setup("fit")
    assert {(s.row, s.id, s.column, s.reason) for s in dm.indexes["train"].skipped} == {
        (2, "s0", "id", "duplicate_id"), (3, "s3", "reply_text", "blank_text"),
        (4, "s4", "duration_s", "bad_duration")}
    batches = list(dm.train_dataloader())
    assert sorted((x["row"], x["id"], x["column"], x["reason"]) for b in batches for x in b["skipped"]) == [
        (1, "s1", "audio", "nonfinite_audio"), (5, "s5", "features", "nonfinite_features"),
        (6, "s6", "audio", "audio_longer_than_declared")]
    assert [i for b in batches for i in b["ids"]] == ["s0"]


def test_minimind_nonfinite_question_audio_and_duplicate_ids(tmp_path):
    """MiniMind-O rows (our `id` column): row 0 t2a good; row 1 a2a whose question clip holds a NaN
    (nonfinite_audio at load: the index reads only the header); row 2 repeats id m0 (duplicate_id); row 3's target
    assistant turn is whitespace (blank_text)."""
    from data.minimind_o.datamodule import MiniMindODataModule
    from data.minimind_o.schema import WRITE_SCHEMA
    from omegaconf import OmegaConf

    from tests.conftest import CONF, ROOT

    node = load_group_config(CONF / "model" / "minimind_o_tiny.yaml").cfg
    cfg = OmegaConf.to_container(node)
    conv = lambda a="two": json.dumps([{"role": "user", "content": "one plus one"},  # noqa: E731
                                       {"role": "assistant", "content": a}])
    codes = list(range(8)) * 3
    good = {"id": "m0", "conversations": conv(), "answer_audios": [codes], "ref_audios": None, "spk_emb": None,
            "question_audios": None, "image_bytes": None}
    rows = [good, {**good, "id": "m1", "question_audios": [float_wav(0.5, np.nan)]}, {**good},
            {**good, "id": "m3", "conversations": conv(" \n ")}]
    path = tmp_path / "d" / "sft.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=WRITE_SCHEMA), path)
    dm = MiniMindODataModule(train=str(path.parent), tokens=cfg["tokens"],
                             tokenizer_path=str(ROOT / "omni" / "minimind_o" / "assets" / "tiny_tokenizer"),
                             audio_encoder=cfg["audio_encoder"], vision_encoder=cfg["vision_encoder"],
                             spk_dim=cfg["spk_dim"], tasks={"t2a": 1.0, "a2a": 1.0}, max_tokens=4096, max_len=512)
    dm.setup("fit")
    assert {(s.row, s.id, s.column, s.reason) for s in dm.indexes["train"].skipped} == {
        (2, "m0", "id", "duplicate_id"), (3, "m3", "conversations", "blank_text")}
    batches = list(dm.train_dataloader())
    assert [(x["row"], x["id"], x["column"], x["reason"]) for b in batches for x in b["skipped"]] == [
        (1, "m1", "question_audios", "nonfinite_audio")]
    assert [i for b in batches for i in b["ids"]] == ["m0"]


def test_finite_check_counts_exactly_when_the_sum_overflows():
    """The backstop's one-pass test (the sum) only routes to the exact count: finite values whose sum overflows
    (float32 2 x 3e38, float16 2 x 6e4) pass; a NaN / inf anywhere fails naming the column and count."""
    from data.dataset import RowError, RowGroupDataset

    ds = RowGroupDataset.__new__(RowGroupDataset)
    ds.feature_columns = {"mels": "question_audio"}
    for ok in (torch.tensor([3e38, 3e38]), torch.tensor([6e4, 6e4], dtype=torch.float16), torch.zeros(2, 3)):
        assert not torch.isfinite(ok.sum()) or ok.abs().max() == 0  # control: the sum alone would flag the first two
        ds._check_finite({"mels": ok})
    for bad, n in ((torch.tensor([1.0, float("nan"), float("inf")]), 2), (torch.tensor([float("-inf"), 1e38]), 1)):
        with pytest.raises(RowError, match=f"holds {n} non-finite"):
            ds._check_finite({"mels": [torch.zeros(1), bad]})
