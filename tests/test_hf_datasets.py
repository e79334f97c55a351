"""Hugging Face datasets as a data source (data/hf.py, `data.source=hf`): small datasets built with `datasets` itself
in tmp folders, in the three published schemas (VoiceAssistant-400K, MiniMind-O's release, ours), read from a
save_to_disk folder, parquet files and a hub id in a local cache (no network)."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from tests.conftest import ROOT, compose_cfg

torch.set_num_threads(1)
datasets = pytest.importorskip("datasets")
TOKENIZER = str(ROOT / "omni" / "assets" / "tiny_tokenizer")
SAMPLE, SAMPLE_MM = ROOT / "data" / "sample", ROOT / "data" / "sample_minimind"


def wav(seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000)).astype(np.float32)
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def snac(frames: list[list[int]]) -> str:
    """VoiceAssistant's answer_snac text: '#' before each frame of 7 codes (spec stream order)."""
    return "".join("# " + " ".join(map(str, f)) + " " for f in frames)


def va_dataset(n: int = 12, bad_snac: int | None = None, bad_audio: int | None = None):
    """n VoiceAssistant-400K rows (question_audio an Audio feature, as published); row i answers with 2 + i % 3
    frames whose codes are i * 7 + k, k = 0, 1, ... (mod 64)."""
    from datasets import Audio, Dataset

    rows = {"split_name": [], "index": [], "round": [], "question": [], "question_audio": [], "answer": [],
            "answer_snac": []}
    for i in range(n):
        nf = 2 + i % 3
        rows["split_name"].append("identity")
        rows["index"].append(i)
        rows["round"].append(0)
        rows["question"].append(f"what is {i}")
        rows["question_audio"].append({"bytes": b"not audio" if i == bad_audio else wav(0.3 + 0.05 * i, i),
                                       "path": None})
        rows["answer"].append(f"it is {i}")
        rows["answer_snac"].append("# 1 2 x" if i == bad_snac else
                                   snac([[(i * 7 + 7 * f + k) % 64 for k in range(7)] for f in range(nf)]))
    # Audio(decode=True) would need torchcodec (not installed): the column is stored as {bytes, path}
    return Dataset.from_dict(rows).cast_column("question_audio", Audio(decode=False))


def mini_omni_args(**hf):
    return dict(tokens=dict(text_vocab=512, codebook_size=64), tokenizer_path=TOKENIZER, n_mels=16,
                max_source_positions=50, tasks={"asr": 1.0, "a1a2": 1.0, "t1t2": 1.0}, max_tokens=400, max_len=200,
                window_rows=8, seed=0, chars_per_token=3.0, source="hf", hf=hf)


def mini_omni_dm(**hf):
    from data.mini_omni.datamodule import MiniOmniDataModule

    return MiniOmniDataModule(**mini_omni_args(**hf))


def populate_hub_cache(repo_id: str, files: list[str], cache: Path) -> None:
    """What an earlier online `load_dataset(repo_id)` of a parquet repo leaves in HF_DATASETS_CACHE:
    <owner>___<snake name>/default/0.0.0/<hash>/{dataset_info.json, <snake name>-train.arrow} (the parquet builder
    with the repo's namespace; `datasets`' offline `load_dataset(repo_id)` resolves it through its cache module)."""
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    builder = Parquet(cache_dir=str(cache), dataset_name=camelcase_to_snakecase(repo_id.split("/")[1]),
                      config_name="default", config_id="default", hash="local", data_files={"train": files})
    builder.repo_id = repo_id  # the namespace folder (the check that data files live in the repo is offline-moot)
    builder._cache_dir = builder._build_cache_dir()
    builder.download_and_prepare()


# -- VoiceAssistant-400K: the column mapping, by hand -----------------------------------------------------------
def test_voiceassistant_rows_map_to_mini_omni_examples(tmp_path):
    va_dataset(6).save_to_disk(tmp_path / "va")
    dm = mini_omni_dm(path=str(tmp_path / "va"))
    dm.setup("fit")
    idx = dm.indexes["train"]
    assert idx.files == [f"hf://{tmp_path / 'va'}/train"] and len(idx) == 6
    # hand table: row i has 2 + i % 3 frames, question audio 0.3 + 0.05 i s (read from the header)
    assert idx.n_frames.tolist() == [2, 3, 4, 2, 3, 4]
    np.testing.assert_allclose(idx.duration, [0.3, 0.35, 0.4, 0.45, 0.5, 0.55], atol=1e-4)
    ex = dm.examples("train", "a1a2", 2)[1]
    assert ex["id"] == "va-identity-1-0" and ex["question_text"] == "what is 1" and ex["answer_text"] == "it is 1"
    want = torch.tensor([[7, 8, 9, 10, 11, 12, 13], [14, 15, 16, 17, 18, 19, 20], [21, 22, 23, 24, 25, 26, 27]])
    assert torch.equal(ex["answer_codes"], want)  # frame t = the t-th '#' group, codes in stream order
    wrong = torch.arange(7, 28).reshape(7, 3).T  # plausible misreading: codebook-major groups
    assert not torch.equal(ex["answer_codes"], wrong)
    assert ex["file"] == idx.files[0] and ex["row"] == 1


