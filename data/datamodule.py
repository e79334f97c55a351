"""The DataModule every family shares: parquet splits -> the family's index -> token-budget batches -> the family's
collated batches. A family subclasses `OmniDataModule` (data/<family>/datamodule.py): its `__init__` calls this
one's with the family's task vocabulary, then sets its own fields; its `_build(split)` makes the index and dataset.

Resume: `train_dataloader()` returns a `ResumableDataLoader` (Lightning's `_Stateful` protocol: `state_dict()` /
`load_state_dict()`). Lightning 2.x stores its state under the checkpoint's `loops.fit_loop.state_dict.
combined_loader` and, on resume, calls `load_state_dict` in `FitLoop.setup_data()` before creating the iterator and
before `set_epoch`. The loader counts batches handed to the training loop (its own yields in the main process, not
the sampler's, which DataLoader workers run ahead of); Lightning's fetcher does not look ahead for sized loaders,
so that count is exactly the batches the loop consumed. The sampler shards by rank itself: distributed runs need
`Trainer(use_distributed_sampler=False)` (checked here).

Lightning 2.6 drops that loader state when the train loader is built before the checkpoint is restored, which
happens whenever `configure_optimizers` reads `trainer.estimated_stepping_batches` (Lightning issue #20550). So the
DataModule also saves the loader state through its own `state_dict()` (checkpoint key: the class name); Lightning
restores a DataModule before it builds the loader, and `train_dataloader()` applies the pending state once.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from data.dataset import RowIndex
from data.packing import PackingCollator
from data.sampler import TokenBudgetBatchSampler, resolve_task_weights

class ResumableDataLoader(DataLoader):
    """DataLoader over a `TokenBudgetBatchSampler` whose state is {epoch, consumed}: batches this loader has
    yielded in `epoch`. Iteration is lazy: the epoch and resume offset are read at the first `next()`, after
    Lightning has called `set_epoch` (Lightning builds the iterator before it sets the epoch)."""

    def __init__(self, dataset: Any, batch_sampler: TokenBudgetBatchSampler, **kwargs: Any) -> None:
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._state: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler = self.batch_sampler
        self._state = {"epoch": sampler.epoch, "consumed": sampler.resume_offset}
        for batch in super().__iter__():
            self._state["consumed"] += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """{epoch, consumed}; before any iteration, the sampler's (possibly just loaded) position."""
        return dict(self._state) if self._state is not None else self.batch_sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)
        self._state = None


