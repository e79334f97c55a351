"""Mini-Omni / Mini-Omni2 DataModule: the shared loaders (data/datamodule.py) over Mini-Omni's parquet index and
dataset (data/mini_omni/dataset.py) and collator (data/mini_omni/collate.py)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data.datamodule import OmniDataModule
from data.mini_omni.collate import MiniOmniCollator
from data.mini_omni.dataset import OmniDataset, ParquetIndex, calibrate_chars_per_token
from data.mini_omni.lengths import TASK_ORDER
from omni.mini_omni.tokens import MiniOmniTokens


class MiniOmniDataModule(OmniDataModule):
    """Train / val / test parquet splits for Mini-Omni. `tasks` are train mix weights ({asr: 1.0, tts: 0.5});
    val/test use every eligible (row, task) pair of `val_tasks` (default: the train tasks) once, in file order.
    `chars_per_token` (text length estimate) defaults to a measurement of the tokenizer on the first split's texts
    with a 10% safety margin (data.mini_omni.dataset.calibrate_chars_per_token). The encoder window is
    max_source_positions / 50 seconds (30 s for Whisper's 1500)."""

    state_keys_before = ("OmniDataModule",)  # checkpoints written when this was data.datamodule.OmniDataModule

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        test: str | list[str] | None = None,
        tokens: MiniOmniTokens | Mapping[str, Any] | None = None,
        tokenizer_path: str | None = None,
        n_mels: int = 80,
        max_source_positions: int = 1500,
        tasks: Mapping[str, float] | None = None,
        val_tasks: Mapping[str, float] | None = None,
        max_len: int = 2048,
        chars_per_token: float | None = None,
        vision_arch: str = "clip",
        vision_path: str | None = None,
        image_size: int = 224,
        n_image_tokens: int = 50,
        **loading: Any,
    ) -> None:
        """`loading`: the loader settings every family shares (max_tokens, max_batch_size, window_rows,
        cache_row_groups, num_workers, seed, strict, pin_memory), see `OmniDataModule.__init__`."""
        if not tasks:
            raise ValueError("MiniOmniDataModule needs tasks, e.g. {asr: 1.0, tts: 0.5}")
        super().__init__(train, val, test, tokenizer_path, tasks, val_tasks, TASK_ORDER, max_len, **loading)
        self.tokens = tokens if isinstance(tokens, MiniOmniTokens) else MiniOmniTokens(**dict(tokens or {}))
        self.n_mels, self.max_source_positions = int(n_mels), int(max_source_positions)
        self.chars_per_token = None if chars_per_token is None else float(chars_per_token)
        self.vision = {"vision_arch": vision_arch, "vision_path": vision_path, "image_size": int(image_size)}
        self.n_image_tokens = int(n_image_tokens)
        self.collator = MiniOmniCollator(self.tokens, self.n_image_tokens)

    @property
    def window_s(self) -> float:
        return self.max_source_positions / 50.0

    def _build(self, split: str) -> None:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        if self.chars_per_token is None:  # measured once, on the first split built (train under fit)
            self.chars_per_token = calibrate_chars_per_token(self.paths[split], self._tokenizer)
        index = ParquetIndex(self.paths[split], window_s=self.window_s, max_len=self.max_len,
                             chars_per_token=self.chars_per_token, max_audio_frames=self.max_source_positions,
                             strict=self.strict, n_image_tokens=self.n_image_tokens)
        self.indexes[split] = index
        self.datasets[split] = OmniDataset(index, self._tokenizer, self.tokens, n_mels=self.n_mels,
                                           max_source_positions=self.max_source_positions,
                                           cache_row_groups=self.cache_row_groups, strict=self.strict,
                                           **self.vision)
