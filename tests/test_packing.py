"""Sequence packing (data.packing=true): bin packing and masks by hand, the sampler's packed batches, and per family
the loss of packed rows equal to the same rows padded (fp32, 1e-5), with a negative control: the same packed rows
without the block-diagonal mask (one causal segment per sequence) give a different loss."""
import numpy as np
import pytest
import torch

from data.packing import PackPlan, ffd_bins, pack_batch
from omni.packing import attention_inputs, block_causal_mask

torch.set_num_threads(1)


# -- by hand -----------------------------------------------------------------------------------------------------
def test_ffd_bins_by_hand():
    # lengths [5, 3, 4, 2, 6], capacity 8. Decreasing: 6 (item 4) -> bin 0 (room 2); 5 (item 0) -> bin 1 (room 3);
    # 4 (item 2) -> bin 2 (room 4); 3 (item 1) -> bin 1 (room 0); 2 (item 3) -> bin 0 (room 0)
    bins = ffd_bins(np.array([5, 3, 4, 2, 6]), 8)
    assert [b.tolist() for b in bins] == [[4, 3], [0, 1], [2]]
    assert [b.tolist() for b in ffd_bins(np.array([9, 1]), 8)] == [[0], [1]]  # over capacity: a bin of its own


def test_next_fit_segments_positions_and_mask_by_hand():
    plan = PackPlan.next_fit([6, 2, 5, 3, 4], 8)  # seq 0: 6 + 2; seq 1: 5 + 3; seq 2: 4
    assert plan.seq.tolist() == [0, 0, 1, 1, 2] and plan.offset.tolist() == [0, 6, 0, 5, 0]
    assert (plan.n_seqs, plan.seq_len) == (3, 8)
    plan = PackPlan.next_fit([2, 3, 6], 6)  # seq 0: items 0 + 1 (5 positions, 1 padding); seq 1: item 2
    seg, pos = plan.segments()
    assert seg.tolist() == [[1, 1, 2, 2, 2, 0], [3] * 6]
    assert pos.tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]]
    expected = torch.tensor([  # rows: query, columns: key; 1 = may attend
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding sees only padding (no empty row: SDPA would give NaN)
    ], dtype=torch.bool)
    assert torch.equal(block_causal_mask(seg)[0, 0], expected)
    grid = plan.grid(torch.tensor([[7, 8, -1, -1, -1, -1], [4, 5, 6, -1, -1, -1], [1, 2, 3, 4, 5, 6]]), -9)
    assert grid.tolist() == [[7, 8, 4, 5, 6, -9], [1, 2, 3, 4, 5, 6]]
    # flat b * 6 + p of the padded grid: (item 0, p 1), (item 1, p 2), (item 2, p 0) -> seq * 6 + offset + p
    assert plan.flat_positions(torch.tensor([1, 6 + 2, 12]), 6).tolist() == [1, 4, 6]

def test_sampler_packs_bins_within_the_budget():
    from data.sampler import TokenBudgetBatchSampler

    class Index:
        task_order = ("t",)
        task_mask = np.ones(40, dtype=np.uint8)
        group_id = np.repeat(np.arange(4), 10)
        lengths = np.random.default_rng(0).integers(5, 60, size=(40, 1))

    s = TokenBudgetBatchSampler(Index(), {"t": 1.0}, max_tokens=128, window_rows=40, pack_len=64, mix="all",
                                shuffle=False, fixed_length=False, drop_uneven=False)
    batches = list(s)
    rows = sorted(r for b in batches for r, _ in b)
    assert rows == list(range(40))  # every row once
    for b in batches:  # next-fit over the batch's items in order re-creates <= 2 bins of <= 64 positions
        plan = PackPlan.next_fit([int(Index.lengths[r, 0]) for r, _ in b], 64)
        assert plan.n_seqs <= 2 and plan.seq_len <= 64
    padded = sum(len(b) * max(int(Index.lengths[r, 0]) for r, _ in b) for b in batches)
    packed = sum(PackPlan.next_fit([int(Index.lengths[r, 0]) for r, _ in b], 64).n_seqs * 64 for b in batches)
    assert packed <= 128 * len(batches)
    assert int(Index.lengths.sum()) / packed > 0.8  # fill of the packed sequences (padded bucketing: see report)
    del padded


# -- per family: packed loss == padded loss; no block mask -> different ----------------------------------------
def _no_block_mask(batch):
    """The negative control: the same packed grids and positions, but one causal segment per whole sequence."""
    return {**batch, "segment_ids": torch.ones_like(batch["segment_ids"])}


def _check_family(model, padded, packer, capacity, keys=("loss", "loss_text", "loss_audio")):
    packed = pack_batch(padded, packer, capacity)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # rows really share sequences
    with torch.no_grad():
        ref, out, wrong = model(padded), model(packed), model(_no_block_mask(packed))
    for key in keys:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
    assert abs(float(wrong["loss"]) - float(ref["loss"])) > 1e-4  # 10x the equality tolerance
    return packed, ref, out


