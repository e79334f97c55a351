"""MiniMind-O index cache (data.dataset.IndexCache) and the loader's column reading.

- a warm build reads every shard from the cache (no row is read) and equals the cold build and an uncached one;
- a changed shard (even with its old mtime put back) is re-indexed: its new lengths, never the cached ones;
- a corrupt cache entry (truncated, bytes changed, out-of-range values under a valid checksum) is warned about and
  rebuilt: lengths equal the uncached index;
- duplicate ids across shards are left out as before (later row, naming the first), and a hash collision between
  different ids drops nothing (the ids themselves are compared);
- the dataset's numpy column reading gives the rows `to_pylist` gives (nulls, empty lists, null turns), and a
  null inside a code list falls back to the generic reading;
- the reader's tokenizer path (backend, constant texts once) gives tokenizer.encode's ids.
"""
import json
import os
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import data.minimind_o.dataset as D
from data.dataset import IndexCache
from data.minimind_o.schema import WRITE_SCHEMA
from tests.test_minimind_data import SAMPLE, datamodule, model_cfg  # noqa: F401  (fixture)
from tests.test_minimind_index_lengths import reader  # noqa: F401  (fixture: the sample's length reader)

torch.set_num_threads(1)


def conv(answer: str) -> str:
    return json.dumps([{"role": "user", "content": "hello there"}, {"role": "assistant", "content": answer}])


def row(i: int, answer: str = "hi", frames: int = 3, rid: str | None = None) -> dict:
    return dict(id=rid or f"r{i}", conversations=conv(answer), answer_audios=[[1] * (8 * frames)],
                ref_audios=None, spk_emb=None, question_audios=None, image_bytes=None)


def write(path, rows, group_rows=2):
    pq.write_table(pa.Table.from_pylist(rows, schema=WRITE_SCHEMA), path, row_group_size=group_rows)


def corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    write(d / "a.parquet", [row(0), row(1, frames=5), row(2, "", rid="blank"), row(3, frames=9)])
    write(d / "b.parquet", [row(4, frames=2), row(5, "ok", frames=4)])
    return d


def state(index):
    """Everything the index exposes, comparable."""
    arrays = {k: getattr(index, k).tolist() for k in ("shard", "group", "row_in_group", "row_in_file", "group_id",
                                                     "task_mask", "lengths")}
    return arrays, sorted((s.file, s.row, s.id, s.column, s.reason, s.detail) for s in index.skipped)


def test_warm_build_reads_the_cache_only_and_equals_cold(reader, tmp_path, monkeypatch):
    d, cache = corpus(tmp_path), tmp_path / "cache"
    plain = D.MiniMindOIndex(str(d), reader)
    cold = D.MiniMindOIndex(str(d), reader, cache=cache)
    assert (cold.cache.hits, cold.cache.misses) == (0, 2) and len(list(cache.glob("*.npz"))) == 2
    assert state(cold) == state(plain)
    assert [s.reason for s in plain.skipped] == ["blank_text"] and len(plain) == 5
    monkeypatch.setattr(D.MiniMindOIndex, "_scan", lambda *a: pytest.fail("a warm build read a shard"))
    warm = D.MiniMindOIndex(str(d), reader, cache=cache)
    assert (warm.cache.hits, warm.cache.misses, warm.cache.rejected) == (2, 0, 0)
    assert state(warm) == state(plain)
    # another max_len is another fingerprint: its own entries, not these
    other = D.MiniMindOIndex.__new__(D.MiniMindOIndex)
    other.reader = D.RowReader(reader.tok, reader.tokenizer, reader.audio, reader.vision, reader.spk_dim, 40)
    assert IndexCache(cache, other.fingerprint()).fingerprint != warm.cache.fingerprint


