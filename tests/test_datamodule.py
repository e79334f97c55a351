"""ParquetIndex / OmniDataset on shards generated in tmp_path, and OmniDataModule (sample data + Lightning resume)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from data.dataset import Skipped
from data.mini_omni.dataset import OmniDataset, ParquetIndex
from data.mini_omni.schema import SCHEMA
from omni.mini_omni.tokens import MiniOmniTokens

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
SHIPPED_TOKENIZER = ROOT / "omni" / "assets" / "tiny_tokenizer"
TOK = MiniOmniTokens(text_vocab=512, codebook_size=64)
N_MELS, MAX_POS = 16, 50  # 1 s encoder window, 100 mel frames


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """The shipped tiny tokenizer, or a byte-level stand-in saved to a temp folder."""
    if (SHIPPED_TOKENIZER / "tokenizer.json").exists():
        return str(SHIPPED_TOKENIZER)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    out = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(out)
    return str(out)


def wav_bytes(seconds: float, sr: int = 16000, channels: int = 1, seed: int = 0) -> bytes:
    wav = 0.1 * np.random.default_rng(seed).standard_normal((int(seconds * sr), channels)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def row(i: int, *, audio: bytes | None = None, seconds: float = 0.0, q: str | None = "hello there",
        a: str | None = "fine thanks", frames: int = 0, codes: list[int] | None = None, task: str | None = None):
    if frames and codes is None:
        codes = [(i + k) % TOK.codebook_size for k in range(frames * 7)]
    return {"id": f"r{i}", "task": task, "question_text": q, "question_audio": audio, "duration_s": seconds,
            "answer_text": a, "answer_codes": codes, "n_frames": frames, "speaker": "spk", "source": "test"}


def write_shard(path: Path, rows: list[dict], row_group_size: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=row_group_size)
    return path


def good_rows(n: int, start: int = 0) -> list[dict]:
    """Rows serving all six tasks: 0.5 s audio question, transcript, answer text, 3 SNAC frames."""
    return [row(start + i, audio=wav_bytes(0.5, seed=i), seconds=0.5, frames=3) for i in range(n)]


def dataset(index: ParquetIndex, tokenizer_dir: str, **kw) -> OmniDataset:
    return OmniDataset(index, tokenizer_dir, TOK, n_mels=N_MELS, max_source_positions=MAX_POS, **kw)


def test_index_reads_only_light_columns(tmp_path, monkeypatch):
    path = write_shard(tmp_path / "s.parquet", good_rows(10))
    reads, requested = [], []
    real_read = pq.ParquetFile.read
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, *a, **k: reads.append(a))
    monkeypatch.setattr(pq.ParquetFile, "read",
                        lambda self, columns=None, **k: requested.append(columns) or real_read(self, columns, **k))
    index = ParquetIndex(tmp_path, window_s=1.0, max_len=512, chars_per_token=1.0, max_audio_frames=MAX_POS)
    assert reads == [] and requested and all(c is not None for c in requested)
    assert not {"question_audio", "answer_codes"} & {c for cols in requested for c in cols}
    assert len(index) == 10 and index.files == [str(path)] and index.n_groups == 3
    arrays = [v for v in vars(index).values() if isinstance(v, np.ndarray)]
    assert arrays and all(a.dtype != object for a in arrays)  # compact numeric arrays, no bytes
    assert index.tasks_of(0) == ["asr", "a1t2", "a1a2", "t1t2", "t1a2", "tts"]
    assert index.row_in_group.tolist()[:6] == [0, 1, 2, 3, 0, 1]


def test_row_group_cache_is_bounded_lru(tmp_path, tokenizer_dir):
    write_shard(tmp_path / "s.parquet", [row(i) for i in range(20)], row_group_size=4)  # text-only, 5 groups
    ds = dataset(ParquetIndex(tmp_path, chars_per_token=1.0), tokenizer_dir, cache_row_groups=2)
    for r in range(20):
        assert ds[(r, "t1t2")]["id"] == f"r{r}"
        assert len(ds._cache) <= 2
    assert ds.group_reads == 5  # one read per group, rows of a group come from the cache
    ds[(17, "t1t2")]  # still cached (last group)
    assert ds.group_reads == 5
    ds[(0, "t1t2")]
    assert ds.group_reads == 6 and len(ds._cache) == 2


def test_44k_stereo_becomes_16k_mono_mel(tmp_path, tokenizer_dir):
    audio = wav_bytes(0.7, sr=44100, channels=2)
    write_shard(tmp_path / "s.parquet", [row(0, audio=audio, seconds=0.7)])
    ds = dataset(ParquetIndex(tmp_path, window_s=1.0, chars_per_token=1.0), tokenizer_dir)
    ex = ds[(0, "asr")]
    assert ex["mels"].shape == (N_MELS, 2 * MAX_POS) and ex["mels"].dtype == torch.float32
    assert ex["n_audio_frames"] == int(700 / 20) + 1
    assert ex["answer_ids"] == ds.tokenizer.encode("hello there", add_special_tokens=False)
    assert ex["question_ids"] is None and ex["answer_codes"] is None and ex["row"] == 0


def test_corrupt_rows_are_skipped_or_raise_when_strict(tmp_path, tokenizer_dir):
    rows = good_rows(3) + [row(3, audio=b"RIFF not a wav at all", seconds=0.5, frames=3),
                           row(4, audio=wav_bytes(0.5), seconds=0.5, frames=2, codes=[999] * 14)]
    path = write_shard(tmp_path / "s.parquet", rows)
    index = ParquetIndex(tmp_path, window_s=1.0, chars_per_token=1.0)
    skipped = dataset(index, tokenizer_dir)[(3, "asr")]
    assert isinstance(skipped, Skipped)
    assert (skipped.file, skipped.row, skipped.id, skipped.column) == (str(path), 3, "r3", "question_audio")
    bad_codes = dataset(index, tokenizer_dir)[(4, "tts")]
    assert isinstance(bad_codes, Skipped) and bad_codes.column == "answer_codes"
    assert dataset(index, tokenizer_dir)[(4, "asr")]["id"] == "r4"  # codes unused by asr: row still fine
    with pytest.raises(ValueError, match=r"s\.parquet: row 3 \(id='r3'\), column 'question_audio'"):
        dataset(index, tokenizer_dir, strict=True)[(3, "a1t2")]


def test_over_long_and_empty_rows_are_counted_at_index_time(tmp_path):
    rows = good_rows(2) + [
        row(2, audio=wav_bytes(0.1), seconds=3.0, q=None, a=None),  # audio alone serves no task
        row(3, q=None, a=None),  # empty
        row(4, audio=wav_bytes(0.1), seconds=3.0, frames=2),  # long audio: keeps its text tasks
        row(5, q="x" * 600, a="y"),  # t1t2 longer than max_len
        row(6, q="q", a=None, task="tts"),  # task set but fields missing
    ]
    path = write_shard(tmp_path / "s.parquet", rows)
    index = ParquetIndex(path, window_s=1.0, max_len=300, chars_per_token=1.0, max_audio_frames=MAX_POS)
    reasons = {(s.row, s.reason) for s in index.skipped}
    assert reasons == {(2, "empty"), (3, "empty"), (4, "audio_too_long"),
                       (5, "too_long"), (6, "empty")}
    assert len(index) == 3  # rows 0, 1 and 4 (text tasks only)
    assert index.tasks_of(2) == ["t1t2", "t1a2", "tts"]  # kept row 2 = file row 4
    assert all(s.file == str(path) and s.id == f"r{s.row}" for s in index.skipped)


@pytest.fixture(scope="module")
def lightning_free_dm_args(tokenizer_dir):
    return dict(tokens=dict(text_vocab=512, codebook_size=4096), tokenizer_path=tokenizer_dir, n_mels=N_MELS,
                max_source_positions=100, tasks={"asr": 1.0, "a1a2": 1.0, "t1t2": 0.5, "tts": 0.5},
                max_tokens=1024, max_len=256, window_rows=64, seed=0)


def sample_or_generated(tmp_path: Path) -> tuple[str, str]:
    if (SAMPLE / "train").is_dir() and list((SAMPLE / "train").glob("*.parquet")):
        return str(SAMPLE / "train"), str(SAMPLE / "val")
    for k in range(2):
        write_shard(tmp_path / "train" / f"shard-{k}.parquet", good_rows(12, start=12 * k))
    write_shard(tmp_path / "val" / "shard-0.parquet", good_rows(6, start=100))
    return str(tmp_path / "train"), str(tmp_path / "val")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_datamodule_yields_batches_and_round_trips_state(tmp_path, lightning_free_dm_args, num_workers):
    from data.mini_omni.datamodule import MiniOmniDataModule as OmniDataModule

    train, val = sample_or_generated(tmp_path)
    dm = OmniDataModule(train=train, val=val, num_workers=num_workers, **lightning_free_dm_args)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    assert all(b["input_ids"].shape[0] > 0 and b["input_ids"].shape[1] == 8 for b in first)
    assert all(b["attention_mask"].sum() == b["n_tokens"] for b in first)
    state = loader.state_dict()
    assert state == {"epoch": 0, "consumed": 3}  # yielded batches, not the workers' prefetched ones
    rest = [next(it)["ids"] for _ in range(2)]
    again = dm.train_dataloader()
    again.load_state_dict(state)
    assert again.state_dict() == state
    resumed = iter(again)
    assert [next(resumed)["ids"] for _ in range(2)] == rest
    assert again.state_dict() == {"epoch": 0, "consumed": 5} and len(again) == len(loader)
    assert next(iter(dm.val_dataloader()))["n_tokens"] > 0
    assert set(dm.skipped_report()) == {"counts", "by_split", "rows"}


@pytest.mark.parametrize(("num_workers", "early_len"), [(0, False), (0, True), (2, True)])
def test_lightning_fit_resumes_mid_epoch_and_at_epoch_end(tmp_path, tokenizer_dir, num_workers, early_len):
    """Fit 2 epochs saving a checkpoint every step; resuming from any of them replays exactly the rest.
    early_len: configure_optimizers reads estimated_stepping_batches, which builds the train loader before the
    checkpoint is restored (Lightning #20550; the DataModule's own state_dict covers it)."""
    import lightning.pytorch as pl

    from data.mini_omni.datamodule import MiniOmniDataModule as OmniDataModule

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[tuple] = []

        def training_step(self, batch, batch_idx):
            self.seen.append(tuple(zip(batch["ids"], batch["tasks"])))
            return (self.w ** 2).sum() + 0.0 * batch["n_tokens"]

        def configure_optimizers(self):
            if early_len:
                assert self.trainer.estimated_stepping_batches > 0
            return torch.optim.SGD(self.parameters(), lr=0.1)

    rows = [row(i, audio=wav_bytes(0.3, seed=i), seconds=0.3, a="ok " * (i % 5 + 1), frames=2) for i in range(20)]
    write_shard(tmp_path / "data" / "a.parquet", rows[:8], row_group_size=3)
    write_shard(tmp_path / "data" / "b.parquet", rows[8:], row_group_size=3)

    def fit(ckpt_path=None, callbacks=()):
        dm = OmniDataModule(train=str(tmp_path / "data"), tokens=dict(text_vocab=512, codebook_size=64),
                            tokenizer_path=tokenizer_dir, n_mels=N_MELS, max_source_positions=MAX_POS,
                            tasks={"asr": 1.0, "t1t2": 1.0, "tts": 1.0}, max_tokens=120, max_len=60,
                            window_rows=8, seed=1, num_workers=num_workers)
        model = Recorder()
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=list(callbacks), use_distributed_sampler=False,
                             enable_checkpointing=bool(callbacks), default_root_dir=tmp_path / "run")
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model.seen

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1,
                                        save_top_k=-1)
    full = fit(callbacks=[ckpt])
    per_epoch = len(full) // 2
    assert per_epoch >= 5 and full[:per_epoch] != full[per_epoch:]
    assert {t for batch in full for _, t in batch} == {"asr", "t1t2", "tts"}
    for step in (2, per_epoch, per_epoch + 1):  # mid epoch 0, end of epoch 0, mid epoch 1
        assert fit(ckpt_path=str(tmp_path / "ckpt" / f"step={step}.ckpt")) == full[step:], step


def test_ranks_come_from_the_trainer_and_distributed_sampler_must_be_off(tmp_path, tokenizer_dir):
    from types import SimpleNamespace

    from data.mini_omni.datamodule import MiniOmniDataModule as OmniDataModule

    write_shard(tmp_path / "d" / "a.parquet", [row(i, a="answer " * (i % 4 + 1)) for i in range(24)])
    dm = OmniDataModule(train=str(tmp_path / "d"), tokens=dict(text_vocab=512), tokenizer_path=tokenizer_dir,
                        tasks={"t1t2": 1.0}, max_tokens=200, max_len=100)
    connector = SimpleNamespace(use_distributed_sampler=True)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2, _accelerator_connector=connector)
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        dm.train_dataloader()
    connector.use_distributed_sampler = False
    loaders = [dm.train_dataloader()]
    dm.trainer.global_rank = 0
    loaders.append(dm.train_dataloader())
    ids = [[i for b in loader for i in b["ids"]] for loader in loaders]
    assert len(loaders[0]) == len(loaders[1]) > 0 and not set(ids[0]) & set(ids[1])
    assert dm.val_dataloader() == []