def test_bad_rows_are_counted_with_their_ids(tmp_path):
    va_dataset(8, bad_snac=2, bad_audio=5).save_to_disk(tmp_path / "va")
    dm = mini_omni_dm(path=str(tmp_path / "va"))
    dm.setup("fit")
    rows = dm.skipped_report()["rows"]  # index time: the audio header of row 5 cannot be read
    assert [(r["row"], r["id"], r["reason"]) for r in rows] == [(5, "va-identity-5-0", "bad_duration")]
    ds = dm.datasets["train"]
    pos = int(np.flatnonzero(dm.indexes["train"].row_in_file == 2)[0])
    skipped = ds[(pos, "a1a2")]  # load time: answer_snac "# 1 2 x" does not parse
    assert (skipped.row, skipped.id, skipped.column, skipped.reason) == (2, "va-identity-2-0", "answer_codes",
                                                                         "bad_codes")
    assert isinstance(ds[(pos, "t1t2")], dict)  # its text task still trains
    dm_strict = mini_omni_dm(path=str(tmp_path / "va"))
    dm_strict.strict = True
    with pytest.raises(ValueError, match=r"row 5 \(id='va-identity-5-0'\), column 'duration_s'"):
        dm_strict.setup("fit")


def test_config_mistakes_fail_at_start(tmp_path):
    from data.mini_omni.datamodule import MiniOmniDataModule

    args = mini_omni_args(path=str(tmp_path))
    with pytest.raises(ValueError, match=r"data.train='data/x' is set too"):
        MiniOmniDataModule(train="data/x", **args)
    with pytest.raises(ValueError, match="needs data.hf.path"):
        MiniOmniDataModule(**{**args, "hf": {"split": "train"}})
    with pytest.raises(ValueError, match="data.source must be 'parquet' or 'hf', got 'hub'"):
        MiniOmniDataModule(**{**args, "source": "hub"})
    va_dataset(2).save_to_disk(tmp_path / "va")
    dm = mini_omni_dm(path=str(tmp_path / "va"), schema="omni")
    with pytest.raises(ValueError, match=r"data.hf.schema='omni' needs columns"):
        dm.setup("fit")


# -- three sources, one set of rows -----------------------------------------------------------------------------------
def test_save_to_disk_parquet_files_and_cached_hub_id_read_the_same_rows(tmp_path):
    files = sorted(map(str, (SAMPLE / "val").glob("*.parquet")))
    from datasets import Dataset

    Dataset.from_parquet(files).save_to_disk(tmp_path / "saved")
    populate_hub_cache("someone/OmniSample", files, tmp_path / "cache")
    want = pq.read_table(files).column("id").to_pylist()
    got = {}
    for name, hf in (("files", {"path": files}), ("folder", {"path": str(SAMPLE / "val")}),
                     ("saved", {"path": str(tmp_path / "saved")}),
                     ("hub", {"path": "someone/OmniSample", "extra": {"cache_dir": str(tmp_path / "cache")}})):
        dm = mini_omni_dm(**hf)
        dm.setup("fit")
        ds = dm.datasets["train"]
        got[name] = [ds[(i, ds.index.tasks_of(i)[0])]["id"] for i in range(len(ds))]
        assert dm.skipped_report()["rows"] == [] or name  # the sample's own skips, the same for every source
    assert got["files"] == got["folder"] == got["saved"] == got["hub"]
    assert set(got["hub"]) <= set(want) and len(got["hub"]) > 0
    with pytest.raises(ValueError, match="data.hf.path='nobody/Missing'"):
        mini_omni_dm(path="nobody/Missing", extra={"cache_dir": str(tmp_path / "cache")}).setup("fit")


# -- streaming and map-style give the same examples -------------------------------------------------------------------
def pairs(loader) -> list[tuple[str, str]]:
    out = []
    for batch in loader:
        out += list(zip(batch["ids"], batch["tasks"]))
    return sorted(out)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_and_map_style_give_the_same_examples(tmp_path, num_workers):
    va_dataset(14, bad_snac=3).save_to_disk(tmp_path / "va")
    common = dict(path=str(tmp_path / "va"), val_split="train", chunk_rows=4, group_rows=4)
    mapped = mini_omni_dm(**common)
    streamed = mini_omni_dm(**common, streaming=True)
    streamed.num_workers = num_workers
    mapped.setup("fit"), streamed.setup("fit")
    a, b = pairs(mapped.val_dataloader()), pairs(streamed.val_dataloader())
    assert a == b and len(a) == 14 * 3 - 1  # every (row, task) once; row 3's a1a2 is a load-time skip
    # training: the sampler's weighted rule inside each chunk (rows 4, 4, 4, 2): round(n * 1/3) = 1 draw per task
    # per chunk, so 4 per task an epoch (one fewer a1a2 if row 3's is drawn: a load-time skip)
    from collections import Counter

    train = pairs(streamed.train_dataloader())
    counts = Counter(t for _, t in train)
    assert counts["asr"] == counts["t1t2"] == 4 and counts["a1a2"] in (3, 4) and len(counts) == 3


