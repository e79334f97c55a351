"""Mini-Omni layouts against hand-drawn tables (toy vocabulary so every id is readable).

Toy table: text_vocab=100 -> EOT 100, PAD_T 101, INPUT_T 102, ANSWER_T 103, ASR 104;
codebook 50 -> EOA 50, PAD_A 51, INPUT_A 52, ANSWER_A 53. Codes of layer i, frame t: 5 * i + t.
"""
import pytest
import torch

from omni.mini_omni.layout import (
    answer_grid, build_example, frames_to_snac, snac_to_frames, undelay,
)
from omni.mini_omni.tokens import MiniOmniTokens

TOK = MiniOmniTokens(text_vocab=100, text_specials=64, codebook_size=50, audio_specials=64)
X = -100  # IGNORE


def codes(n_frames: int) -> torch.Tensor:
    return torch.tensor([[5 * i + t for i in range(7)] for t in range(n_frames)])


def rows(layout, r):
    return layout.inputs[r].tolist(), layout.targets[r].tolist()


def test_token_table_released_values():
    tok = MiniOmniTokens()
    assert (tok.text_padded, tok.audio_padded, tok.total_vocab) == (152000, 4160, 181120)
    assert (tok.eot, tok.pad_t, tok.input_t, tok.answer_t, tok.asr) == (151936, 151937, 151938, 151939, 151940)
    assert (tok.eoa, tok.pad_a, tok.input_a, tok.answer_a, tok.split, tok.image, tok.end_image) == \
        (4096, 4097, 4098, 4099, 4100, 4101, 4102)
    assert tok.pad_a + tok.audio_offset(0) == 156097 and tok.pad_a + tok.audio_offset(6) == 181057
    assert tok.head_slice(7) == slice(0, 152000) and tok.head_slice(3) == slice(164480, 168640)


def test_a1a2_table():
    """Spec pin (2026-12): the released decoder feeds back what the model emits in layer i's fill steps (k <= i) and
    after its EOA, so those positions carry PAD_A (51) TARGETS; the text row after EOT (forced PAD_T) does not."""
    lay = build_example(TOK, "a1a2", answer_ids=[7, 8], n_audio_frames=2, answer_codes=codes(2))
    assert (lay.audio_start, lay.audio_len, lay.prompt_len) == (1, 2, 5)
    text_in, text_tg = rows(lay, 7)
    assert text_in == [102, 101, 101, 100, 103, 7, 8, 100, 101, 101, 101, 101, 101, 101]
    assert text_tg == [X, X, X, X, 7, 8, 100, X, X, X, X, X, X, X]
    a0_in, a0_tg = rows(lay, 0)
    assert a0_in == [52, 51, 51, 50, 53, 51, 0, 1, 50, 51, 51, 51, 51, 51]
    assert a0_tg == [X, X, X, X, 51, 0, 1, 50, 51, 51, 51, 51, 51, 51]
    a3_in, a3_tg = rows(lay, 3)
    assert a3_in == [52, 51, 51, 50, 53, 51, 51, 51, 51, 15, 16, 50, 51, 51]
    assert a3_tg == [X, X, X, X, 51, 51, 51, 51, 15, 16, 50, 51, 51, 51]
    a6_in, a6_tg = rows(lay, 6)
    assert a6_in == [52, 51, 51, 50, 53, 51, 51, 51, 51, 51, 51, 51, 30, 31]
    assert a6_tg == [X, X, X, X, 51, 51, 51, 51, 51, 51, 51, 30, 31, 50]


@pytest.mark.parametrize("task,text_task", [("asr", 104), ("a1t2", 103)])
def test_audio_in_text_out_tables(task, text_task):
    lay = build_example(TOK, task, answer_ids=[7, 8], n_audio_frames=2)
    assert rows(lay, 7) == ([102, 101, 101, 100, text_task, 7, 8], [X, X, X, X, 7, 8, 100])
    for r in range(7):
        assert rows(lay, r) == ([52, 51, 51, 50, 51, 51, 51], [X] * 7)


