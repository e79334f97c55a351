"""TokenBudgetBatchSampler and the length estimate, on a synthetic in-memory index (no files)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from data.mini_omni.lengths import TASK_ORDER, estimate_length
from data.sampler import TokenBudgetBatchSampler, greedy_batches
from omni.mini_omni.layout import build_example
from omni.mini_omni.tokens import MiniOmniTokens

torch.set_num_threads(1)

ASR, A1T2, TTS = (1 << TASK_ORDER.index(t) for t in ("asr", "a1t2", "tts"))


@dataclass
class FakeIndex:
    """What the sampler reads (see data.mini_omni.dataset.ParquetIndex): three arrays and the task vocabulary."""

    task_mask: np.ndarray
    group_id: np.ndarray
    lengths: np.ndarray
    task_order: tuple[str, ...] = TASK_ORDER


def make_index(n_audio: int = 400, n_tts: int = 200, rows_per_group: int = 20, seed: int = 0) -> FakeIndex:
    """Rows 0..n_audio-1 serve asr + a1t2, the rest serve tts only; lengths uniform in [20, 300)."""
    rng = np.random.default_rng(seed)
    n = n_audio + n_tts
    mask = np.array([ASR | A1T2] * n_audio + [TTS] * n_tts, dtype=np.uint8)
    lengths = np.zeros((n, len(TASK_ORDER)), dtype=np.int32)
    for b in range(len(TASK_ORDER)):
        on = (mask >> b & 1).astype(bool)
        lengths[on, b] = rng.integers(20, 300, on.sum())
    return FakeIndex(mask, np.arange(n, dtype=np.int32) // rows_per_group, lengths)


def sampler(index=None, **kw) -> TokenBudgetBatchSampler:
    args = dict(tasks={"asr": 1.0, "tts": 0.5}, max_tokens=2000, window_rows=100, seed=3)
    args.update(kw)
    return TokenBudgetBatchSampler(index if index is not None else make_index(), **args)


def as_tuples(batches) -> list[tuple]:
    return [tuple(map(tuple, b)) for b in batches]


def test_every_batch_respects_the_token_budget():
    idx = make_index()
    s = sampler(idx, max_batch_size=12)
    for batch in s:
        lens = [idx.lengths[r, TASK_ORDER.index(t)] for r, t in batch]
        assert len(batch) * max(lens) <= 2000
        assert len(batch) <= 12


def test_task_mix_follows_weights_and_oversamples_by_the_documented_rule():
    idx = make_index()
    s = sampler(idx, tasks={"asr": 1.0, "tts": 0.5, "a1a2": 0.0})
    counts = Counter(t for b in s for _, t in b)
    assert set(counts) == {"asr", "tts"}  # weight 0 and absent tasks excluded
    assert counts["asr"] / counts["tts"] == pytest.approx(2.0, rel=0.05)
    # equal weights: N = 600 rows -> 300 tts draws from 200 tts rows = every row once + 100 rows twice
    s = sampler(idx, tasks={"asr": 1.0, "tts": 1.0})
    tts_rows = Counter(r for b in s for r, t in b if t == "tts")
    assert sorted(Counter(tts_rows.values()).items()) == [(1, 100), (2, 100)]


def test_deterministic_for_a_seed_and_different_across_epochs():
    a, b = sampler(), sampler()
    assert as_tuples(a.global_batches(0)) == as_tuples(b.global_batches(0))
    assert as_tuples(a.global_batches(0)) != as_tuples(a.global_batches(1))
    assert as_tuples(a.global_batches(0)) != as_tuples(sampler(seed=4).global_batches(0))
    assert len({len(a.rank_batches(e)) for e in range(4)}) == 1  # fixed length: Lightning reads len() once


def test_ranks_get_disjoint_equal_batch_sets_covering_the_epoch():
    world = 3
    ranks = [sampler(rank=r, world_size=world) for r in range(world)]
    for r in ranks:
        r.set_epoch(2)
    per_rank = [as_tuples(r.rank_batches(2)) for r in ranks]
    assert len({len(p) for p in per_rank}) == 1
    flat = [b for p in per_rank for b in p]
    assert sorted(flat) == sorted(as_tuples(ranks[0].global_batches(2)))
    assert len(ranks[0].global_batches(2)) % world == 0
    listed = [list(r) for r in ranks]  # what iteration yields matches the plan
    assert [len(x) for x in listed] == [len(p) for p in per_rank]


def test_state_dict_resumes_at_the_next_unseen_batch():
    s = sampler()
    s.set_epoch(1)
    it = iter(s)
    seen = [next(it) for _ in range(5)]
    state = s.state_dict()
    assert state == {"epoch": 1, "consumed": 5}
    full = list(sampler().rank_batches(1))
    resumed = sampler()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # Lightning sets the same epoch after loading: the offset survives
    rest = list(resumed)
    assert seen + rest == [[(int(r), TASK_ORDER[int(t)]) for r, t in b] for b in full]
    assert len(list(resumed)) == len(full)  # the offset is one-shot: the next pass is a whole epoch
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a new epoch drops the pending offset
    assert len(list(resumed)) == len(full)


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid tasks.*asr.*tts"):
        sampler(tasks={"asr": 1.0, "speech2speech": 1.0})
    with pytest.raises(ValueError, match="no eligible rows"):
        sampler(tasks={"t1t2": 1.0})


def test_length_buckets_reduce_padding_vs_random_batches():
    idx = make_index()
    s = sampler(idx)
    batches = list(s)

    def pad_fraction(groups):
        lens = [[idx.lengths[r, TASK_ORDER.index(t)] for r, t in g] for g in groups]
        return 1 - sum(map(sum, lens)) / sum(len(x) * max(x) for x in lens)

    items = [p for b in batches for p in b]
    order = np.random.default_rng(0).permutation(len(items))
    sizes, random_batches, i = [len(b) for b in batches], [], 0
    for n in sizes:  # same batch sizes, random membership
        random_batches.append([items[j] for j in order[i : i + n]])
        i += n
    assert pad_fraction(batches) < 0.1 < pad_fraction(random_batches)


def test_eval_mode_covers_every_pair_once_in_file_order():
    idx = make_index(n_audio=30, n_tts=10)
    s = sampler(idx, tasks={"asr": 1.0, "a1t2": 1.0, "tts": 1.0}, shuffle=False, mix="all", fixed_length=False,
                drop_uneven=False)
    pairs = [p for b in s for p in b]
    assert sorted(pairs) == sorted([(r, "asr") for r in range(30)] + [(r, "a1t2") for r in range(30)]
                                   + [(r, "tts") for r in range(30, 40)])
    assert as_tuples(s.global_batches(0)) == as_tuples(s.global_batches(5))


def test_greedy_batches_table():
    assert greedy_batches(np.array([1, 2, 3, 4, 10]), max_tokens=8) == [(0, 2), (2, 4), (4, 5)]
    assert greedy_batches(np.array([1, 1, 1, 1]), max_tokens=100, max_batch_size=3) == [(0, 3), (3, 4)]
    assert greedy_batches(np.array([50]), max_tokens=10) == [(0, 1)]  # alone over budget: its own batch
    assert greedy_batches(np.array([], dtype=int), max_tokens=10) == []


@pytest.mark.parametrize("task", TASK_ORDER)
def test_estimate_length_matches_the_layout(task):
    """With one char per token the estimate is exact: it must equal layout.build_example's L."""
    tok = MiniOmniTokens(text_vocab=256, codebook_size=64)
    duration, n_frames, q_chars, a_chars = 0.47, 9, 5, 3
    t_frames = int(duration * 1000 / 20) + 1
    question = list(range(a_chars if task == "tts" else q_chars))
    answer = list(range(q_chars if task == "asr" else a_chars))
    layout = build_example(
        tok, task, answer_ids=answer, question_ids=None if task in ("asr", "a1t2", "a1a2") else question,
        n_audio_frames=t_frames, answer_codes=torch.zeros(n_frames, 7, dtype=torch.long),
    )
    est = estimate_length(task, duration, n_frames, q_chars, a_chars, chars_per_token=1.0)
    assert est == layout.inputs.shape[1]
    arr = estimate_length(task, np.array([duration] * 2), np.array([n_frames] * 2), np.array([q_chars] * 2),
                          np.array([a_chars] * 2), chars_per_token=1.0)
    assert arr.tolist() == [est, est]
    if task in ("asr", "a1t2", "a1a2"):  # clamp to the encoder's positions
        assert estimate_length(task, 100.0, n_frames, q_chars, a_chars, 1.0, max_audio_frames=10) < est + 10
