"""Lightning DataModule for streaming (Mini-Omni3) parquet splits.

It reuses `data.datamodule.OmniDataModule`'s loaders unchanged (TokenBudgetBatchSampler with length bucketing and
rank sharding, ResumableDataLoader and the resume-position bookkeeping, skip reports, `examples()`); only the
index / dataset / collator are the streaming ones. Tasks are the row modes: {online: 1.0, offline: 0.25}.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning.pytorch import LightningDataModule

from data.datamodule import OmniDataModule
from data.sampler import resolve_task_weights
from data.streaming.collate import StreamingCollator
from data.streaming.dataset import StreamingDataset, StreamingIndex, encode_system_prompt
from data.streaming.schema import MODES
from omni.mini_omni3.layout import RELEASED_SYSTEM_PROMPT
from omni.mini_omni3.tokens import MiniOmni3Tokens


class StreamingDataModule(OmniDataModule):
    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        test: str | list[str] | None = None,
        tokens: MiniOmni3Tokens | Mapping[str, Any] | None = None,
        tokenizer_path: str | None = None,
        system_prompt: str | None = None,
        n_mels: int = 128,
        tasks: Mapping[str, float] | None = None,
        val_tasks: Mapping[str, float] | None = None,
        max_tokens: int = 16384,
        max_batch_size: int | None = None,
        max_len: int = 4096,
        window_rows: int = 1000,
        cache_row_groups: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        strict: bool = False,
        pin_memory: bool = False,
    ) -> None:
        LightningDataModule.__init__(self)  # OmniDataModule.__init__ sets up the Mini-Omni pipeline instead
        if tokenizer_path is None:
            raise ValueError("StreamingDataModule needs tokenizer_path (a local tokenizer folder)")
        self.paths = {"train": train, "val": val, "test": test}
        self.tokens = MiniOmni3Tokens.from_config(tokens)
        self.tokenizer_path, self.n_mels = str(tokenizer_path), int(n_mels)
        self.system_prompt = RELEASED_SYSTEM_PROMPT if system_prompt is None else str(system_prompt)
        self.tasks = dict(tasks or {"online": 1.0})
        self.val_tasks = dict(val_tasks) if val_tasks else dict(self.tasks)
        resolve_task_weights(self.tasks, MODES), resolve_task_weights(self.val_tasks, MODES)  # fail at start
        self.max_tokens, self.max_batch_size, self.max_len = int(max_tokens), max_batch_size, int(max_len)
        if self.max_len > self.max_tokens:
            raise ValueError(f"max_len {self.max_len} > max_tokens {self.max_tokens}: a longest row would not fit")
        self.window_rows, self.cache_row_groups = int(window_rows), int(cache_row_groups)
        self.num_workers, self.seed, self.strict = int(num_workers), int(seed), bool(strict)
        self.pin_memory = bool(pin_memory)
        self.collator = StreamingCollator(self.tokens)
        self.indexes: dict[str, StreamingIndex] = {}
        self.datasets: dict[str, StreamingDataset] = {}
        self._tokenizer: Any = None
        self._system_ids: list[int] | None = None
        self._train_loader = None
        self._pending_train_state = None

    def _build(self, split: str) -> None:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
            self._system_ids = encode_system_prompt(self._tokenizer, self.tokens, self.system_prompt)
        index = StreamingIndex(self.paths[split], self._tokenizer, self.tokens, self._system_ids,
                               max_len=self.max_len, strict=self.strict)
        self.indexes[split] = index
        self.datasets[split] = StreamingDataset(index, self._system_ids, n_mels=self.n_mels,
                                                cache_row_groups=self.cache_row_groups, strict=self.strict)

    @property
    def window_s(self) -> float:  # OmniDataModule API; a streaming row has no encoder window
        return float("inf")