def test_changed_shard_is_reindexed_even_with_its_old_mtime(reader, tmp_path):
    d, cache = corpus(tmp_path), tmp_path / "cache"
    before = D.MiniMindOIndex(str(d), reader, cache=cache)
    path = d / "b.parquet"
    st = os.stat(path)
    write(path, [row(4, frames=2), row(5, "ok", frames=20)])  # row 5: 16 more frames
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old mtime back: size / footer still differ
    after = D.MiniMindOIndex(str(d), reader, cache=cache)
    assert (after.cache.hits, after.cache.misses) == (1, 1)  # a.parquet from the cache, b.parquet re-indexed
    assert state(after) == state(D.MiniMindOIndex(str(d), reader))
    last = lambda ix: int(ix.lengths[-1].max())  # noqa: E731  (b.parquet row 5, the last kept row)
    assert last(after) == last(before) + 16  # one position per frame (L = s + N + K): the cached length was not used
    assert len(list(cache.glob("*.npz"))) == 2  # the stale entry of b.parquet was replaced


def rewrite_entry(file, change):
    """Rewrite a cache entry with `change(arrays, header)` applied (a valid zip; the header as stored)."""
    with np.load(file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop("__header__").tobytes().decode())
    change(arrays, header)
    with open(file, "wb") as f:
        np.savez(f, __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "changed_length", "out_of_range_with_checksum"])