class OmniDataModule(LightningDataModule):
    """Train / val / test parquet splits of one family (subclassed per family, see the module docstring). `tasks`
    are train mix weights over the family's tasks; val/test use every eligible (row, task) pair of `val_tasks`
    (default: the train tasks) once, in file order. The loaders, resume position, skip report and `examples()`
    are the same for every family."""

    # checkpoint keys an earlier name of this class stored its state under (Lightning keys a DataModule's state by
    # its class name): a run resumed from such a checkpoint restores the loader position from there
    state_keys_before: tuple[str, ...] = ()

    def __init__(self, train: Any, val: Any, test: Any, tokenizer_path: str | None, tasks: Mapping[str, float],
                 val_tasks: Mapping[str, float] | None, valid_tasks: tuple[str, ...], max_len: int, *,
                 max_tokens: int = 16384, max_batch_size: int | None = None, window_rows: int = 1000,
                 cache_row_groups: int = 4, num_workers: int = 0, seed: int = 0, strict: bool = False,
                 pin_memory: bool = False, packing: bool = False,
                 source: str = "parquet", hf: Mapping[str, Any] | None = None) -> None:
        """What every family's DataModule sets before its own fields (each family's `__init__` calls this first):
        the splits, the tokenizer folder, the train / val task mixes (checked against `valid_tasks`, the family's
        task vocabulary), the token budget, the loader settings and the empty index / dataset / resume state.
        Config mistakes fail here, at start."""
        LightningDataModule.__init__(self)
        if tokenizer_path is None:
            raise ValueError(f"{type(self).__name__} needs tokenizer_path (a local tokenizer folder)")
        self.paths = {"train": train, "val": val, "test": test}
        self.tokenizer_path = str(tokenizer_path)
        self.tasks = dict(tasks)
        self.val_tasks = dict(val_tasks) if val_tasks else dict(self.tasks)
        resolve_task_weights(self.tasks, valid_tasks), resolve_task_weights(self.val_tasks, valid_tasks)
        self.max_tokens, self.max_batch_size, self.max_len = int(max_tokens), max_batch_size, int(max_len)
        if self.max_len > self.max_tokens:
            raise ValueError(f"max_len {self.max_len} > max_tokens {self.max_tokens}: a longest row would not fit")
        self.window_rows, self.cache_row_groups = int(window_rows), int(cache_row_groups)
        self.num_workers, self.seed, self.strict = int(num_workers), int(seed), bool(strict)
        self.pin_memory = bool(pin_memory)
        # source: hf reads the splits from a Hugging Face dataset (data/hf.py; `paths` become its split names)
        from data.hf import configure

        self.hf = configure(self, source, hf)
        # packing (data/packing.py): train batches hold several rows per sequence of max_len positions; the family's
        # `packer` hook (its registry entry) lays its batch out; a family without one is refused here, at start
        self.packing = bool(packing)
        self._packer: Any = None
        if self.packing:
            from omni.families import family_of

            family = family_of(self)
            if family.packer is None:
                raise ValueError(f"data.packing=true: {family.title} ({type(self).__name__}) has no packer "
                                 f"(Family.packer is None); set data.packing=false")
            self._packer = family.load("packer")
        self.indexes: dict[str, RowIndex] = {}
        self.datasets: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._train_loader: ResumableDataLoader | None = None
        self._pending_train_state: dict[str, int] | None = None

    @property
    def window_s(self) -> float:
        """The longest audio a row may hold (the family's encoder window); inf: no limit."""
        return float("inf")

    def _build(self, split: str) -> None:
        """Index `split` and make its dataset: `self.indexes[split]`, `self.datasets[split]` (the family's)."""
        raise NotImplementedError(f"{type(self).__name__} must build its index and dataset (_build)")

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)

    def setup(self, stage: str | None = None) -> None:
        """Index the splits `stage` needs (fit: train + val, validate: val, test/predict: test, None: all)."""
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            if self.paths[split] is not None and split not in self.indexes:
                self._open_source(split)
                self._build(split)

    def _dataset(self, split: str) -> Any:
        if split not in self.datasets:
            if self.paths[split] is None:
                raise ValueError(f"no {split} data configured")
            self._open_source(split)
            self._build(split)
        return self.datasets[split]

    def _open_source(self, split: str) -> None:
        """source: hf: point `paths[split]` at the split's Hugging Face dataset view (data/hf.py `source_paths`)."""
        if self.hf is not None:
            from data.hf import source_paths

            self.paths[split] = source_paths(self, split)

    def _stream(self, split: str) -> Any:
        """source: hf with hf.streaming: the split's streamed loader (data/hf.py `stream_loader`), else None."""
        if self.hf is None or not self.hf.streaming:
            return None
        from data.hf import stream_loader

        if split not in self.indexes:
            self._open_source(split)
            self._build(split)
        return stream_loader(self, split, self.collator, self._loader_kwargs())

    def _check_distributed_sampler(self) -> None:
        trainer = self.trainer
        connector = getattr(trainer, "_accelerator_connector", None)
        if trainer is not None and trainer.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ValueError("OmniDataModule shards batches by rank itself: build the Trainer with "
                             "use_distributed_sampler=False")

    def _loader_kwargs(self) -> dict[str, Any]:
        # workers stay up between epochs (a fresh worker per epoch would reload the tokenizer and row groups)
        return {"collate_fn": self.collator, "num_workers": self.num_workers, "pin_memory": self.pin_memory,
                "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> ResumableDataLoader:
        self._check_distributed_sampler()
        stream = self._stream("train")
        if stream is not None:
            self._train_loader = stream
            if self._pending_train_state is not None:
                stream.load_state_dict(self._pending_train_state)
                self._pending_train_state = None
            return stream
        dataset = self._dataset("train")
        rank, world = self._rank_world()
        sampler = TokenBudgetBatchSampler(dataset.index, self.tasks, self.max_tokens, self.max_batch_size,
                                          self.window_rows, seed=self.seed, rank=rank, world_size=world,
                                          pack_len=self.max_len if self.packing else None)
        kwargs = self._loader_kwargs()
        if self.packing:  # train batches only: evaluation keeps one row per sequence
            kwargs["collate_fn"] = PackingCollator(self.collator, self._packer, self.max_len)
        loader = ResumableDataLoader(dataset, sampler, **kwargs)
        if self._pending_train_state is not None:  # restored from a checkpoint before this loader existed
            loader.load_state_dict(self._pending_train_state)
            self._pending_train_state = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning into checkpoints: the train loader position {epoch, consumed} (see module doc)."""
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Apply the saved position to the live train loader, or keep it for the next `train_dataloader()`."""
        if "train_loader" not in state:
            return
        if self._train_loader is not None:
            self._train_loader.load_state_dict(state["train_loader"])
        else:
            self._pending_train_state = dict(state["train_loader"])

    def _eval_loader(self, split: str) -> DataLoader:
        stream = self._stream(split)
        if stream is not None:
            return stream
        dataset = self._dataset(split)
        rank, world = self._rank_world()
        sampler = TokenBudgetBatchSampler(dataset.index, self.val_tasks, self.max_tokens, self.max_batch_size,
                                          self.window_rows, seed=self.seed, rank=rank, world_size=world,
                                          shuffle=False, mix="all", fixed_length=False, drop_uneven=False)
        return DataLoader(dataset, batch_sampler=sampler, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader | list:
        """Val batches, or [] (Lightning: no validation) when no val data is configured."""
        return self._eval_loader("val") if self.paths["val"] is not None else []

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test") if self.paths["test"] is not None else []

    def skipped_report(self) -> dict[str, Any]:
        """Index-time skips of the indexed splits: {counts: {reason: n}, by_split: {split: {reason: n}},
        rows: [{split, file, row, id, column, reason, detail}]}, one record and one count per distinct (file, row,
        reason) (a row too long for several tasks is one row). Load-time skips arrive in batches' `skipped`."""
        distinct: dict[tuple, dict[str, Any]] = {}
        for split, idx in self.indexes.items():
            for s in idx.skipped:
                distinct.setdefault((split, s.file, s.row, s.reason), dict(split=split, **s.as_dict()))
        rows = list(distinct.values())
        by_split = {split: dict(Counter(r["reason"] for r in rows if r["split"] == split)) for split in self.indexes}
        return {"counts": dict(Counter(r["reason"] for r in rows)), "by_split": by_split, "rows": rows}


    def examples(self, split: str, task: str, n: int) -> list[dict[str, Any]]:
        """The first `n` loadable rows of `split` eligible for `task`, in file order: the fixed set that text
        metrics and eval.py generate on (rows that fail to load are skipped here too)."""
        dataset = self._dataset(split)
        out: list[dict[str, Any]] = []
        for row in dataset.index.rows_for(task):
            item = dataset[(int(row), task)]
            if isinstance(item, dict):
                out.append(item)
            if len(out) >= n:
                break
        return out
