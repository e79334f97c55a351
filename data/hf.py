"""Hugging Face `datasets` as a data source: `data.source=hf data.hf.path=<id|folder|files> data.hf.split=train`.

What `hf.path` may be (`open_dataset`), resolved in this order:
1. a `save_to_disk` folder (it holds `dataset_dict.json` or `state.json`): `datasets.load_from_disk`;
2. parquet files: a file, a folder of `*.parquet`, a glob, a list of those, or a mapping {split: files}:
   `load_dataset("parquet", data_files=...)` (a list / folder / glob is the split `train`);
3. anything else is a hub id (`owner/name`, config `hf.name`): `load_dataset(id, name, split=...)`. With
   HF_HUB_OFFLINE=1 (no network at run time) `datasets` reads it from the local cache, HF_DATASETS_CACHE
   (default ~/.cache/huggingface/datasets): the folder `<owner>___<snake_case name>/<config>/<version>/<hash>/`
   ({dataset_info.json, <name>-<split>*.arrow}) that an earlier online `load_dataset(id)` left there. A hub id
   that is not cached fails, naming `data.hf.path`.
`hf.split` / `hf.val_split` / `hf.test_split` name the splits (HF split syntax, e.g. `train[:95%]`, works on the
map-style path); a null split is not used.

A published schema (VoiceAssistant-400K, MiniMind-O's release, ours) becomes the family's table schema through a
per-family adapter (`HFSchema`, in data/<family>/hf.py, listed by the family's registry entry `hf_schemas`;
`hf.schema: auto` picks the one whose columns the dataset has). Audio / image features are read as their encoded
bytes (`Audio(decode=False)`: `datasets` 5 decodes audio with torchcodec, which is not installed); the family
decodes them with its own soundfile path.

Map-style (`hf.streaming: false`): the dataset is presented as a parquet-like table (`HFTable`: virtual row groups
of `hf.group_rows` rows, the family's columns converted per slice from only the published columns they need) under
a key `hf://<path>/<split>`, which the family's index and dataset read exactly as they read a parquet file
(`open_table`). So token-budget bucketing (the length index reads the length columns only), rank sharding, bad-row
records (`file` = the key, `row` = the dataset row) and exact resume are the parquet path's.

Streaming (`hf.streaming: true`, an `IterableDataset`: nothing is downloaded or converted up front): the stream is
split by rank (`datasets.distributed.split_dataset_by_node`), shuffled through a bounded buffer
(`hf.shuffle_buffer` examples, reseeded each epoch), and cut into chunks of `hf.chunk_rows` examples; DataLoader
worker w takes chunks w, w + W, ... Each chunk is converted, indexed by the family's index (length estimates,
eligibility, bad-row records: `row` = the example's position in this rank's stream) and batched by the same token
budget sampler inside the chunk. Resume is by examples consumed: the state holds, per worker, the stream position
of the chunk in progress and the batches of it already handed out; a resumed run re-reads (without converting) the
stream up to that chunk and re-plans it. See `StreamBatches` for what makes it exact and where it is not.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

PREFIX = "hf://"
_TABLES: dict[str, "HFTable"] = {}  # key -> view, per process (forked DataLoader workers inherit it)


# -- the per-family adapter contract ---------------------------------------------------------------------------
class HFSchema:
    """A published schema -> a family's table schema. Subclasses (in data/<family>/hf.py) set `name`, `schema`
    (the family's columns, arrow types) and `columns` (the published columns that identify the schema), and
    write `needs` / `convert`. `convert` must keep rows 1:1 (a bad value becomes what the family's own checks
    record as bad, with the row's id), never drop or raise for one row."""

    name: str = ""
    schema: pa.Schema
    columns: tuple[str, ...] = ()

    def matches(self, available: list[str]) -> bool:
        return all(c in available for c in self.columns)

    def needs(self, columns: list[str], available: list[str]) -> list[str]:
        """The published columns `convert` reads to produce `columns` (of `self.schema`)."""
        return [c for c in columns if c in available]

    def convert(self, table: pa.Table, columns: list[str], first_row: int) -> pa.Table:
        """Published rows (`table`, dataset rows first_row...) -> `columns` of `self.schema`, row for row."""
        raise NotImplementedError


def audio_bytes(value: Any) -> bytes | None:
    """An audio / image cell as stored by `datasets` (`{bytes, path}` struct, raw bytes or None) -> bytes or None.
    A struct without bytes is read from its local `path`."""
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None and value.get("path") and os.path.isfile(value["path"]):
            with open(value["path"], "rb") as f:
                data = f.read()
        value = data
    return bytes(value) if value else None


# -- options ------------------------------------------------------------------------------------------------------
@dataclass
class HFOptions:
    """`data.hf` (see the module docstring)."""

    path: Any = None
    name: str | None = None
    split: str | None = "train"
    val_split: str | None = None
    test_split: str | None = None
    streaming: bool = False
    schema: str = "auto"
    group_rows: int = 1000     # map-style: rows per virtual row group (the sampler's locality unit)
    chunk_rows: int = 1000     # streaming: examples per chunk (indexed and batched together)
    shuffle_buffer: int = 1000  # streaming: examples in the shuffle buffer (0: stream order)
    revision: str | None = None
    extra: dict = field(default_factory=dict)  # more load_dataset / load_from_disk keyword arguments

    def __post_init__(self) -> None:
        if self.path in (None, "", [], {}):
            raise ValueError("data.source=hf needs data.hf.path (a hub id, a save_to_disk folder or parquet files)")
        for key in ("group_rows", "chunk_rows"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"data.hf.{key} must be >= 1, got {getattr(self, key)}")
        if int(self.shuffle_buffer) < 0:
            raise ValueError(f"data.hf.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")

    def splits(self) -> dict[str, str | None]:
        return {"train": self.split, "val": self.val_split, "test": self.test_split}

    def label(self) -> str:
        path = self.path
        if isinstance(path, Mapping):
            path = "+".join(f"{k}={v}" for k, v in path.items())
        elif isinstance(path, (list, tuple)):
            path = ",".join(map(str, path))
        return str(path).rstrip("/")


def _is_saved(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _parquet_files(path: Any) -> list[str] | None:
    """Local parquet files named by `path` (file, folder, glob, or a list of them), else None."""
    items = list(path) if isinstance(path, (list, tuple)) else [path]
    files: list[str] = []
    for p in map(str, items):
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "**", "*.parquet"), recursive=True))
            if not found:
                return None
            files.extend(found)
        elif p.endswith(".parquet") or any(ch in p for ch in "*?["):
            found = sorted(glob.glob(p))
            if not found:
                raise FileNotFoundError(f"data.hf.path {p!r}: no parquet file matches")
            files.extend(found)
        else:
            return None
    return files