def test_t1t2_table():
    lay = build_example(TOK, "t1t2", question_ids=[3, 4, 5], answer_ids=[7])
    assert (lay.audio_len, lay.prompt_len) == (0, 6)
    assert rows(lay, 7) == ([102, 3, 4, 5, 100, 103, 7], [X, X, X, X, X, 7, 100])
    assert rows(lay, 2) == ([51] * 7, [X] * 7)


def test_t1a2_and_tts_tables():
    lay = build_example(TOK, "t1a2", question_ids=[3], answer_ids=[7], answer_codes=codes(1))
    assert rows(lay, 7) == ([102, 3, 100, 103, 7, 100, 101, 101, 101, 101, 101, 101],
                            [X, X, X, 7, 100, X, X, X, X, X, X, X])
    assert rows(lay, 0) == ([51, 51, 51, 53, 51, 0, 50, 51, 51, 51, 51, 51],
                            [X, X, X, 51, 0, 50, 51, 51, 51, 51, 51, 51])
    assert rows(lay, 6) == ([51, 51, 51, 53, 51, 51, 51, 51, 51, 51, 51, 30],
                            [X, X, X, 51, 51, 51, 51, 51, 51, 51, 30, 50])
    tts = build_example(TOK, "tts", question_ids=[7], answer_ids=[7], answer_codes=codes(1))
    assert tts.inputs[7].tolist() == [102, 7, 100, 103, 7, 100, 101, 101, 101, 101, 101, 101]
    assert tts.targets[7].tolist() == [X] * 12  # TTS: audio loss only
    assert torch.equal(tts.targets[:7], lay.targets[:7])


def test_answer_grid_delay_is_i_plus_one():
    grid, real = answer_grid(TOK, [9], codes(3))
    for i in range(7):
        assert grid[i, : i + 1].tolist() == [51] * (i + 1)
        assert grid[i, i + 1 : i + 4].tolist() == [5 * i, 5 * i + 1, 5 * i + 2]
        assert grid[i, i + 4] == 50 and grid[i, i + 5:].tolist() == [51] * (11 - i - 5)
        assert real[i].all()  # fill, frames, EOA and the padding after it are all targets (K = 3 + 7 + 1 = 11)
    assert real[7].tolist() == [True, True] + [False] * 9  # text: token, EOT; PAD_T after it is no target
    _, text_only = answer_grid(TOK, [9], None)
    assert text_only[:7].sum() == 0  # text-only answers: audio rows carry no target


def test_bad_requests_fail_clearly():
    with pytest.raises(ValueError, match="valid tasks"):
        build_example(TOK, "a2a", answer_ids=[1], n_audio_frames=1)
    with pytest.raises(ValueError, match="needs answer codes"):
        build_example(TOK, "a1a2", answer_ids=[1], n_audio_frames=1)
    with pytest.raises(ValueError, match="needs audio frames"):
        build_example(TOK, "asr", answer_ids=[1])


def test_snac_stream_order_matches_spec_table():
    l0 = torch.tensor([100, 200])
    l1 = torch.tensor([10, 11, 20, 21])
    l2 = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    frames = snac_to_frames(l0, l1, l2)
    # spec: [L0[t], L1[2t], L2[4t], L2[4t+1], L1[2t+1], L2[4t+2], L2[4t+3]]
    assert frames.tolist() == [[100, 10, 1, 2, 11, 3, 4], [200, 20, 5, 6, 21, 7, 8]]
    back = frames_to_snac(frames)
    assert [b.tolist() for b in back] == [l0.tolist(), l1.tolist(), l2.tolist()]


def test_undelay_inverts_answer_grid():
    grid, _ = answer_grid(TOK, [9], codes(3))
    frames = undelay([grid[i].tolist() for i in range(7)])
    assert frames[:3].tolist() == codes(3).tolist()
    assert frames[3].tolist() == [50] * 7  # EOA column
