"""What every family's data shares: a light row index protocol (`RowIndex`: the batch sampler decides, the dataset
loads), the lazy row-group reader every family's dataset is (`RowGroupDataset`: per-process LRU of parquet row
groups, bad rows -> `Skipped` markers or, strict, an error naming file / row / column), and `expand_paths`.
The families' own indexes and datasets live in data/<family>/dataset.py."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Skipped:
    """A row left out, at index time (whole row or some tasks) or at load time. `row` is the row number in `file`."""

    file: str
    row: int
    id: str
    column: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand_paths(paths: str | os.PathLike | list | tuple | None) -> list[str]:
    """Files and folders (-> their *.parquet, recursively) -> sorted unique file list. Missing path -> error."""
    if paths is None:
        return []
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[str] = []
    for p in map(str, items):
        if p.startswith("hf://"):  # a Hugging Face dataset view (data/hf.py), read through `open_table`
            files.append(p)
        elif os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "**", "*.parquet"), recursive=True))
            if not found:
                raise FileNotFoundError(f"no *.parquet files under {p}")
            files.extend(found)
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"data path not found: {p}")
    return sorted(dict.fromkeys(f if f.startswith("hf://") else os.path.abspath(f) for f in files))


def open_table(path: str) -> Any:
    """`pyarrow.parquet.ParquetFile(path)`, or the registered Hugging Face dataset view `path` names (`hf://...`,
    data/hf.py: the same reading API over a `datasets.Dataset`)."""
    if path.startswith("hf://"):
        from data.hf import open_table as open_view

        return open_view(path)
    return pq.ParquetFile(path)


class RowIndex:
    """What the batch sampler and datasets ask of an index (lhotse-style: the sampler decides, the dataset loads).
    Subclasses fill `task_mask` (n,) bitmask over `task_order`, and shard / group / row_in_group / row_in_file
    (n,) locations of the kept rows in `files`; `family` names the task vocabulary in errors."""

    task_order: tuple[str, ...]
    family: str
    files: list[str]

    def __len__(self) -> int:
        return len(self.task_mask)

    def tasks_of(self, i: int) -> list[str]:
        return [t for b, t in enumerate(self.task_order) if int(self.task_mask[i]) >> b & 1]

    def rows_for(self, task: str) -> np.ndarray:
        if task not in self.task_order:
            raise ValueError(f"unknown {self.family} task {task!r}; valid: {list(self.task_order)}")
        return np.flatnonzero(self.task_mask & (1 << self.task_order.index(task)))

    def location(self, i: int) -> tuple[str, int, int, int]:
        """(file, row group, row in group, row in file) of kept row `i`."""
        return self.files[self.shard[i]], int(self.group[i]), int(self.row_in_group[i]), int(self.row_in_file[i])

    # -- bad inputs every family's index records the same way (`skipped`; strict: ValueError naming them) ------
    def _open_shard(self, path: str) -> pq.ParquetFile | None:
        """The open parquet file, or None when its footer cannot be read (truncated / corrupt file): recorded as one
        `unreadable_shard` record (row -1: its row count is unknown); strict: ValueError naming the path."""
        try:
            return open_table(path)
        except (OSError, pa.ArrowException) as exc:
            detail = f"cannot open the parquet file (truncated or corrupt; its rows are not counted): {exc}"
            if self.strict:
                raise ValueError(f"{path}: {detail}") from exc
            self.skipped.append(Skipped(path, -1, "*", "*", "unreadable_shard", detail))
            return None

    def _read_group(self, pf: pq.ParquetFile, path: str, group: int, first_row: int,
                    columns: list[str] | None) -> pa.Table | None:
        """Row group `group` (its first row is file row `first_row`), or None when it cannot be read: each of its
        rows is recorded (`unreadable`, id '?'); strict: ValueError naming the path and row group."""
        try:
            return pf.read_row_group(group, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            size = pf.metadata.row_group(group).num_rows
            detail = f"row group {group} (file rows {first_row}-{first_row + size - 1}) cannot be read: {exc}"
            if self.strict:
                raise ValueError(f"{path}: {detail}") from exc
            self.skipped.extend(Skipped(path, r, "?", "*", "unreadable", detail)
                                for r in range(first_row, first_row + size))
            return None

    def _claim_id(self, row_id: Any, path: str, row: int) -> None:
        """Register the id of a row about to be kept; RowError('id', 'duplicate_id') when an earlier kept row of
        this index has it (the later row is the one left out: ids name rows in reports and eval outputs)."""
        seen = self.__dict__.setdefault("_ids", {})
        if row_id in seen:
            first = seen[row_id]
            raise RowError("id", "duplicate_id", f"id {row_id!r} is already used by {first[0]} row {first[1]}")
        seen[row_id] = (path, int(row))


class RowGroupDataset(Dataset):
    """Map-style dataset over a `RowIndex`; an item key is (row, task) as yielded by the batch sampler (a bare row:
    its first task). Every family's dataset shares the reading: row groups are read whole
    (ParquetFile.read_row_group) into a per-process LRU of at most `cache_row_groups` tables (worker processes
    start with an empty cache), and a `RowError` while reading or building a row gives a `Skipped` marker, or with
    `strict` a ValueError naming file, row, id and column. Subclasses build the example (`example(rec)`, or
    `_example(rec, task)` where the task matters) and may name rows their own way (`_row_ids`)."""

    index: RowIndex
    strict: bool
    unreadable = "cannot read the row: {exc}"  # RowError detail when a row group cannot be read ({group}, {exc})
    stamp_id = False  # True: the example's "id" is the `_row_ids` one
    # example key -> the column it is computed from: float tensors (or lists of them) under these keys must be
    # finite, else the row is a `nonfinite_features` RowError naming that column (nothing non-finite trains)
    feature_columns: dict[str, str] = {}

    def _init_cache(self, cache_row_groups: int) -> None:
        self.cache_row_groups = int(cache_row_groups)
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._files: dict[int, pq.ParquetFile] = {}
        self.group_reads = 0  # row groups read from disk by this process (cache misses)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": OrderedDict(), "_files": {}}  # handles / tables stay in their process

    def __len__(self) -> int:
        return len(self.index)

    def _row_group(self, shard: int, group: int) -> pa.Table:
        key = (shard, group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if shard not in self._files:
            self._files[shard] = open_table(self.index.files[shard])
        table = self._files[shard].read_row_group(group)
        self.group_reads += 1
        self._cache[key] = table
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return table

    def _row(self, i: int) -> dict[str, Any]:
        """Kept row `i` as a {column: value} dict."""
        table = self._row_group(int(self.index.shard[i]), int(self.index.group[i]))
        return table.slice(int(self.index.row_in_group[i]), 1).to_pylist()[0]

    def _row_ids(self, rec: dict[str, Any], path: str, row: int) -> tuple[Any, str]:
        """(the id a strict error names, the id a `Skipped` record carries) of row `row` of `path`; `rec` is {}
        when the row could not be read."""
        row_id = rec.get("id", "?")
        return row_id, str(row_id)

    def _example(self, rec: dict[str, Any], task: str) -> dict[str, Any]:
        """A read row -> its example dict (raises RowError). Default: `example(rec)` (the row names its task)."""
        return self.example(rec)

    def _check_finite(self, example: dict[str, Any]) -> None:
        """RowError(column, 'nonfinite_features') when a `feature_columns` tensor holds NaN / inf."""
        for key, column in self.feature_columns.items():
            value = example.get(key)
            for t in value if isinstance(value, (list, tuple)) else [value]:
                # a sum holding a NaN / inf is never finite: one pass, no mask (~6 us vs ~115 us for an 80 x 1000
                # mel); a finite tensor whose sum overflows falls through to the exact count (0: not an error)
                if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t.sum())):
                    bad = int((~torch.isfinite(t)).sum())
                    if bad:
                        raise RowError(column, "nonfinite_features",
                                       f"{key} computed from {column} holds {bad} non-finite (NaN/inf) value(s)")

    def __getitem__(self, item: tuple[int, str] | int) -> dict[str, Any] | Skipped:
        """(row, task) -> the subclass's example dict + file, row (the row number in file), or `Skipped`."""
        row, task = (item, self.index.tasks_of(item)[0]) if isinstance(item, (int, np.integer)) else item
        path, group, _, in_file = self.index.location(int(row))
        rec: dict[str, Any] = {}
        try:
            try:
                rec = self._row(int(row))
            except (OSError, pa.ArrowException) as exc:
                raise RowError("*", "unreadable", self.unreadable.format(group=group, exc=exc)) from exc
            example = self._example(rec, task)
            self._check_finite(example)
        except RowError as err:
            named, row_id = self._row_ids(rec, path, in_file)
            if self.strict:
                raise ValueError(f"{path}: row {in_file} (id={named!r}), column {err.column!r}: {err.detail}") \
                    from err
            return Skipped(path, in_file, row_id, err.column, err.reason, err.detail)
        if self.stamp_id:
            example["id"] = self._row_ids(rec, path, in_file)[1]
        example.update(file=path, row=in_file)
        return example


