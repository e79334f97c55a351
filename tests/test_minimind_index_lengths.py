"""MiniMind-O index: the fast length path (light records, batched tokenisation, no tensors) gives each row the exact
length of its laid-out example (build_layout's grid), and the same skip records, on the bundled sample at several
max_len values (no cut, exchanges dropped, rows cut at max_len, too_long); bad codes / speaker rows still take the
exact path and are reported as before."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import data.minimind_o.dataset as D
from data.minimind_o.schema import WRITE_SCHEMA
from tests.test_minimind_data import SAMPLE, datamodule, model_cfg  # noqa: F401  (fixture)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def reader(model_cfg):  # noqa: F811
    dm = datamodule(model_cfg, val=None)
    dm.setup("fit")
    return dm.indexes["train"].reader


def with_max_len(reader, max_len):
    return D.RowReader(reader.tok, reader.tokenizer, reader.audio, reader.vision, reader.spk_dim, max_len)


def tensor_length(reader, rec):
    """The length of the row's laid-out example, built as tensors (the dataset's path), or the RowError reason."""
    try:
        plan = reader.plan(rec, D.header_samples, None, None)
        D.check_target(plan)
        lay = reader.layout(plan)
    except D.RowError as err:
        return err.reason
    assert isinstance(lay, D.Layout)
    return int(lay.inputs.shape[1])


@pytest.mark.parametrize("max_len", [512, 64, 40])
@pytest.mark.parametrize("split", ["train", "val"])
def test_fast_lengths_equal_layout_lengths(reader, split, max_len, monkeypatch):
    r = with_max_len(reader, max_len)
    built = []
    real_build = D.build_layout
    monkeypatch.setattr(D, "build_layout", lambda *a, **k: built.append(1) or real_build(*a, **k))
    index = D.MiniMindOIndex(str(SAMPLE / split), r)
    assert not built  # every sample row took the light path (no tensors built)
    monkeypatch.setattr(D, "build_layout", real_build)
    table = pq.read_table(index.files[0])
    recs = table.to_pylist()
    want = [tensor_length(r, rec) for rec in recs]
    kept = {int(row): int(index.lengths[i].max()) for i, row in enumerate(index.row_in_file)}
    skipped = {s.row: s.reason for s in index.skipped}
    assert len(kept) + len(skipped) == len(recs)
    for row, expected in enumerate(want):
        assert (kept[row] if row in kept else skipped[row]) == expected, (split, max_len, row)
    if max_len == 64 and split == "train":  # the cases are exercised: some rows cut / dropped, some too long
        assert "too_long" in skipped.values() and any(v == 64 for v in kept.values())


def test_bad_rows_take_the_exact_path(reader, tmp_path):
    """A code outside [0, 2048), a code in a trailing partial frame (dropped, so not an error: exact path agrees),
    and a speaker embedding of the wrong width: same records as the exact path; good rows beside them unchanged."""
    conv = json.dumps([{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}])
    good = dict(id="good", conversations=conv, answer_audios=[[1] * 24], ref_audios=None, spk_emb=None,
                question_audios=None, image_bytes=None)
    rows = [good, {**good, "id": "bad_code", "answer_audios": [[1] * 23 + [5000]]},
            {**good, "id": "partial", "answer_audios": [[1] * 24 + [9999]]},
            {**good, "id": "bad_spk", "spk_emb": [0.0] * (reader.spk_dim + 1)},
            {**good, "id": "nan_spk", "spk_emb": [float("nan")] * reader.spk_dim},
            {**good, "id": "short", "answer_audios": [[1] * 7]}]
    path = tmp_path / "bad.parquet"
    pq.write_table(__import__("pyarrow").Table.from_pylist(rows, schema=WRITE_SCHEMA), path)
    index = D.MiniMindOIndex(str(path), reader)
    reasons = {s.id: s.reason for s in index.skipped}
    assert reasons == {"bad_code": "bad_codes", "bad_spk": "bad_speaker", "nan_spk": "bad_speaker"}
    # 'short' (< 1 frame) trains its text only; 'partial' drops its trailing partial frame: 3 frames like 'good'
    recs = pq.read_table(path).to_pylist()
    lengths = {recs[int(r)]["id"]: int(index.lengths[i].max()) for i, r in enumerate(index.row_in_file)}
    assert lengths == {k: tensor_length(reader, rec) for k, rec in ((r["id"], r) for r in recs) if k in lengths}
    assert lengths["partial"] == lengths["good"] and lengths["short"] < lengths["good"]
    assert set(lengths) == {"good", "partial", "short"}


def test_light_records_flag_only_bad_rows(reader):
    """Negative control for the column-wise checks: flipping one code out of range flags exactly that row."""
    table = pq.read_table(SAMPLE / "train")
    recs, exact = D.light_records(table, reader)
    assert not exact.any() and all(r is not None for r in recs)
    rows = table.to_pylist()
    rows[5]["answer_audios"][0][3] = reader.tok.codebook_size
    bad = __import__("pyarrow").Table.from_pylist(rows, schema=table.schema)
    _, exact = D.light_records(bad, reader)
    assert np.flatnonzero(exact).tolist() == [5]
