"""Lightning DataModule for MiniMind-O parquet splits (the released schema, data/minimind_o/schema.py).

It reuses `data.datamodule.OmniDataModule`'s loaders unchanged (TokenBudgetBatchSampler with length bucketing and
rank sharding, ResumableDataLoader with its resume bookkeeping, skip reports, `examples()`); only the index,
dataset and collator are MiniMind-O's. Tasks: {t2a, a2a, i2t} weights. Training augmentations (`augment`) apply
to the train split only.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch import LightningDataModule

from data.datamodule import OmniDataModule
from data.minimind_o.collate import MiniMindOCollator
from data.minimind_o.dataset import MiniMindODataset, MiniMindOIndex, RowReader
from data.minimind_o.schema import TASKS
from data.sampler import resolve_task_weights
from omni.minimind_o.encoders import AudioEncoderSpec, VisionEncoderSpec
from omni.minimind_o.layout import Augment
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
        max_tokens: int = 16384,
        max_batch_size: int | None = None,
        max_len: int = 1024,
        window_rows: int = 1000,
        cache_row_groups: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        strict: bool = False,
        pin_memory: bool = False,
    ) -> None:
        LightningDataModule.__init__(self)  # OmniDataModule.__init__ sets up the Mini-Omni pipeline instead
        if tokenizer_path is None:
            raise ValueError("MiniMindODataModule needs tokenizer_path (a local tokenizer folder)")
        self.paths = {"train": train, "val": val, "test": test}
        self.tokens = tokens if isinstance(tokens, MiniMindOTokens) else MiniMindOTokens(**dict(tokens or {}))
        self.tokenizer_path = str(tokenizer_path)
        self.audio_spec, self.vision_spec = _spec(AudioEncoderSpec, audio_encoder), _spec(VisionEncoderSpec, vision_encoder)
        self.spk_dim = int(spk_dim)
        self.tasks = dict(tasks or {"t2a": 1.0})
        self.val_tasks = dict(val_tasks) if val_tasks else dict(self.tasks)
        resolve_task_weights(self.tasks, TASKS), resolve_task_weights(self.val_tasks, TASKS)  # fail at start
        self.augment = augment if isinstance(augment, Augment) or augment is None else Augment(**dict(augment))
        self.max_tokens, self.max_batch_size, self.max_len = int(max_tokens), max_batch_size, int(max_len)
        if self.max_len > self.max_tokens:
            raise ValueError(f"max_len {self.max_len} > max_tokens {self.max_tokens}: a longest row would not fit")
        self.window_rows, self.cache_row_groups = int(window_rows), int(cache_row_groups)
        self.num_workers, self.seed, self.strict = int(num_workers), int(seed), bool(strict)
        self.pin_memory = bool(pin_memory)
        self.collator = MiniMindOCollator(self.tokens, self.spk_dim)
        self.indexes: dict[str, MiniMindOIndex] = {}
        self.datasets: dict[str, MiniMindODataset] = {}
        self._tokenizer: Any = None
        self._train_loader = None
        self._pending_train_state = None

    def _build(self, split: str) -> None:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
            if len(self._tokenizer) > self.tokens.text_vocab:
                raise ValueError(f"tokenizer has {len(self._tokenizer)} ids but tokens.text_vocab is "
                                 f"{self.tokens.text_vocab}")
        reader = RowReader(self.tokens, self._tokenizer, self.audio_spec, self.vision_spec, self.spk_dim, self.max_len)
        augment = self.augment if split == "train" else None
        index = MiniMindOIndex(self.paths[split], reader, strict=self.strict, margin=reader.augment_margin(augment))
        self.indexes[split] = index
        self.datasets[split] = MiniMindODataset(index, augment=augment,
                                                seed=self.seed, cache_row_groups=self.cache_row_groups,
                                                strict=self.strict)

    @property
    def window_s(self) -> float:  # OmniDataModule API
        return self.audio_spec.window_s