class RowError(Exception):
    """A problem with one column of one row (-> `Skipped`, or a ValueError naming file/row/column when strict)."""

    def __init__(self, column: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.column, self.reason, self.detail = column, reason, detail


class IndexCache:
    """Per-shard index results kept on disk between runs (a rerun reads them instead of every row). An entry is
    one `.npz` file (numpy arrays, read with allow_pickle=False; never pickle) holding the family's arrays and a
    JSON header: the shard's stamp (absolute path, size, mtime_ns, sha1 of its last 64 KiB: the parquet footer),
    the `fingerprint` of everything else that decides the results (config fields, tokenizer, the code's source:
    the family passes it) and a sha1 of the arrays. A changed shard has another stamp, so its old entry is never
    used (it is replaced when the shard is re-indexed); an entry that cannot be read or does not match (corrupt,
    truncated, another shard's, failed the family's `check`) is reported as a warning and rebuilt, never used.
    Writes are atomic (temporary file + rename), so ranks indexing the same shard at once are safe."""

    VERSION = 1
    TAIL = 1 << 16

    def __init__(self, root: str | os.PathLike, fingerprint: Any) -> None:
        self.root = os.path.expanduser(str(root))
        self.fingerprint = hashlib.sha1(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
        self.hits = self.misses = self.rejected = 0
        self._writable = True

    def stamp(self, path: str) -> dict[str, Any] | None:
        """What identifies this version of the shard: size, mtime and footer hash of a file; `datasets`'
        fingerprint of an open `hf://` view (data.hf.view_stamp); None: not cacheable."""
        if path.startswith("hf://"):
            from data.hf import view_stamp

            return view_stamp(path)
        st = os.stat(path)
        with open(path, "rb") as f:
            f.seek(max(0, st.st_size - self.TAIL))
            tail = hashlib.sha1(f.read()).hexdigest()
        return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "tail_sha1": tail}

    def _prefix(self, path: str) -> str:  # one entry per (shard path, fingerprint): a newer stamp replaces it
        return hashlib.sha1(f"{os.path.abspath(path)}\0{self.fingerprint}".encode()).hexdigest()[:20]

    def _file(self, path: str, stamp: dict[str, Any]) -> str:
        digest = hashlib.sha1(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:20]
        return os.path.join(self.root, f"{self._prefix(path)}-{digest}.npz")

    @staticmethod
    def _digest(arrays: dict[str, np.ndarray]) -> str:
        h = hashlib.sha1()
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name])
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def load(self, path: str, check=None) -> tuple[dict[str, np.ndarray], Any] | None:
        """(arrays, extra) stored for this version of `path`, or None (a miss, or a rejected entry: warned).
        `check(arrays, extra)` raises ValueError when the entry does not fit the shard (then rejected)."""
        stamp = self.stamp(path)
        file = None if stamp is None else self._file(path, stamp)
        if file is None or not os.path.exists(file):
            self.misses += 1
            return None
        try:
            with np.load(file, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            header = json.loads(arrays.pop("__header__").tobytes().decode())
            if header.get("version") != self.VERSION or header.get("stamp") != stamp \
                    or header.get("fingerprint") != self.fingerprint:
                raise ValueError("its header names another shard version, configuration or format")
            if header.get("sha1") != self._digest(arrays):
                raise ValueError("its arrays do not match their checksum")
            if check is not None:
                check(arrays, header.get("extra"))
        except Exception as exc:  # a corrupt file can fail in many ways (zip, npy header, JSON, shapes): all rebuild
            warnings.warn(f"index cache entry {file} for {path} is not usable ({type(exc).__name__}: {exc}); "
                          "re-indexing the shard", stacklevel=2)
            self.rejected += 1
            return None
        self.hits += 1
        return arrays, header.get("extra")

    def store(self, path: str, arrays: dict[str, np.ndarray], extra: Any = None) -> None:
        """Keep `arrays` (+ JSON-able `extra`) for this version of `path`; older entries of the shard are removed.
        A cache folder that cannot be written is warned about once and then left alone."""
        stamp = self.stamp(path)
        if stamp is None or not self._writable:
            return
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        header = {"version": self.VERSION, "stamp": stamp, "fingerprint": self.fingerprint,
                  "sha1": self._digest(arrays), "extra": extra}
        file = self._file(path, stamp)
        try:
            os.makedirs(self.root, exist_ok=True)
            for old in glob.glob(os.path.join(self.root, self._prefix(path) + "-*.npz")):
                if old != file:
                    os.remove(old)
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
                os.replace(tmp, file)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        except OSError as exc:
            warnings.warn(f"index cache folder {self.root} cannot be written ({exc}); indexing without it",
                          stacklevel=2)
            self._writable = False
