"""Streaming data: session builder (reply placement), schema errors naming file/row/column, exact index lengths,
the datamodule on the bundled sessions (held-out voices), and precomputed features == on-the-fly encoding."""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data.audio import encode_flac
from data.mini_omni3.builder import Turn, build_session, offline_row, session_row
from data.mini_omni3.collate import StreamingCollator
from data.mini_omni3.dataset import StreamingDataset, StreamingIndex
from data.mini_omni3.datamodule import StreamingDataModule
from data.mini_omni3.features import precompute
from data.mini_omni3.schema import SCHEMA, empty_row
from omni.mini_omni3.tokens import MiniOmni3Tokens

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample_streaming"
TOKENIZER = ROOT / "omni" / "assets" / "tiny_tokenizer"
TOK = MiniOmni3Tokens.after_vocab(512)
SR = 16000


def tone(seconds: float, f: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def test_reply_on_chunk_floor_whole_frames_over_10():
    """Released placement (spec, pinned facts): the clip is cropped to whole 40 ms (640-sample) frames; F = whole
    frames of the session up to the clip's end; the reply goes on chunk F // 10. Leads are cropped to whole frames
    too, so each clip ends on a frame boundary (the reply chunk then holds >= 0.04 s after the speech, spec
    "Training data"). Hand-computed table:
    turn 1: lead 8000 -> 7680 + clip 16000 (25 frames, no crop)  -> end 23680 (1.48 s), F = 37 -> chunk 3
    turn 2: lead 4800 -> 4480 + clip 8000 -> 7680                -> end 35840 (2.24 s), no reply
    turn 3: lead 8000 -> 7680 + clip 9920 (15.5 frames) -> 9600  -> end 53120 (3.32 s), F = 83 -> chunk 8"""
    turns = [Turn(tone(1.0), "four", lead=silence(0.5)),
             Turn(tone(0.5), None, lead=silence(0.3), kind="ambient"),
             Turn(tone(0.62), "urgent help", "urgent", lead=silence(0.5))]
    s = build_session(turns, tail=silence(0.1))
    assert s.replies == [(3, "four", "normal"), (8, "urgent help", "urgent")]
    assert s.turn_end_s == [1.48, 2.24, 3.32] and s.turn_kind == ["speech", "ambient", "speech"]
    # 53120 + 1600 tail = 54720 samples, extended with silence to 9 * 6400 so that reply chunk 8 exists
    assert s.n_chunks == 9 and len(s.audio) == 57600
    # 1.19 s = 19040 samples -> cropped to 29 frames (18560) -> chunk 2 (the old "first chunk ending >= 0.04 s
    # after the speech" rule said 3)
    short = build_session([Turn(tone(1.19), "x")])
    assert short.replies[0][0] == 2 and short.n_chunks == 3 and len(short.audio) == 3 * 6400
    # the crop decides: lead 100 -> 0 + clip 6350 -> 5760 (9 frames) -> end 5760, F = 9 -> chunk 0
    # (without the crops: end 6450, F = 10 -> chunk 1)
    cropped = build_session([Turn(tone(6350 / SR), "y", lead=silence(100 / SR))])
    assert cropped.replies[0][0] == 0 and len(cropped.audio) == 6400
    assert cropped.turn_end_s[0] == pytest.approx(5760 / SR, abs=1e-4)
    # the lead crop: lead 600 + clip 6000 -> 0 + 5760 -> end 5760, F = 9 -> chunk 0, whose last frame (640 samples,
    # 0.04 s) is after the speech; with the lead uncropped the speech would end at 6360, 40 samples before the end
    # of its reply chunk
    aligned = build_session([Turn(tone(6000 / SR), "w", lead=silence(600 / SR))])
    assert aligned.replies[0][0] == 0 and aligned.turn_end_s[0] == pytest.approx(5760 / SR, abs=1e-4)
    assert np.abs(aligned.audio[5760:]).max() == 0.0 and np.abs(aligned.audio[5120:5760]).max() > 0.1
    # a reply past the audio extends the session with silence: clip 6400 (10 frames) -> F = 10 -> chunk 1
    past = build_session([Turn(tone(0.4), "z")])
    assert past.replies[0][0] == 1 and past.n_chunks == 2 and len(past.audio) == 2 * 6400
    with pytest.raises(ValueError, match="both answer chunk 2"):
        build_session([Turn(tone(0.9), "a"), Turn(tone(0.1), "b")])
    with pytest.raises(ValueError, match="emotion"):
        Turn(tone(0.1), "a", "bored")


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


def good_rows() -> list[dict]:
    s = build_session([Turn(tone(1.0), "seven", lead=silence(0.3)), Turn(tone(0.6), None, lead=silence(0.4))],
                      tail=silence(0.6))
    return [session_row("s0", s, encode_flac, speaker="v"),
            offline_row("o0", "paris", encode_flac, audio=tone(0.9), user_text="hello")]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def test_index_lengths_are_exact_and_bad_rows_are_named(tmp_path, tokenizer):
    bad = [empty_row(id="b0", mode="online", audio=b"junk", n_chunks=2, reply_chunk=[5], reply_text=["x"]),
           empty_row(id="b1", mode="chatty", n_chunks=1),
           empty_row(id="b2", mode="online", audio=b"junk", n_chunks=2, reply_chunk=[0], reply_text=["x"],
                     reply_emotion=["bored"])]
    path = write_rows(tmp_path / "d" / "s.parquet", good_rows() + bad)
    index = StreamingIndex(str(path), tokenizer, TOK, [5, 6, 7])
    assert len(index) == 2 and [s.reason for s in index.skipped] == ["bad_labels", "bad_mode", "bad_labels"]
    assert [(s.row, s.column) for s in index.skipped] == [(2, "reply_chunk"), (3, "mode"), (4, "reply_emotion")]
    ds = StreamingDataset(index, [5, 6, 7])
    for i in range(2):
        ex = ds[i]
        length = int(index.lengths[i].max())
        assert len(ex["sequence"]) == length
    online = ds[0]["sequence"]
    assert online.n_chunks == 8 and online.reply_chunks == [3] and ds[0]["mels"].shape == (8, 128, 40)  # 2.9 s
    # offline 0.9 s clip: one whole-clip log-mel of 14400 // 160 = 90 frames -> one tower call ->
    # conv2 (90 - 1) // 2 + 1 = 45 -> pooling (45 - 2) // 2 + 1 = 22 AUDIO_PAD (not 3 chunks x 10 = 30)
    assert ds[1]["sequence"].mode == "offline" and ds[1]["mels"].shape == (128, 90)
    assert len(ds[1]["sequence"].audio_positions) == 22
    with pytest.raises(ValueError, match=r"s\.parquet: row 2 \(id='b0'\), column 'reply_chunk'"):
        StreamingIndex(str(path), tokenizer, TOK, [5], strict=True)
    # a load-time problem: the audio does not hold n_chunks chunks
    rows = good_rows()
    rows[0]["n_chunks"] = 10
    rows[0]["reply_chunk"] = [9]
    ds2 = StreamingDataset(StreamingIndex(str(write_rows(tmp_path / "e.parquet", rows)), tokenizer, TOK, [5]), [5],
                           strict=True)
    with pytest.raises(ValueError, match=r"e\.parquet: row 0 \(id='s0'\), column 'n_chunks': the audio has 8"):
        ds2[0]
    with pytest.raises(ValueError, match=r"f\.parquet: missing column 'mode'"):
        pq.write_table(pa.Table.from_pylist([{"id": "x"}]), tmp_path / "f.parquet")
        StreamingIndex(str(tmp_path / "f.parquet"), tokenizer, TOK, [5])


def test_bundled_sample_datamodule():
    dm = StreamingDataModule(train=str(SAMPLE / "train"), val=str(SAMPLE / "val"), test=str(SAMPLE / "test"),
                             tokens={"after_vocab": 512}, tokenizer_path=str(TOKENIZER),
                             tasks={"online": 1.0, "offline": 0.25}, max_tokens=4096, max_len=2048)
    dm.setup()
    assert not dm.skipped_report()["rows"]
    speakers = {split: set() for split in ("train", "val", "test")}
    for split in speakers:
        idx = dm.indexes[split]
        assert len(idx.rows_for("online")) >= 12 and len(idx.rows_for("offline")) >= 6
        table = pq.read_table(idx.files[0], columns=["speaker", "reply_chunk", "turn_kind"])
        speakers[split] = set(table.column("speaker").to_pylist())
        kinds = {k for ks in table.column("turn_kind").to_pylist() if ks for k in ks}
        assert {"question", "ambient"} <= kinds  # questions and background sounds
    assert not speakers["train"] & (speakers["val"] | speakers["test"])  # held-out voices
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == len(batch["ids"]) and batch["audio_mels"].shape[1:] == (128, 40)
    assert batch["audio_positions"].numel() == batch["audio_mels"].shape[0] * 10
    assert set(batch["tasks"]) <= {"online", "offline"}
    with pytest.raises(ValueError, match="valid tasks"):
        StreamingDataModule(train="x", tokens={"after_vocab": 512}, tokenizer_path=str(TOKENIZER),
                            tasks={"onlin": 1.0})


def test_precomputed_features_match_on_the_fly(tmp_path, tokenizer):
    from omni.mini_omni3.model import MiniOmni3, config_from_yaml

    torch.manual_seed(0)
    model = MiniOmni3(config_from_yaml(str(ROOT / "conf" / "model" / "mini_omni3_tiny.yaml"))).eval()
    src = write_rows(tmp_path / "raw" / "s.parquet", good_rows())
    out = precompute(str(src.parent), str(tmp_path / "feats"), model.audio_encoder, 128, drop_audio=True)
    table = pq.read_table(out[0])
    assert table.column("audio").to_pylist() == [None, None] and table.column("feature_dim").to_pylist() == [64, 64]
    sys_ids = [5, 6]
    batches = []
    for folder in (src.parent, tmp_path / "feats"):
        ds = StreamingDataset(StreamingIndex(str(folder), tokenizer, TOK, sys_ids), sys_ids)
        batches.append(StreamingCollator(TOK)([ds[0], ds[1]]))
    assert batches[0]["audio_features"] is None and batches[1]["audio_mels"] is None
    with torch.no_grad():
        a, b = model(batches[0]), model(batches[1])
    torch.testing.assert_close(a["loss"], b["loss"], rtol=2e-3, atol=2e-3)  # float16 storage


def test_precomputed_features_read_as_that_rows_float16_values(tmp_path, tokenizer):
    """`features` come straight from Arrow as the row's own (n_chunks * 10 * dim,) float16 values (hand-made:
    row k holds 0.5 * arange(80) + k), across row groups; a wrong length is still `bad_features`. Control: the
    one-row slice's unsliced child array (`.values`, the plausible slip) holds every row of the group."""
    dim, n = 4, 2
    rows = [empty_row(id=f"f{k}", mode="online", n_chunks=n, reply_chunk=[1], reply_text=["seven"], feature_dim=dim,
                      features=(0.5 * np.arange(n * 10 * dim) + k).tolist()) for k in range(5)]
    rows[4]["features"] = rows[4]["features"][:-dim]  # one frame short
    path = tmp_path / "d" / "s.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=2)
    ds = StreamingDataset(StreamingIndex(str(path), tokenizer, TOK, [5]), [5])
    for k in range(4):
        rec = ds._row(k)
        assert rec["features"].dtype == np.float16 and rec["id"] == f"f{k}"
        np.testing.assert_array_equal(rec["features"].astype(np.float64), 0.5 * np.arange(n * 10 * dim) + k)
        ex = ds[k]
        assert ex["features"].shape == (n, 10, dim) and ex["features"].dtype == torch.float32
        assert float(ex["features"][1, 9, 3]) == 0.5 * 79 + k
    assert ds[4].reason == "bad_features"
    group = pq.ParquetFile(path).read_row_group(0)
    assert len(group.slice(1, 1).column("features").chunk(0).values) == 2 * n * 10 * dim  # control
