"""MiniMind-O data: the released parquet schema read as is, the bundled sample, bad rows skipped+counted or strict,
augmentations on train only, and the preparation command (tiny Mimi + a local x-vector folder)."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from data.audio import encode_flac
from data.minimind_o.datamodule import MiniMindODataModule
from omni.config import load_group_config
from omni.minimind_o.model import MiniMindOConfig
from tests.conftest import CONF, ROOT

torch.set_num_threads(1)
SAMPLE = ROOT / "data" / "sample_minimind"
TOKENIZER = ROOT / "omni" / "minimind_o" / "assets" / "tiny_tokenizer"


@pytest.fixture(scope="module")
def model_cfg():
    node = load_group_config(CONF / "model" / "minimind_o_tiny.yaml").cfg
    node.tokenizer_path = str(TOKENIZER)
    raw = OmegaConf.to_container(node)
    raw.pop("_target_"), raw.pop("_convert_")
    return raw


def datamodule(model_cfg, **kw):
    args = dict(train=str(SAMPLE / "train"), val=str(SAMPLE / "val"), tokens=model_cfg["tokens"],
                tokenizer_path=str(TOKENIZER), audio_encoder=model_cfg["audio_encoder"],
                vision_encoder=model_cfg["vision_encoder"], spk_dim=model_cfg["spk_dim"],
                tasks={"t2a": 1.0, "a2a": 1.0, "i2t": 1.0}, max_tokens=4096, max_batch_size=8, max_len=512)
    args.update(kw)
    return MiniMindODataModule(**args)


def test_bundled_sample_batches_per_task(model_cfg):
    dm = datamodule(model_cfg)
    dm.setup("fit")
    index = dm.indexes["train"]
    assert not index.skipped and len(index) == 236
    assert [len(index.rows_for(t)) for t in ("t2a", "a2a", "i2t")] == [124, 64, 48]
    tok, seen = dm.tokens, set()
    for batch in dm.train_dataloader():
        text = batch["input_ids"][:, 8]
        n_audio = int((text == tok.audio_pad).sum())
        assert n_audio == int(batch["audio_frames"].sum())  # one <|audio_pad|> per encoder frame
        n_img = 0 if batch["pixel_values"] is None else batch["pixel_values"].shape[0]
        assert int((text == tok.image_pad).sum()) == 64 * n_img and (n_img == 0 or
                                                                     batch["pixel_values"].shape[1:] == (3, 64, 64))
        assert batch["input_ids"].shape[0] * batch["input_ids"].shape[2] <= 4096
        assert batch["n_tokens"] == int(batch["attention_mask"].sum())
        seen.update(batch["tasks"])
        for i, task in enumerate(batch["tasks"]):
            has_audio_targets = bool((batch["targets"][i, :8] != -100).any())
            assert has_audio_targets == (task != "i2t")
    assert seen == {"t2a", "a2a", "i2t"}


def test_eval_split_is_deterministic_and_train_is_augmented(model_cfg):
    dm = datamodule(model_cfg, augment={"keep_ref": 0.5, "system_prompt": 1.0, "keep_think": 1.0,
                                        "scheduled_sampling": 0.0})
    dm.setup("fit")
    val, train = dm.datasets["val"], dm.datasets["train"]
    assert val.augment is None and train.augment is not None
    row = int(val.index.rows_for("t2a")[0])
    a, b = val[(row, "t2a")], val[(row, "t2a")]
    assert torch.equal(a["layout"].inputs, b["layout"].inputs)
    tok = dm.tokens
    row = int(train.index.rows_for("t2a")[1])  # a conditioned row (reference + speaker)
    plain = dm.datasets["train"].reader.layout(dm.datasets["train"].reader.plan(
        train._row(row), lambda d: 0, None, None))
    refs = set()
    for _ in range(6):
        ex = train[(row, "t2a")]
        text = ex["layout"].inputs[8].tolist()
        assert tok.think_start in text and ex["layout"].length > plain.length  # think block + system prompt
        refs.add(int((ex["layout"].inputs[0, : ex["layout"].start] < tok.codebook_size).sum()))
    assert {r > 0 for r in refs} == {True, False}  # the reference is kept or dropped (p = 0.5)


def write_rows(path, rows, schema=None):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def conv(q="what is one plus one", a="two"):
    return json.dumps([{"role": "user", "content": q}, {"role": "assistant", "content": a}])


def wav(seconds=0.5, sr=16000):
    return encode_flac(0.1 * np.sin(np.arange(int(sr * seconds)) * 0.05), sr)


def test_released_types_read_as_is_and_bad_rows_skipped(tmp_path, model_cfg):
    """Released types (int64 codes, float64 embeddings, list<binary> images, no id column) and one bad row per
    failure mode: skipped and counted with file / row / column, or a strict error naming them."""
    codes = list(range(8)) * 3
    schema = pa.schema([("conversations", pa.string()), ("answer_audios", pa.list_(pa.list_(pa.int64()))),
                        ("ref_audios", pa.list_(pa.int64())), ("spk_emb", pa.list_(pa.float64())),
                        ("question_audios", pa.list_(pa.binary())), ("image_bytes", pa.list_(pa.binary()))])
    good = {"conversations": conv(), "answer_audios": [codes], "ref_audios": codes, "spk_emb": [0.5] * 256,
            "question_audios": None, "image_bytes": None}
    rows = [
        good,
        {**good, "question_audios": [wav()]},                                     # a2a
        {**good, "conversations": "{not json"},                                    # bad JSON
        {**good, "answer_audios": [[5000] * 8]},                                   # code out of range
        {**good, "answer_audios": [codes, codes]},                                 # 2 audios, 1 assistant turn
        {**good, "question_audios": [b"garbage bytes"]},                          # undecodable audio
        {**good, "spk_emb": [0.5] * 192},                                          # wrong embedding width
        {**good, "conversations": conv(q="one " * 1200)},                           # prompt too long
        {**good, "answer_audios": None},                                           # text only: trains its text
        {**good, "conversations": conv(a="two " * 1200)},                           # answer cut at max_len
    ]
    path = tmp_path / "sft_t2a_mini.parquet"
    write_rows(path, rows, schema)
    dm = datamodule(model_cfg, train=str(path), val=None, tasks={"t2a": 1.0, "a2a": 1.0})
    dm.setup("fit")
    index = dm.indexes["train"]
    reasons = {(s.row, s.column, s.reason) for s in index.skipped}
    assert reasons == {(2, "conversations", "bad_conversation"), (3, "answer_audios", "bad_codes"),
                       (4, "answer_audios", "bad_codes"), (5, "question_audios", "bad_audio"),
                       (6, "spk_emb", "bad_speaker"), (7, "conversations", "too_long")}
    assert all(s.file == str(path) and s.id == f"sft_t2a_mini:{s.row}" for s in index.skipped)
    assert list(index.row_in_file) == [0, 1, 8, 9] and index.tasks_of(1) == ["a2a"]
    assert dm.skipped_report()["counts"]["bad_codes"] == 2
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["tasks"]) <= {"a2a", "t2a"} and batch["speaker_emb"].shape == (len(batch["tasks"]), 256)
    strict = datamodule(model_cfg, train=str(path), val=None, tasks={"t2a": 1.0}, strict=True)
    with pytest.raises(ValueError, match=r"sft_t2a_mini.parquet: row 2 .*column 'conversations'"):
        strict.setup("fit")


def test_load_time_bad_image_is_skipped_and_schema_errors_name_the_column(tmp_path, model_cfg):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (255, 0, 0)).save(buf, format="PNG")
    rows = [{"conversations": conv("<image>what colour"), "image_bytes": buf.getvalue()},
            {"conversations": conv("<image>what colour"), "image_bytes": b"not an image"}]
    path = tmp_path / "i2t.parquet"
    write_rows(path, rows)
    dm = datamodule(model_cfg, train=str(path), val=None, tasks={"i2t": 1.0})
    dm.setup("fit")
    ds = dm.datasets["train"]
    assert isinstance(ds[(0, "i2t")], dict)
    bad = ds[(1, "i2t")]
    assert (bad.row, bad.column, bad.reason) == (1, "image_bytes", "bad_image")
    wrong = tmp_path / "wrong.parquet"
    write_rows(wrong, [{"conversations": conv(), "answer_audios": "not codes"}])
    with pytest.raises(ValueError, match="column 'answer_audios' has type string"):
        datamodule(model_cfg, train=str(wrong), val=None, tasks={"t2a": 1.0}).setup("fit")
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['a1a2'\]; valid tasks: \['t2a', 'a2a', 'i2t'\]"):
        datamodule(model_cfg, tasks={"a1a2": 1.0})


def tiny_xvector_folder(path) -> str:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=4, xvector_output_dim=256, tdnn_dim=(32, 32, 256),
                      tdnn_kernel=(3, 1, 1), tdnn_dilation=(1, 1, 1), num_buckets=32, max_bucket_distance=64)
    torch.manual_seed(0)
    WavLMForXVector(cfg).save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(path)
    return str(path)


def test_prepare_builds_the_released_schema(tmp_path, model_cfg):
    import soundfile as sf

    from data.minimind_o.prepare import PrepareError, prepare_manifest

    for name, sec in (("q.wav", 0.6), ("a.wav", 0.5), ("ref.wav", 0.8)):
        sf.write(tmp_path / name, 0.1 * np.sin(np.arange(int(24000 * sec)) * 0.03), 24000)
    from PIL import Image

    Image.new("RGB", (30, 30), (0, 0, 255)).save(tmp_path / "img.png")
    two = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
           {"role": "user", "content": "what is one plus one"}, {"role": "assistant", "content": "two"}]
    lines = [
        {"id": "t2a", "conversations": two, "answer_audios": [None, "a.wav"], "ref_audio": "ref.wav"},
        {"id": "a2a", "conversations": two[2:], "question_audios": ["q.wav"], "answer_audios": ["a.wav"]},
        {"id": "i2t", "conversations": [{"role": "user", "content": "<image>what colour"},
                                        {"role": "assistant", "content": "blue"}], "image": "img.png"},
        {"id": "bad", "conversations": two, "question_audios": ["q.wav"]},       # 1 clip for 2 user turns
        {"id": "missing", "conversations": two[2:], "answer_audios": ["nope.wav"]},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    xvec = tiny_xvector_folder(tmp_path / "xvector")
    out = tmp_path / "out"
    report = prepare_manifest(str(manifest), str(tmp_path), str(out), codec_arch="tiny", speaker_model=xvec)
    assert report.n_written == 3 and [s["id"] for s in report.skipped] == ["bad", "missing"]
    assert [s["field"] for s in report.skipped] == ["question_audios", "answer_audios"]
    table = pq.read_table(out / "shard-00000.parquet")
    rec = table.to_pylist()[0]
    assert len(rec["answer_audios"]) == 2 and len(rec["answer_audios"][1]) == 8 * 7  # 0.5 s -> 7 frames of 8
    assert rec["answer_audios"][0] == [] and len(rec["ref_audios"]) == 8 * 10 and len(rec["spk_emb"]) == 256
    dm = datamodule(model_cfg, train=str(out), val=None, tasks={"t2a": 1.0, "a2a": 1.0, "i2t": 1.0})
    dm.setup("fit")
    assert not dm.indexes["train"].skipped and len(dm.indexes["train"]) == 3
    with pytest.raises(PrepareError, match=r"m.jsonl:4: field 'question_audios'"):
        prepare_manifest(str(manifest), str(tmp_path), str(tmp_path / "o2"), codec_arch="tiny", speaker_model=xvec,
                         strict=True)


def test_sample_matches_tiny_model_and_runs_a_step(model_cfg):
    from omni.minimind_o.model import MiniMindO

    dm = datamodule(model_cfg, max_batch_size=4)
    dm.setup("fit")
    torch.manual_seed(0)
    model = MiniMindO(MiniMindOConfig(**model_cfg))
    for batch in dm.val_dataloader():
        out = model(batch)
        assert torch.isfinite(out["loss"])
        break


def test_question_audio_augmentation_applies_on_train_only(model_cfg):
    from data.audio import decode_audio

    dm = datamodule(model_cfg, augment={"waveform": 1.0, "spec_augment": 1.0, "system_prompt": 0.0,
                                        "keep_think": 0.0, "scheduled_sampling": 0.0})
    dm.setup("fit")
    train = dm.datasets["train"]
    row = int(train.index.rows_for("a2a")[0])
    clip = train._row(row)["question_audios"][0]
    plain = dm.audio_spec.features(decode_audio(clip, 16000))
    ex = train[(row, "a2a")]
    assert ex["audio_mels"][0].shape == plain.shape and not torch.equal(ex["audio_mels"][0], plain)
    assert ex["audio_frames"] == [dm.audio_spec.frames(len(decode_audio(clip, 16000)))]
