"""Sequence packing (`data.packing=true`): several rows per sequence within the token budget, padding to ~0.

Who does what:
- The batch sampler (data/sampler.py, `pack_len`) cuts each window of (row, task) pairs into bins of at most
  `pack_len` estimated positions by first-fit decreasing (`ffd_bins`), puts max_tokens // pack_len bins in a batch
  and yields the batch's items bin after bin.
- `PackingCollator` wraps the family's collator: it collates the items as usual (padded, one row per sequence),
  then lays them end to end with next-fit in the order given (`PackPlan.next_fit` on the real lengths: the sampler's
  bins again when the index lengths are exact), so every per-item list (audio clips, images, speaker embeddings)
  keeps its order and only its indices change. The family's `pack(batch, plan)` hook (registry field `packer`)
  moves its grids with `plan.grid` and remaps its item indices / flat positions; this module adds
  `segment_ids` (S, L) (k + 1 on the k-th item, 0 on padding), `position_ids` (S, L) restarting at 0 per item,
  `attention_mask` (S, L) (1 on real positions), `item_seq` / `item_offset` (N,) and `n_sequences`.
- The model builds the block-diagonal causal mask from `segment_ids` (omni/packing.py).

Losses are means over target positions, so a packed batch's loss equals the same rows' padded loss (tests/
test_packing.py, per family).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch


def ffd_bins(lengths: np.ndarray, capacity: int) -> list[np.ndarray]:
    """First-fit decreasing: item indices grouped into bins whose lengths sum to <= capacity (an item longer than
    capacity gets a bin of its own). Bins come in order of creation (the longest first); items in a bin by length,
    longest first. Deterministic (stable sort)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    free: list[int] = []
    bins: list[list[int]] = []
    for i in order.tolist():
        n = int(lengths[i])
        for b, room in enumerate(free):
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(capacity - n)
    return [np.asarray(b, dtype=np.int64) for b in bins]


@dataclass(frozen=True)
class PackPlan:
    """Where each of N collated items goes: sequence `seq` (N,), first position `offset` (N,), `length` (N,);
    `n_seqs` sequences of `seq_len` positions (the fullest sequence's fill)."""

    seq: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    n_seqs: int
    seq_len: int

    @classmethod
    def next_fit(cls, lengths: Any, capacity: int) -> "PackPlan":
        """Items in the order given, a new sequence whenever the next item would overflow `capacity`."""
        lengths = np.asarray(lengths, dtype=np.int64)
        seq, offset = np.zeros_like(lengths), np.zeros_like(lengths)
        s, fill = 0, 0
        for i, n in enumerate(lengths.tolist()):
            if fill and fill + n > capacity:
                s, fill = s + 1, 0
            seq[i], offset[i] = s, fill
            fill += n
        fills = np.bincount(seq, weights=lengths, minlength=s + 1) if len(lengths) else np.zeros(0)
        return cls(seq, offset, lengths, int(s + 1) if len(lengths) else 0, int(fills.max()) if len(fills) else 0)

    def grid(self, x: torch.Tensor, fill: Any) -> torch.Tensor:
        """(N, ..., L_pad) per-item grid (items left-aligned) -> (n_seqs, ..., seq_len) packed, `fill` elsewhere (a
        scalar, or a tensor of shape x.shape[1:-1]: e.g. one pad id per stream row)."""
        shape = (self.n_seqs, *x.shape[1:-1], self.seq_len)
        if isinstance(fill, torch.Tensor):
            out = fill.to(x.dtype).view(1, *x.shape[1:-1], 1).expand(shape).clone()
        else:
            out = torch.full(shape, fill, dtype=x.dtype)
        for i in range(len(self.seq)):
            o, n = int(self.offset[i]), int(self.length[i])
            out[int(self.seq[i]), ..., o : o + n] = x[i, ..., :n]
        return out

    def flat_positions(self, flat: torch.Tensor, padded_len: int) -> torch.Tensor:
        """Flat indices b * L_pad + p into the padded (N, L_pad) grid -> seq * seq_len + offset + p (packed)."""
        if flat.numel() == 0:
            return flat
        b, p = flat // padded_len, flat % padded_len
        seq = torch.as_tensor(self.seq, dtype=torch.long)[b]
        off = torch.as_tensor(self.offset, dtype=torch.long)[b]
        return seq * self.seq_len + off + p

    def item_seq(self, index: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.seq, dtype=torch.long)[index] if index.numel() else index

    def item_offset(self, index: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.offset, dtype=torch.long)[index] if index.numel() else index

    def segments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(segment_ids, position_ids), both (n_seqs, seq_len) long."""
        seg = torch.zeros((self.n_seqs, self.seq_len), dtype=torch.long)
        pos = torch.zeros((self.n_seqs, self.seq_len), dtype=torch.long)
        for i in range(len(self.seq)):
            o, n, s = int(self.offset[i]), int(self.length[i]), int(self.seq[i])
            seg[s, o : o + n] = i + 1
            pos[s, o : o + n] = torch.arange(n)
        return seg, pos


def padding_column(grid: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | int:
    """The value(s) a padded (N, ..., L) grid holds on padding (a tensor of shape grid.shape[1:-1], read at its first
    padding position), or 0 when no item has padding. Packed padding is attended by no real position and has no
    target, so any valid id serves; this keeps the collator's own pad ids."""
    where = (attention_mask == 0).nonzero()
    if len(where) == 0:
        return 0
    b, p = (int(v) for v in where[0])
    return grid[b, ..., p]


class PackingCollator:
    """collate_fn: the family collator's padded batch -> the packed batch (module docstring). `packer(batch, plan)`
    is the family's hook (registry `Family.packer`); `capacity` is the sequence length to pack to (data.max_len)."""

    def __init__(self, collator: Callable[[list[Any]], dict[str, Any]], packer: Callable[..., dict[str, Any]],
                 capacity: int) -> None:
        self.collator, self.packer, self.capacity = collator, packer, int(capacity)

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        batch = self.collator(items)
        return pack_batch(batch, self.packer, self.capacity)


def pack_batch(batch: dict[str, Any], packer: Callable[..., dict[str, Any]], capacity: int) -> dict[str, Any]:
    """A padded family batch (one item per sequence, 2-D `attention_mask`) -> its packed form (module docstring)."""
    lengths = batch["attention_mask"].sum(dim=1).numpy()
    plan = PackPlan.next_fit(lengths, capacity)
    out = packer(dict(batch), plan)
    seg, pos = plan.segments()
    out.update(segment_ids=seg, position_ids=pos, attention_mask=(seg > 0).long(),
               item_seq=torch.as_tensor(plan.seq, dtype=torch.long),
               item_offset=torch.as_tensor(plan.offset, dtype=torch.long), n_sequences=plan.n_seqs)
    if "n_tokens" in batch and int(out["attention_mask"].sum()) != int(batch["n_tokens"]):
        raise AssertionError(f"packing lost positions: {int(out['attention_mask'].sum())} != {batch['n_tokens']}")
    return out