# -- exact resume -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("streaming", [False, True])
def test_lightning_fit_resumes_mid_epoch_exactly(tmp_path, streaming):
    """Fit 2 epochs checkpointing every step; resuming from a mid-epoch / epoch-end checkpoint replays exactly the
    rest of the uninterrupted run's batches."""
    import lightning.pytorch as pl

    from data.mini_omni.datamodule import MiniOmniDataModule

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[tuple] = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, tuple(zip(batch["ids"], batch["tasks"]))))
            return (self.w ** 2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    va_dataset(16).save_to_disk(tmp_path / "va")

    def fit(ckpt_path=None, callbacks=()):
        dm = MiniOmniDataModule(**{**mini_omni_args(path=str(tmp_path / "va"), group_rows=3, chunk_rows=6,
                                                    shuffle_buffer=5, streaming=streaming), "max_tokens": 150, "max_len": 100})
        model = Recorder()
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=list(callbacks), use_distributed_sampler=False,
                             enable_checkpointing=bool(callbacks), default_root_dir=tmp_path / "run",
                             num_sanity_val_steps=0)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model.seen

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1,
                                        save_top_k=-1)
    full = fit(callbacks=[ckpt])
    per_epoch = sum(e == 0 for e, _ in full)  # streaming epochs may differ in length (chunks reshuffled)
    assert per_epoch >= 5 and full[:per_epoch] != full[per_epoch:]
    # streaming: not from the epoch's last step (Lightning, restoring an unsized loader whose epoch had ended, ends
    # the run there instead of starting the next epoch; the map-style loader has a length and resumes exactly)
    for step in (2, per_epoch + 1) if streaming else (2, per_epoch, per_epoch + 1):
        assert fit(ckpt_path=str(tmp_path / "ckpt" / f"step={step}.ckpt")) == full[step:], step


# -- MiniMind-O's released schema ------------------------------------------------------------------------------------
def test_minimind_release_parquet_reads_as_the_parquet_path(tmp_path):
    from data.minimind_o.datamodule import MiniMindODataModule

    files = sorted(map(str, (SAMPLE_MM / "val").glob("*.parquet")))
    cfg = compose_cfg(["stage=sft_t2a", "data=hf_minimind", f"data.hf.path={files[0]}"], tmp_path)
    from omegaconf import OmegaConf

    args = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "_target_"}
    ref_args = {**args, "source": "parquet", "hf": None, "val": str(SAMPLE_MM / "val")}
    hf_dm, ref = MiniMindODataModule(**{**args, "hf": {**args["hf"], "split": None, "val_split": "train"}}), \
        MiniMindODataModule(**ref_args)
    hf_dm.setup("validate"), ref.setup("validate")
    a, b = hf_dm.indexes["val"], ref.indexes["val"]
    assert a.lengths.tolist() == b.lengths.tolist() and a.task_mask.tolist() == b.task_mask.tolist()
    ea, eb = hf_dm.examples("val", "t2a", 3), ref.examples("val", "t2a", 3)
    assert [e["id"] for e in ea] == [e["id"] for e in eb]
    assert all(torch.equal(x["layout"].inputs, y["layout"].inputs) for x, y in zip(ea, eb))


# -- train.py, a few steps per schema -------------------------------------------------------------------------------
def run_train(*args, env_extra=None, timeout=600):
    import os

    env = {"HF_HUB_OFFLINE": "1", "OMNI_AUTO_PRECISION": "32-true", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PATH": os.environ["PATH"],
           "TOKENIZERS_PARALLELISM": "false", "HOME": str(Path.home()), **(env_extra or {})}
    return subprocess.run([sys.executable, "train.py", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("schema", ["voiceassistant", "omni", "minimind_o"])
def test_train_py_runs_a_few_steps_from_each_schema(tmp_path, schema):
    """`python train.py data=hf* ... debug=fast` (the VoiceAssistant run reads its hub id from a local cache)."""
    env = None
    if schema == "voiceassistant":
        va_dataset(12).to_parquet(str(tmp_path / "va.parquet"))
        populate_hub_cache("gpt-omni/VoiceAssistant-400K", [str(tmp_path / "va.parquet")], tmp_path / "cache")
        args, env = ["data=hf_voiceassistant"], {"HF_DATASETS_CACHE": str(tmp_path / "cache")}
    elif schema == "omni":
        args = ["data=hf", f"data.hf.path={SAMPLE / 'train'}", "data.hf.streaming=true", "data.hf.chunk_rows=64"]
    else:
        args = ["stage=sft_t2a", "data=hf_minimind", f"data.hf.path={SAMPLE_MM / 'train'}"]
    res = run_train(*args, "data.hf.val_split='train[:8]'" if "streaming=true" not in " ".join(args)
                    else "data.hf.val_split=train", "test=false", "logger=csv", "callbacks.text_metrics=null",
                    f"hydra.run.dir={tmp_path / 'run'}", f"paths.output_dir={tmp_path / 'run'}", "debug=fast",
                    env_extra=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((tmp_path / "run").rglob("last.ckpt")), res.stdout[-2000:]
