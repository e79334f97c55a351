"""Token-budget batch sampler: decides which (row, task) pairs form each batch of an epoch.

The sampler owns every choice about batch content (task mix, order, bucketing, rank sharding); the dataset only
loads one (row, task) item and the collator only pads. It reads the index duck-typed: `task_mask` (n,) uint16
bitmask over the index's `task_order` tuple (its family's tasks), `group_id` (n,) int global
parquet row-group id, `lengths` (n, n_tasks) estimated sequence lengths (see `estimate_length`).

One epoch, built identically on every rank from `seed + epoch`:
1. Task mix ("weighted"): tasks with weight > 0 are used. N = number of rows eligible for at least one used task
   (or `epoch_size`). Task t gets count_t = round(N * w_t / sum(w)) draws from its E_t eligible rows: every row
   floor(count_t / E_t) times, plus a seeded random subset of count_t mod E_t rows (so a task with fewer rows than
   its share is oversampled by repetition, each row appearing floor or ceil times). "all" mix (evaluation):
   every eligible (row, used task) pair exactly once.
2. Order: pairs sorted by a seeded permutation of row groups (random order inside a group), so consecutive
   batches read the same few row groups and a corpus larger than RAM streams through a bounded cache.
3. Buckets: that order is cut into windows of `window_rows` pairs; inside a window pairs are sorted by length and
   greedily packed while n_items * max_len_in_batch <= max_tokens (and n_items <= max_batch_size); batches are
   shuffled inside their window.
4. Fixed length: the epoch's batch list is cut (or cyclically repeated from its start) to the global count of
   epoch 0 rounded down to a multiple of world_size, so `len()` is the same every epoch (Lightning reads it once)
   and every rank gets the same number of batches (DDP needs it). Rank r takes batches r::world_size.
   With `fixed_length=False` (evaluation) the count is the epoch's own, padded by repeating batches to a multiple
   of world_size when `drop_uneven=False`, truncated otherwise.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from data.packing import ffd_bins

def resolve_task_weights(tasks: Mapping[str, float] | None, valid: tuple[str, ...]) -> dict[str, float]:
    """Validated {task: weight > 0}; weight-0 tasks dropped. Unknown names -> ValueError listing valid tasks."""
    tasks = dict(tasks or {})
    unknown = sorted(set(tasks) - set(valid))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid tasks: {list(valid)}")
    if any(float(w) < 0 for w in tasks.values()):
        raise ValueError(f"task weights must be >= 0, got {tasks}")
    out = {t: float(w) for t, w in tasks.items() if float(w) > 0}
    if not out:
        raise ValueError(f"no task has a positive weight in {tasks}; valid tasks: {list(valid)}")
    return out


def greedy_batches(lengths: np.ndarray, max_tokens: int, max_batch_size: int | None = None) -> list[tuple[int, int]]:
    """Pack ascending `lengths` (n,) into consecutive [start, end) spans with (end-start) * lengths[end-1] <=
    max_tokens and end-start <= max_batch_size. An item alone over budget still gets its own batch."""
    spans, start, n = [], 0, len(lengths)
    for i in range(1, n):
        size = i + 1 - start  # batch [start, i]; lengths ascending, so its max is lengths[i]
        if size * int(lengths[i]) > max_tokens or (max_batch_size is not None and size > max_batch_size):
            spans.append((start, i))
            start = i
    if n:
        spans.append((start, n))
    return spans


class TokenBudgetBatchSampler:
    """Batches of (row, task) pairs under a padded-token budget; see the module docstring for the epoch rule.

    Yields lists of (row: int, task: str). `set_epoch(e)` reseeds the plan; `state_dict()` / `load_state_dict()`
    hold {epoch, consumed} so a resumed run continues at the next unseen batch of that epoch.
    """

    def __init__(
        self,
        index: Any,
        tasks: Mapping[str, float],
        max_tokens: int,
        max_batch_size: int | None = None,
        window_rows: int = 1000,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        mix: str = "weighted",
        epoch_size: int | None = None,
        fixed_length: bool = True,
        drop_uneven: bool = True,
        pack_len: int | None = None,
    ) -> None:
        if mix not in ("weighted", "all"):
            raise ValueError(f"mix must be 'weighted' or 'all', got {mix!r}")
        if max_tokens <= 0 or window_rows <= 0 or (max_batch_size is not None and max_batch_size <= 0):
            raise ValueError("max_tokens, window_rows and max_batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        self.task_order: tuple[str, ...] = tuple(index.task_order)  # the index names its family's tasks
        self.index, self.weights = index, resolve_task_weights(tasks, self.task_order)
        self.max_tokens, self.max_batch_size, self.window_rows = int(max_tokens), max_batch_size, int(window_rows)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle, self.mix, self.epoch_size = shuffle, mix, epoch_size
        self.fixed_length, self.drop_uneven = fixed_length, drop_uneven
        # packing (data.packing=true): bins of <= pack_len estimated positions, max_tokens // pack_len bins a batch
        self.pack_len = None if pack_len is None else int(pack_len)
        if self.pack_len is not None and not 0 < self.pack_len <= self.max_tokens:
            raise ValueError(f"pack_len {pack_len} must be in (0, max_tokens={self.max_tokens}]")
        self.epoch, self._resume_offset, self._yielded = 0, 0, 0
        self._plans: dict[int, list[np.ndarray]] = {}  # epoch -> global batches (cache of the last two epochs)
        self._target: int | None = None
        empty = [t for t, rows in self._task_rows().items() if len(rows) == 0]
        if empty and mix == "weighted":
            raise ValueError(f"task(s) {empty} have a positive weight but no eligible rows in the data")

    # -- Lightning calls `dataloader.batch_sampler.sampler.set_epoch(e)`; there is no inner index sampler here
    @property
    def sampler(self) -> "TokenBudgetBatchSampler":
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch`'s plan. A different epoch than the current one drops any pending resume offset."""
        if int(epoch) != self.epoch:
            self.epoch, self._resume_offset, self._yielded = int(epoch), 0, 0

    def state_dict(self) -> dict[str, int]:
        """{epoch, consumed}: batches of this rank handed out in `epoch` (or the pending resume offset)."""
        return {"epoch": self.epoch, "consumed": max(self._yielded, self._resume_offset)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume: the next iteration starts at batch `consumed` of epoch `epoch` (one-shot offset)."""
        self.epoch, self._resume_offset, self._yielded = int(state["epoch"]), int(state["consumed"]), 0

    @property
    def resume_offset(self) -> int:
        return self._resume_offset

    def __len__(self) -> int:
        return len(self.rank_batches(self.epoch))

    def __iter__(self) -> Iterator[list[tuple[int, str]]]:
        # a generator: nothing (epoch, offset) is read until the first next(), i.e. after Lightning's set_epoch
        batches = self.rank_batches(self.epoch)
        start, self._resume_offset = self._resume_offset, 0
        self._yielded = start
        for pairs in batches[start:]:
            self._yielded += 1
            yield [(int(r), self.task_order[int(t)]) for r, t in pairs]

    # -- planning --------------------------------------------------------------------------------------------------
    def rank_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches for `epoch`: list of (n_items, 2) int arrays of (row, task index)."""
        plan = self.global_batches(epoch)
        return plan[self.rank :: self.world_size]

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """All ranks' batches for `epoch`, already cut to the shared length (see module docstring, step 4)."""
        if epoch not in self._plans:
            batches = self._plan(epoch)
            if len(self._plans) >= 2:
                self._plans.pop(next(iter(self._plans)))
            self._plans[epoch] = self._fit_length(batches, epoch)
        return self._plans[epoch]

    def _fit_length(self, batches: list[np.ndarray], epoch: int) -> list[np.ndarray]:
        w = self.world_size
        if self.fixed_length:
            if self._target is None:  # epoch 0's count, whatever epoch is planned first (e.g. after a resume)
                self._target = (len(batches) if epoch == 0 else len(self._plan(0))) // w * w
            target = self._target
        else:
            target = len(batches) // w * w if self.drop_uneven else -(-len(batches) // w) * w
        if not batches or target <= len(batches):
            return batches[:target]
        reps = -(-target // len(batches))
        return (batches * reps)[:target]

    def _plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        pairs = self._mix(rng) if self.mix == "weighted" else self._all_pairs()
        pairs = pairs[self._order(pairs, rng)]
        lengths = self.index.lengths[pairs[:, 0], pairs[:, 1]]
        batches: list[np.ndarray] = []
        for w0 in range(0, len(pairs), self.window_rows):
            win, wlen = pairs[w0 : w0 + self.window_rows], lengths[w0 : w0 + self.window_rows]
            if self.pack_len is not None:
                window_batches = self._packed_batches(win, wlen)
            else:
                by_len = np.argsort(wlen, kind="stable")
                spans = greedy_batches(wlen[by_len], self.max_tokens, self.max_batch_size)
                window_batches = [win[by_len[a:b]] for a, b in spans]
            if self.shuffle:
                window_batches = [window_batches[i] for i in rng.permutation(len(window_batches))]
            batches.extend(window_batches)
        return batches

    def _packed_batches(self, win: np.ndarray, wlen: np.ndarray) -> list[np.ndarray]:
        """Packing: the window's pairs in first-fit-decreasing bins of <= pack_len positions, max_tokens // pack_len
        bins (at most max_batch_size) per batch, items bin after bin (data/packing.py re-packs them in this order)."""
        bins = ffd_bins(wlen, self.pack_len)
        per = max(1, self.max_tokens // self.pack_len)
        if self.max_batch_size is not None:
            per = min(per, self.max_batch_size)
        return [win[np.concatenate(bins[j : j + per])] for j in range(0, len(bins), per)]

    def _task_rows(self) -> dict[str, np.ndarray]:
        mask = np.asarray(self.index.task_mask)
        return {t: np.flatnonzero(mask & (1 << self.task_order.index(t))) for t in self.weights}

    def _mix(self, rng: np.random.Generator) -> np.ndarray:
        """(n_pairs, 2) (row, task index) drawn by the weighted rule of the module docstring."""
        rows = self._task_rows()
        used = np.zeros(len(self.index.task_mask), dtype=bool)
        for r in rows.values():
            used[r] = True
        n_total = int(self.epoch_size if self.epoch_size is not None else used.sum())
        total_w = sum(self.weights.values())
        parts = []
        for task, w in self.weights.items():
            count, eligible = int(round(n_total * w / total_w)), rows[task]
            if count == 0:
                continue
            reps, rem = divmod(count, len(eligible))
            picked = np.concatenate([np.tile(eligible, reps), rng.permutation(eligible)[:rem]])
            parts.append(np.stack([picked, np.full_like(picked, self.task_order.index(task))], axis=1))
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)

    def _all_pairs(self) -> np.ndarray:
        parts = [np.stack([r, np.full_like(r, self.task_order.index(t))], axis=1)
                 for t, r in self._task_rows().items()]
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)

    def _order(self, pairs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Permutation of `pairs` grouped by row group: seeded group order and in-group order when shuffling,
        file order (row, then task) otherwise."""
        groups = np.asarray(self.index.group_id)[pairs[:, 0]]
        if not self.shuffle:
            return np.lexsort((pairs[:, 1], pairs[:, 0], groups))
        n_groups = int(np.asarray(self.index.group_id).max()) + 1 if len(pairs) else 0
        group_rank = rng.permutation(n_groups)
        return np.lexsort((rng.random(len(pairs)), group_rank[groups]))