def test_corrupt_entry_is_rebuilt_never_used(reader, tmp_path, damage):
    d, cache = corpus(tmp_path), tmp_path / "cache"
    D.MiniMindOIndex(str(d), reader, cache=cache)
    for file in cache.glob("*.npz"):
        if damage == "truncated":
            data = file.read_bytes()
            file.write_bytes(data[: len(data) // 2])
        elif damage == "garbage":
            file.write_bytes(b"\x00" * 100)
        elif damage == "changed_length":  # a valid file whose lengths no longer match their checksum
            rewrite_entry(file, lambda a, h: a.__setitem__("length", a["length"] + 1))
            assert zipfile.is_zipfile(file)  # readable: only the checksum tells
        else:  # checksum recomputed, but a length above max_len: the family's check rejects it
            def change(a, h):
                a["length"] = a["length"] + reader.max_len
                h["sha1"] = IndexCache._digest(a)
            rewrite_entry(file, change)
    with pytest.warns(UserWarning, match="not usable"):
        index = D.MiniMindOIndex(str(d), reader, cache=cache)
    assert index.cache.rejected == 2 and index.cache.hits == 0
    assert state(index) == state(D.MiniMindOIndex(str(d), reader))
    again = D.MiniMindOIndex(str(d), reader, cache=cache)  # the rebuilt entries are good
    assert again.cache.hits == 2 and state(again) == state(index)


def test_duplicate_ids_across_shards_and_hash_collisions(reader, tmp_path, monkeypatch):
    d = tmp_path / "dup"
    d.mkdir()
    write(d / "a.parquet", [row(0), row(1)])
    write(d / "b.parquet", [row(2), row(3, rid="r0"), row(4, rid="r2")])  # r0 again (a.parquet row 0), r2 again
    cache = tmp_path / "cache"
    for _ in range(2):  # cold, then warm (the duplicates are found from the cached hashes too)
        index = D.MiniMindOIndex(str(d), reader, cache=cache)
        got = {(os.path.basename(s.file), s.row, s.id, s.column, s.reason, s.detail) for s in index.skipped}
        assert got == {("b.parquet", 1, "r0", "id", "duplicate_id", f"id 'r0' is already used by {d / 'a.parquet'} row 0"),
                       ("b.parquet", 2, "r2", "id", "duplicate_id", f"id 'r2' is already used by {d / 'b.parquet'} row 0")}
        assert len(index) == 3
    with pytest.raises(ValueError, match=r"b.parquet: row 1 \(id='r0'\), column 'id': id 'r0' is already used"):
        D.MiniMindOIndex(str(d), reader, strict=True)
    # every id hashing alike: the ids are compared, so only the real duplicates go (negative control: without the
    # comparison all but the first row would be dropped)
    monkeypatch.setattr(D, "id_digest", lambda name: 7)
    index = D.MiniMindOIndex(str(d), reader)
    assert len(index) == 3 and sorted(s.id for s in index.skipped) == ["r0", "r2"]


def test_row_getters_equal_to_pylist():
    rows = [dict(id="a", conversations="x", answer_audios=[[1, 2, 3], None, []], ref_audios=[4, 5], spk_emb=[0.5]),
            dict(id=None, conversations="y", answer_audios=None, ref_audios=None, spk_emb=None),
            dict(id="c", conversations="z", answer_audios=[], ref_audios=[], spk_emb=[]),
            dict(id="d", conversations="w", answer_audios=[[7] * 16, [9] * 8], ref_audios=[1], spk_emb=[1.0, 2.0])]
    schema = pa.schema([f for f in WRITE_SCHEMA if f.name in rows[0]])
    table = pa.Table.from_pylist(rows, schema=schema).slice(1)  # a sliced table: offsets must be respected
    table = pa.concat_tables([pa.Table.from_pylist(rows[:1], schema=schema), table])  # two chunks
    getters = D.row_getters(table)
    plain = lambda v: [plain(x) for x in v] if isinstance(v, (list, np.ndarray)) else v  # noqa: E731
    for r, want in enumerate(rows[:1] + rows[1:]):
        got = {k: plain(g(r)) for k, g in getters.items()}
        assert got == {k: (plain(v) if v is not None else None) for k, v in want.items()}, r
    assert isinstance(getters["ref_audios"](0), np.ndarray)
    assert getters["answer_audios"](0)[1] is None and getters["answer_audios"](1) is None
    with_null = pa.Table.from_pylist([dict(rows[0], ref_audios=[1, None])], schema=schema)
    assert D.row_getters(with_null) is None


def test_reader_encode_equals_tokenizer_encode(reader):
    fresh = D.RowReader(reader.tok, reader.tokenizer, reader.audio, reader.vision, reader.spk_dim, reader.max_len)
    texts = [m["content"] for r in pq.read_table(SAMPLE / "train").to_pylist()
             for m in json.loads(r["conversations"])] + list(D.RowReader.CONSTANT_TEXTS) + ["<|im_end|> a"]
    for t in texts + texts:  # twice: the constant texts' kept ids too
        assert fresh.encode(t) == list(reader.tokenizer.encode(t, add_special_tokens=False)), t


def test_hf_view_is_cached_by_its_datasets_fingerprint(tmp_path, monkeypatch):
    """`data.source=hf`: the view's entry is keyed by `datasets`' fingerprint of the loaded split; a rerun reads
    only the cache; changed data files (the control) are another fingerprint, so they are re-indexed."""
    import datasets.config
    import hydra

    import data.hf as H
    from tests.conftest import compose_cfg

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")  # datasets' prepared copy: here
    d, cache = corpus(tmp_path), tmp_path / "cache"

    def build():
        monkeypatch.setattr(H, "_TABLES", {})  # a new process: the view is opened again
        cfg = compose_cfg(["stage=sft_t2a", "data=hf_minimind", f"data.hf.path={d}", f"data.index_cache={cache}"],
                          tmp_path)
        dm = hydra.utils.instantiate(cfg.data)
        dm.setup("fit")
        return dm.indexes["train"]

    cold = build()
    assert (cold.cache.hits, cold.cache.misses) == (0, 1) and len(list(cache.glob("*.npz"))) == 1
    with monkeypatch.context() as m:
        m.setattr(D.MiniMindOIndex, "_scan", lambda *a: pytest.fail("a warm build read the view"))
        warm = build()
    assert (warm.cache.hits, warm.cache.misses, warm.cache.rejected) == (1, 0, 0)
    assert state(warm) == state(cold) and len(cold) == 5
    write(d / "b.parquet", [row(4, frames=2), row(5, "ok", frames=20)])  # row 5: 16 more frames
    changed = build()
    assert (changed.cache.hits, changed.cache.misses) == (0, 1)
    assert int(changed.lengths[-1].max()) == int(cold.lengths[-1].max()) + 16  # not the cached length