def open_dataset(opts: HFOptions, split: str, streaming: bool | None = None):
    """The `datasets.Dataset` (or `IterableDataset` when streaming) of `split`, audio / image columns cast to
    encoded bytes (decode=False)."""
    import datasets

    streaming = opts.streaming if streaming is None else streaming
    path = opts.path
    try:
        if _is_saved(path):
            ds = datasets.load_from_disk(str(path), **opts.extra)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"data.hf split {split!r} is not in {path} (splits: {sorted(ds)})")
                ds = ds[split]
            if streaming:
                ds = ds.to_iterable_dataset(num_shards=max(1, min(64, len(ds) // 1000)))
        elif isinstance(path, Mapping) or _parquet_files(path) is not None:
            files = {k: _parquet_files(v) or [str(v)] for k, v in path.items()} if isinstance(path, Mapping) \
                else {"train": _parquet_files(path)}
            ds = datasets.load_dataset("parquet", data_files=files, split=split, streaming=streaming, **opts.extra)
        else:
            ds = datasets.load_dataset(str(path), opts.name, split=split, streaming=streaming,
                                       revision=opts.revision, **opts.extra)
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        raise ValueError(f"data.hf.path={opts.label()!r} split {split!r}: cannot open it as a save_to_disk folder, "
                         f"parquet files or a hub id in the local cache (HF_DATASETS_CACHE): "
                         f"{type(exc).__name__}: {exc}") from exc
    return _bytes_features(ds)


def _bytes_features(ds):
    """Cast every Audio / Image feature to decode=False: cells stay {bytes, path}."""
    from datasets import Audio, Image

    for name, feature in (ds.features or {}).items():
        if isinstance(feature, (Audio, Image)) and feature.decode:
            ds = ds.cast_column(name, type(feature)(decode=False))
    return ds


def pick_schema(schemas: Mapping[str, HFSchema], wanted: str, available: list[str], where: str) -> HFSchema:
    """The adapter named `wanted`, or (auto) the first whose identifying columns the dataset has."""
    if wanted != "auto":
        if wanted not in schemas:
            raise ValueError(f"data.hf.schema={wanted!r} is not one of this family's schemas {sorted(schemas)}")
        schema = schemas[wanted]
        if not schema.matches(available):
            raise ValueError(f"{where}: data.hf.schema={wanted!r} needs columns {list(schema.columns)}, the "
                             f"dataset has {available}")
        return schema
    for schema in schemas.values():
        if schema.matches(available):
            return schema
    raise ValueError(f"{where}: columns {available} match none of this family's schemas "
                     f"{ {k: list(s.columns) for k, s in schemas.items()} }; set data.hf.schema")


# -- map-style: a parquet-like view ---------------------------------------------------------------------------------
class _GroupMeta:
    def __init__(self, n: int) -> None:
        self.num_rows = n


class _Meta:
    def __init__(self, sizes: list[int]) -> None:
        self._sizes, self.num_row_groups = sizes, len(sizes)
        self.num_rows = sum(sizes)

    def row_group(self, g: int) -> _GroupMeta:
        return _GroupMeta(self._sizes[g])


class HFTable:
    """A `datasets.Dataset` (or an in-memory arrow table) seen through an `HFSchema` as the subset of
    `pyarrow.parquet.ParquetFile` the families' indexes and datasets use: `schema_arrow`, `metadata`,
    `num_row_groups`, `read(columns)`, `read_row_group(g, columns)`, `iter_batches(batch_size, columns)`."""

    def __init__(self, key: str, source: Any, adapter: HFSchema, group_rows: int) -> None:
        self.key, self.source, self.adapter = key, source, adapter
        self.available = list(source.column_names)
        n = source.num_rows if isinstance(source, pa.Table) else len(source)
        self.n = n
        self.sizes = [min(group_rows, n - s) for s in range(0, n, group_rows)]
        self.starts = [s for s in range(0, n, group_rows)]
        self.schema_arrow = adapter.schema
        self.metadata = _Meta(self.sizes)
        self.num_row_groups = len(self.sizes)
        self._arrow = source if isinstance(source, pa.Table) else source.with_format("arrow")

    def _slice(self, start: int, stop: int, columns: list[str] | None) -> pa.Table:
        want = list(self.schema_arrow.names) if columns is None else list(columns)
        src = self.adapter.needs(want, self.available)
        if isinstance(self._arrow, pa.Table):
            table = self._arrow.slice(start, stop - start).select(src)
        else:
            table = self._arrow[start:stop]
            table = table.select(src)
        return self.adapter.convert(table, want, start)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        parts = [self.read_row_group(g, columns) for g in range(self.num_row_groups)]
        if not parts:
            want = list(self.schema_arrow.names) if columns is None else list(columns)
            return pa.table({c: pa.array([], type=self.schema_arrow.field(c).type) for c in want})
        return pa.concat_tables(parts)

    def read_row_group(self, group: int, columns: list[str] | None = None) -> pa.Table:
        start = self.starts[group]
        return self._slice(start, start + self.sizes[group], columns)

    def iter_batches(self, batch_size: int = 1024, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for start in range(0, self.n, batch_size):
            yield from self._slice(start, min(self.n, start + batch_size), columns).to_batches()


def view_stamp(key: str) -> dict[str, Any] | None:
    """What identifies the data behind an open map-style view, for the index cache (data.dataset.IndexCache):
    `datasets`' fingerprint of the loaded split (it changes with the data files, their sizes and modification
    times), the schema adapter, the row count and the virtual row groups. None when the view is not open here or
    its source has no fingerprint (an in-memory arrow table): then nothing is cached."""
    table = _TABLES.get(key)
    fingerprint = getattr(table.source, "_fingerprint", None) if table is not None else None
    if not fingerprint:
        return None
    return {"path": key, "fingerprint": str(fingerprint), "rows": table.n, "group_sizes": table.sizes[:1],
            "schema": f"{type(table.adapter).__module__}.{type(table.adapter).__qualname__}"
                      f":{getattr(table.adapter, 'name', '')}"}


def register(table: HFTable) -> str:
    _TABLES[table.key] = table
    return table.key


def unregister(key: str) -> None:
    _TABLES.pop(key, None)


def is_key(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def open_table(path: str):
    """A registered HF view by its key, else `pyarrow.parquet.ParquetFile(path)`."""
    if is_key(path):
        if path not in _TABLES:
            raise FileNotFoundError(f"{path}: this Hugging Face dataset view is not open in this process "
                                    "(data.source=hf opens it in setup(); DataLoader workers must be forked)")
        return _TABLES[path]
    return pq.ParquetFile(path)


def open_view(opts: HFOptions, split: str, schemas: Mapping[str, HFSchema]) -> str:
    """Open split `split` map-style as an `HFTable` and register it; returns its key `hf://<path>/<split>`."""
    key = f"{PREFIX}{opts.label()}/{split}"
    if key not in _TABLES:
        ds = open_dataset(opts, split, streaming=False)
        adapter = pick_schema(schemas, opts.schema, list(ds.column_names), key)
        register(HFTable(key, ds, adapter, int(opts.group_rows)))
    return key


# -- streaming ----------------------------------------------------------------------------------------------------
class StreamBatches(IterableDataset):
    """Collated token-budget batches from a streamed split (see the module docstring).

    One epoch = one pass over this rank's stream (`split_dataset_by_node`, then the seeded shuffle buffer reseeded
    with `set_epoch`). Worker w of W converts chunks w, w + W, ... (chunk k = stream examples k * chunk_rows ...),
    indexes each with the family's index (`build(key, split) -> (index, dataset)`) and yields the batches the
    family's token-budget sampler plans inside it (seed: seed, epoch, k). Each batch carries `stream` = (worker,
    chunk, batch in chunk). `resume` {worker: (chunk, batches done)} skips the earlier chunks unread by the family
    and the first batches of that chunk. Exact when the stream's order is reproducible: the same files, shard
    count, shuffle seed / buffer, rank count and worker count (DataLoader hands batches out round-robin by worker,
    so the main process knows each worker's position)."""

    def __init__(self, ds: Any, adapter: HFSchema, build: Any, make_sampler: Any, collate: Any, *, label: str,
                 chunk_rows: int, seed: int, shuffle_buffer: int, shuffle: bool) -> None:
        self.ds, self.adapter, self.build, self.make_sampler, self.collate = ds, adapter, build, make_sampler, collate
        self.label, self.chunk_rows, self.seed = label, int(chunk_rows), int(seed)
        self.shuffle_buffer, self.shuffle = int(shuffle_buffer), bool(shuffle)
        self.epoch = 0
        self.resume: dict[int, tuple[int, int]] = {}
        self.index_skipped: list[dict] = []  # index-time records of the chunks read in this process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def stream(self):
        ds = self.ds
        if self.shuffle and self.shuffle_buffer > 0:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            ds.set_epoch(self.epoch)
        return ds.with_format("arrow").iter(batch_size=self.chunk_rows)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        first_chunk, done = self.resume.get(worker, (0, 0))
        for k, table in enumerate(self.stream()):
            if k % workers != worker or k < first_chunk:
                continue
            key = f"{PREFIX}{self.label}@{self.epoch}:{k}"
            view = HFTable(key, self.adapter.convert(table, list(self.adapter.schema.names), k * self.chunk_rows)
                           .cast(self.adapter.schema), _Identity(self.adapter.schema), self.chunk_rows)
            register(view)
            try:
                index, dataset = self.build(key)
                records = [s.as_dict() for s in index.skipped]
                sampler = self.make_sampler(index, [self.seed, self.epoch, k])
                for b, pairs in enumerate(sampler):
                    if k == first_chunk and b < done:
                        continue
                    batch = self.collate([dataset[p] for p in pairs])
                    if records:  # this chunk's index-time records travel with its first batch handed out
                        batch["skipped"] = list(batch.get("skipped", [])) + records
                        records = []
                    batch["stream"] = (worker, k, b)
                    yield batch
            finally:
                unregister(key)
        self.resume = {}


class _Identity(HFSchema):
    """Columns already in the family's schema (a converted chunk)."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema, self.name = schema, "identity"

    def convert(self, table: pa.Table, columns: list[str], first_row: int) -> pa.Table:
        return table.select(columns)


class StreamLoader(DataLoader):
    """DataLoader over `StreamBatches` (batch_size=None; workers are not persistent: each epoch's workers start
    from the position set here). `epoch_fn()` gives the epoch at the start of each pass (the trainer's). State
    {epoch, consumed, workers: {w: [chunk, done]}}: per worker, the chunk of the batch the training loop is on and
    how many of that chunk's batches it has taken. Lightning's fetcher looks one batch ahead on a loader without a
    length, so the state is the one before the latest batch this loader yielded (the last batch's once the look-ahead
    found the end of the epoch)."""

    def __init__(self, dataset: StreamBatches, epoch_fn: Any, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **{**kwargs, "persistent_workers": False})
        self.epoch_fn = epoch_fn
        self._positions: dict[int, tuple[int, int]] = {}
        self._lagged: dict[int, tuple[int, int]] = {}
        self._consumed = self._lagged_consumed = 0
        self._pending: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[dict]:
        stream: StreamBatches = self.dataset
        epoch = int(self.epoch_fn())
        stream.set_epoch(epoch)
        pending, self._pending = self._pending, None
        if pending is not None and int(pending["epoch"]) == epoch:
            stream.resume = {int(w): (int(p[0]), int(p[1])) for w, p in dict(pending.get("workers", {})).items()}
            self._consumed = int(pending.get("consumed", 0))
        else:
            stream.resume, self._consumed = {}, 0
        self._positions = dict(stream.resume)
        self._lagged, self._lagged_consumed = dict(self._positions), self._consumed
        for batch in super().__iter__():
            self._lagged, self._lagged_consumed = dict(self._positions), self._consumed
            worker, k, b = batch.pop("stream")
            self._positions[worker] = (k, b + 1)
            self._consumed += 1
            yield batch
        # the fetcher's look-ahead found the end: nothing is held back, the state is the last batch's
        self._lagged, self._lagged_consumed = dict(self._positions), self._consumed

    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:
            return dict(self._pending)
        return {"epoch": self.dataset.epoch, "consumed": self._lagged_consumed,
                "workers": {int(w): list(p) for w, p in self._lagged.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pending = {"epoch": int(state["epoch"]), "consumed": int(state.get("consumed", 0)),
                         "workers": {int(w): list(p) for w, p in dict(state.get("workers", {})).items()}}


def split_by_node(ds: Any, rank: int, world: int) -> Any:
    if world <= 1:
        return ds
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(ds, rank=rank, world_size=world)


def first_rows(ds: Any, n: int) -> pa.Table:
    """The first `n` examples of a stream as one arrow table (the split's fixed evaluation rows)."""
    for table in ds.with_format("arrow").iter(batch_size=n):
        return table
    return pa.table({})


def stack_rows(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables) if tables else pa.table({})


__all__ = ["HFOptions", "HFSchema", "HFTable", "StreamBatches", "StreamLoader", "audio_bytes", "open_dataset",
           "open_table", "open_view", "pick_schema", "split_by_node", "first_rows", "np", "torch"]


# -- the shared DataModule's hooks (data/datamodule.py `OmniDataModule`, `source: hf`) -----------------------------
def configure(module: Any, source: str, hf: Mapping[str, Any] | None) -> HFOptions | None:
    """`data.source` / `data.hf` checked at start: None for parquet; for hf the options, with `module.paths` set to
    the HF split names (a parquet path given too is a conflict naming both keys)."""
    if source not in ("parquet", "hf"):
        raise ValueError(f"data.source must be 'parquet' or 'hf', got {source!r}")
    if source == "parquet":
        if hf and hf.get("path") not in (None, ""):
            raise ValueError(f"data.hf.path={hf.get('path')!r} is set but data.source='parquet': set data.source=hf "
                             "(or data.hf.path=null)")
        return None
    opts = HFOptions(**dict(hf or {}))
    for split, value in module.paths.items():
        if value is not None:
            raise ValueError(f"data.source=hf reads data.hf.path={opts.label()!r}, but data.{split}={value!r} is set "
                             f"too: set data.{split}=null (HF splits: data.hf.split / val_split / test_split)")
    module.paths = dict(opts.splits())
    module.hf_splits = dict(opts.splits())
    return opts


def _schemas(module: Any) -> dict[str, HFSchema]:
    from omni.families import hf_schemas

    schemas = hf_schemas(module)
    if not schemas:
        raise ValueError(f"data.source=hf: {type(module).__name__}'s family lists no Hugging Face schemas "
                         "(Family.hf_schemas)")
    return schemas


def source_paths(module: Any, split: str) -> list[str]:
    """The family reads split `split` from this key (an `HFTable` registered in this process). Streaming: a view of
    the split's first `chunk_rows` examples (the fixed rows `examples()` / text metrics use)."""
    opts: HFOptions = module.hf
    name = module.hf_splits[split]
    if not opts.streaming:
        return [open_view(opts, name, _schemas(module))]
    key = f"{PREFIX}{opts.label()}/{name}@head"
    if key not in _TABLES:
        ds = open_dataset(opts, name, streaming=True)
        adapter = pick_schema(_schemas(module), opts.schema, list(ds.column_names or first_rows(ds, 1).column_names),
                              key)
        register(HFTable(key, first_rows(ds, opts.chunk_rows), adapter, opts.group_rows))
    return [key]


def _build_on(module: Any, split: str, key: str) -> tuple[Any, Any]:
    """The family's index and dataset of split `split` built on `key` (module's own split state kept)."""
    saved = (module.paths.get(split), module.indexes.get(split), module.datasets.get(split))
    module.paths[split] = [key]
    try:
        module._build(split)
        return module.indexes[split], module.datasets[split]
    finally:
        module.paths[split] = saved[0]
        for store, value in ((module.indexes, saved[1]), (module.datasets, saved[2])):
            if value is None:
                store.pop(split, None)
            else:
                store[split] = value


def stream_loader(module: Any, split: str, collate: Any, kwargs: dict[str, Any]) -> StreamLoader:
    """The streamed loader of `split` (train: weighted task mix, shuffled; val / test: every pair, in order)."""
    from data.sampler import TokenBudgetBatchSampler

    opts: HFOptions = module.hf
    name = module.hf_splits[split]
    rank, world = module._rank_world()
    ds = split_by_node(open_dataset(opts, name, streaming=True), rank, world)
    head = source_paths(module, split)[0]
    adapter = _TABLES[head].adapter
    train = split == "train"
    tasks = module.tasks if train else module.val_tasks

    def make_sampler(index: Any, seed: list[int]) -> Any:
        if not len(index):
            return []
        try:
            sampler = TokenBudgetBatchSampler(index, tasks, module.max_tokens, module.max_batch_size,
                                              module.window_rows, seed=int(np.random.SeedSequence(seed)
                                                                          .generate_state(1)[0]),
                                              shuffle=train, mix="weighted" if train else "all",
                                              fixed_length=False, drop_uneven=False)
        except ValueError:  # a chunk with no row for a weighted task: its rows still serve the others
            present = {t: w for t, w in tasks.items() if len(index.rows_for(t))}
            if not present:
                return []
            sampler = TokenBudgetBatchSampler(index, present, module.max_tokens, module.max_batch_size,
                                              module.window_rows, seed=int(np.random.SeedSequence(seed)
                                                                          .generate_state(1)[0]),
                                              shuffle=train, mix="weighted" if train else "all",
                                              fixed_length=False, drop_uneven=False)
        return sampler

    stream = StreamBatches(ds, adapter, lambda key: _build_on(module, split, key), make_sampler, collate,
                           label=f"{opts.label()}/{name}", chunk_rows=opts.chunk_rows, seed=module.seed,
                           shuffle_buffer=opts.shuffle_buffer, shuffle=train)
    trainer = module.trainer
    return StreamLoader(stream, lambda: int(trainer.current_epoch) if trainer is not None else 0,
                        **{**kwargs, "collate_fn": _as_is})


def _as_is(batch: Any) -> Any:
    """StreamBatches yields collated batches: the loader hands them on unchanged."""
    return batch
