"""Lightning DataModule for MiniMind-O parquet splits (the released schema, data/minimind_o/schema.py).

It reuses `data.datamodule.OmniDataModule`'s loaders unchanged (TokenBudgetBatchSampler with length bucketing and
rank sharding, ResumableDataLoader with its resume bookkeeping, skip reports, `examples()`); only the index,
dataset and collator are MiniMind-O's. Tasks: {t2a, a2a, i2t} weights. Training augmentations (`augment`) apply
to the train split only. `examples()` (text metrics, eval.py) adds what evaluation reports: the question text and
the answer voice (`voice_id`) with whether the train split has it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow.compute as pc

from data.datamodule import OmniDataModule
from data.minimind_o.collate import MiniMindOCollator
from data.dataset import expand_paths, open_table
from data.minimind_o.dataset import MiniMindODataset, MiniMindOIndex, RowReader, header_samples
from data.minimind_o.schema import TASKS
from omni.minimind_o.encoders import AudioEncoderSpec, VisionEncoderSpec
from omni.minimind_o.layout import IMAGE_PLACEHOLDER, Augment
from omni.minimind_o.tokens import MiniMindOTokens


def _spec(cls, value):
    return value if isinstance(value, cls) else cls(**dict(value or {}))


class MiniMindODataModule(OmniDataModule):
    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        test: str | list[str] | None = None,
        tokens: MiniMindOTokens | Mapping[str, Any] | None = None,
        tokenizer_path: str | None = None,
        audio_encoder: AudioEncoderSpec | Mapping[str, Any] | None = None,
        vision_encoder: VisionEncoderSpec | Mapping[str, Any] | None = None,
        spk_dim: int = 192,
        tasks: Mapping[str, float] | None = None,
        val_tasks: Mapping[str, float] | None = None,
        augment: Augment | Mapping[str, Any] | None = None,
        max_len: int = 1024,
        index_cache: str | None = None,
        **loading: Any,
    ) -> None:
        """`index_cache`: a folder where each shard's index results are kept (data.dataset.IndexCache: a rerun
        over unchanged shards reads lengths instead of rows); None: no cache. `loading`: the shared loader settings
        (max_tokens, max_batch_size, window_rows, cache_row_groups, num_workers, seed, strict, pin_memory), see
        `data.datamodule.OmniDataModule.__init__`."""
        super().__init__(train, val, test, tokenizer_path, tasks or {"t2a": 1.0}, val_tasks, TASKS, max_len,
                         **loading)
        self.tokens = tokens if isinstance(tokens, MiniMindOTokens) else MiniMindOTokens(**dict(tokens or {}))
        self.audio_spec, self.vision_spec = _spec(AudioEncoderSpec, audio_encoder), _spec(VisionEncoderSpec, vision_encoder)
        self.spk_dim = int(spk_dim)
        self.index_cache = str(index_cache) if index_cache else None
        self.augment = augment if isinstance(augment, Augment) or augment is None else Augment(**dict(augment))
        self.collator = MiniMindOCollator(self.tokens, self.spk_dim)
        self._train_voices: set[str] | None = None
        self._positions: dict[str, dict[tuple[str, int], int]] = {}

    def _build(self, split: str) -> None:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
            if len(self._tokenizer) > self.tokens.text_vocab:
                raise ValueError(f"tokenizer has {len(self._tokenizer)} ids but tokens.text_vocab is "
                                 f"{self.tokens.text_vocab}")
        reader = RowReader(self.tokens, self._tokenizer, self.audio_spec, self.vision_spec, self.spk_dim, self.max_len)
        augment = self.augment if split == "train" else None
        index = MiniMindOIndex(self.paths[split], reader, strict=self.strict, margin=reader.augment_margin(augment),
                               cache=self.index_cache)
        self.indexes[split] = index
        self.datasets[split] = MiniMindODataset(index, augment=augment,
                                                seed=self.seed, cache_row_groups=self.cache_row_groups,
                                                strict=self.strict)

    @property
    def window_s(self) -> float:  # data.datamodule.OmniDataModule API
        return self.audio_spec.window_s

    def examples(self, split: str, task: str, n: int) -> list[dict[str, Any]]:
        """`OmniDataModule.examples` (the first `n` loadable rows of `split` for `task`) plus `question_text` (the
        target's user turn: the transcript for A2A, `<image>` removed for I2T), `voice` (the answer voice,
        `voice_id`) and `voice_seen` (that voice in the train split; None without train data). Rows are never
        augmented, in the train split too."""
        dataset = self._dataset(split)
        augment, dataset.augment = dataset.augment, None  # generation reads rows one at a time in this process
        try:
            out = super().examples(split, task, n)
        finally:
            dataset.augment = augment
        if not out:
            return out
        index = self.indexes[split]
        if split not in self._positions:
            self._positions[split] = {(index.files[int(s)], int(r)): i
                                      for i, (s, r) in enumerate(zip(index.shard, index.row_in_file))}
        train = self.train_voices()
        for ex in out:
            rec = dataset._row(self._positions[split][(ex["file"], int(ex["row"]))])
            plan = index.reader.plan(rec, header_samples, None, None)
            user = next((m["content"] for m in reversed(plan.messages) if m["role"] == "user"), "")
            voice = voice_id(rec) if bool(ex["layout"].weights.any()) else None  # text-only answers: no voice
            ex.update(question_text=user.replace(IMAGE_PLACEHOLDER, "").strip(), voice=voice,
                      voice_seen=None if train is None or voice is None else voice in train)
        return out

    def train_voices(self) -> set[str] | None:
        """`voice_id`s of the train split's rows that carry answer audio (read once: the voice, reference and
        answer-code columns); None when no train split is configured."""
        if self._train_voices is None and self.paths["train"] is not None:
            self._train_voices = spoken_voices(self.paths["train"], self.tokens.n_codebooks)
        return self._train_voices


def voice_id(rec: dict[str, Any]) -> str:
    """The answer voice of a row as a stable label (the released schema names no speaker): `ref-<hash>` of its
    reference codes, else `emb-<hash>` of its speaker embedding, else `default` (no voice conditioning: the
    model's own voice). Rows cloning the same reference clip share a label."""
    for column, prefix, dtype in (("ref_audios", "ref", np.int32), ("spk_emb", "emb", np.float32)):
        value = rec.get(column)
        if value is not None and len(value):
            return f"{prefix}-{hashlib.sha1(np.asarray(value, dtype=dtype).tobytes()).hexdigest()[:8]}"
    return "default"


def spoken_voices(paths: Any, n_codebooks: int = 8) -> set[str]:
    """The `voice_id`s of every row with answer audio (a turn of at least one frame) in these parquet files /
    folders. Answer codes are only measured (arrow list lengths), never converted to Python."""
    voices: set[str] = set()
    for path in expand_paths(paths):
        pf = open_table(path)
        columns = [c for c in ("answer_audios", "ref_audios", "spk_emb") if c in pf.schema_arrow.names]
        if "answer_audios" not in columns:
            continue
        for batch in pf.iter_batches(columns=columns, batch_size=256):
            answers = batch.column("answer_audios")
            turns = pc.list_flatten(answers)
            longest = np.zeros(batch.num_rows, dtype=np.int64)
            np.maximum.at(longest, pc.list_parent_indices(answers).to_numpy(),
                          pc.list_value_length(turns).fill_null(0).to_numpy())
            refs = {c: batch.column(c).to_pylist() for c in columns if c != "answer_audios"}
            voices.update(voice_id({c: v[i] for c, v in refs.items()})
                          for i in np.flatnonzero(longest >= n_codebooks))
    return voices
