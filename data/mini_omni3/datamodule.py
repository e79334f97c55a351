"""Lightning DataModule for streaming (Mini-Omni3) parquet splits.

It reuses `data.datamodule.OmniDataModule`'s loaders unchanged (TokenBudgetBatchSampler with length bucketing and
rank sharding, ResumableDataLoader and the resume-position bookkeeping, skip reports, `examples()`); only the
index / dataset / collator are the streaming ones. Tasks are the row modes: {online: 1.0, offline: 0.25}.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data.datamodule import OmniDataModule
from data.mini_omni3.collate import StreamingCollator
from data.mini_omni3.dataset import StreamingDataset, StreamingIndex, encode_system_prompt
from data.mini_omni3.schema import MODES
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
        max_len: int = 4096,
        **loading: Any,
    ) -> None:
        """`loading`: the shared loader settings (max_tokens, max_batch_size, window_rows, cache_row_groups,
        num_workers, seed, strict, pin_memory), see `data.datamodule.OmniDataModule.__init__`."""
        super().__init__(train, val, test, tokenizer_path, tasks or {"online": 1.0}, val_tasks, MODES, max_len,
                         **loading)
        self.tokens = MiniOmni3Tokens.from_config(tokens)
        self.n_mels = int(n_mels)
        self.system_prompt = RELEASED_SYSTEM_PROMPT if system_prompt is None else str(system_prompt)
        self.collator = StreamingCollator(self.tokens)
        self._system_ids: list[int] | None = None

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
    def window_s(self) -> float:  # data.datamodule.OmniDataModule API; a streaming row has no encoder window
        return float("inf")