def test_mini_omni_packed_loss_equals_padded(tiny_model):
    from data.mini_omni.collate import pack
    from tests.test_model import batch_of

    tiny_model.eval()
    tasks = ["a1a2", "t1t2", "asr", "t1a2", "a1t2", "t1t2"]
    padded = batch_of(tiny_model, tasks)
    lengths = padded["attention_mask"].sum(1)
    capacity = int(lengths.max()) * 2
    packed, ref, out = _check_family(tiny_model, padded, pack, capacity)
    assert packed["audio_index"].tolist() == packed["item_seq"][padded["audio_index"]].tolist()
    assert int(out["n_text_targets"]) == int(ref["n_text_targets"])


def test_minimind_o_packed_loss_equals_padded():
    """Thinker and Talker both masked; two T2A rows with different speakers in one sequence (each position takes
    its own row's speaker embedding), an A2A row (audio features in reading order) and an I2T row (image)."""
    from data.minimind_o.collate import MiniMindOCollator, pack
    from omni.minimind_o.layout import build_layout
    from omni.minimind_o.model import MiniMindO, MiniMindOConfig
    from tests.test_minimind_model import model_raw, png_bytes, wav_bytes

    cfg = MiniMindOConfig(**model_raw("minimind_o_tiny"))
    torch.manual_seed(0)
    model = MiniMindO(cfg).eval()
    g = torch.Generator().manual_seed(1)
    tok, spec = cfg.tokens, cfg.audio_encoder
    codes = lambda n: torch.randint(0, tok.codebook_size, (n, tok.n_codebooks), generator=g)  # noqa: E731
    text = lambda n: torch.randint(40, tok.text_vocab, (n,), generator=g).tolist()  # noqa: E731
    frames = spec.frames(16000)
    t2a = lambda: build_layout(tok, [1] + text(5), text(4) + [2], codes(6), ref_codes=codes(3),  # noqa: E731
                               speaker=True)
    examples = [
        {"id": "t1", "task": "t2a", "layout": t2a(), "speaker_emb": torch.randn(cfg.spk_dim, generator=g)},
        {"id": "a", "task": "a2a", "layout": build_layout(tok, [1] + [tok.audio_pad] * frames + [2, 1] + text(2),
                                                          text(3) + [2], codes(4)),
         "audio_mels": [spec.features(wav_bytes(1.0))], "audio_frames": [frames]},
        {"id": "t2", "task": "t2a", "layout": t2a(), "speaker_emb": torch.randn(cfg.spk_dim, generator=g)},
        {"id": "i", "task": "i2t", "layout": build_layout(tok, [1] + [tok.image_pad] * cfg.vision_encoder.n_tokens
                                                          + text(3), text(6) + [2]),
         "pixel_values": [cfg.vision_encoder.pixels(png_bytes())]},
        {"id": "t3", "task": "t2a", "layout": t2a(), "speaker_emb": torch.randn(cfg.spk_dim, generator=g)},
    ]
    padded = MiniMindOCollator(tok, cfg.spk_dim)(examples)
    lengths = padded["attention_mask"].sum(1)
    packed, _, _ = _check_family(model, padded, pack, int(lengths.max()) + int(lengths.min()) * 2)
    assert packed["input_ids"].shape[0] <= 3
    # negative control for the speaker: every position taking row 0's speaker changes the loss
    one_speaker = {**packed, "speaker_emb": packed["speaker_emb"][:1].expand_as(packed["speaker_emb"])}
    with torch.no_grad():
        assert abs(float(model(one_speaker)["loss_audio"]) - float(model(packed)["loss_audio"])) > 1e-4


def test_mini_omni3_packed_loss_equals_padded():
    """Online rows (per-chunk frames at flat positions) and an offline row (whole-clip frames) share sequences; the
    decision metrics count each session (row) on its own."""
    from data.mini_omni3.collate import StreamingCollator, pack
    from omni.mini_omni3.layout import Reply, offline_sequence, online_sequence
    from omni.mini_omni3.model import MiniOmni3
    from tests.test_mini_omni3_model import model_cfg

    torch.manual_seed(0)
    model = MiniOmni3(model_cfg("mini_omni3_tiny.yaml")).eval()
    tok = model.tokens
    g = torch.Generator().manual_seed(0)
    examples = []
    for k in range(3):
        online = online_sequence(tok, [5, 6, 7], 3, {k % 3: Reply((40 + k, 41, 42), "happy")})
        examples.append({"id": f"on{k}", "task": "online", "sequence": online,
                         "mels": torch.randn(3, 128, 40, generator=g), "features": None, "reply_text": ["x"]})
    offline = offline_sequence(tok, [5, 6, 7], [50, 51], n_frames=7, user_ids=[9])
    examples.insert(1, {"id": "off", "task": "offline", "sequence": offline,
                        "mels": torch.randn(128, 30, generator=g), "features": None, "reply_text": ["y"]})
    padded = StreamingCollator(tok)(examples)
    lengths = padded["attention_mask"].sum(1)
    _, ref, out = _check_family(model, padded, pack, int(lengths.max()) * 2, keys=("loss",))
    assert out["decision_counts"] == ref["decision_counts"]
