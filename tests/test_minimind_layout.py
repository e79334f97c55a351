"""MiniMind-O token table and layouts against hand-drawn tables (toy sizes so every id is readable).

Toy table: text specials as released (pad 0, im_start 1, im_end 2, image_pad 12, audio_pad 16, think 25/26);
codebook 20 -> PAD 21, STOP 22, SPEAKER 23; K = 3 codebooks. Answer code of codebook l, frame k: 5 * l + k;
reference code of codebook l, frame j: 5 * l + 3 + j.
"""
import numpy as np
import pytest
import torch

from omni.minimind_o.layout import (
    Augment, add_system_prompt, augment_waveform, build_layout, frames_from_flat, frames_to_flat, pick_turn,
    render_chat, scheduled_sampling, spec_augment, undelay,
)
from omni.minimind_o.tokens import MiniMindOTokens

TOK = MiniMindOTokens(text_vocab=100, codebook_size=20, audio_specials=4, n_codebooks=3)
X = -100  # IGNORE
P_, S_, SPK = 21, 22, 23  # audio PAD, STOP, SPEAKER
WORDS = {"\n": 3, "user\n": 4, "assistant\n": 5, "system\n": 6, "\n\n": 7, "hi": 40, "hello": 41,
         "what is this": 42, "be brief": 43, "\nwhat is this": 44}


def encode(text: str) -> list[int]:
    return [WORDS[text]]


def answer_codes(n: int, k: int = 3) -> torch.Tensor:
    return torch.tensor([[5 * lvl + f for lvl in range(k)] for f in range(n)])


def ref_codes(n: int, k: int = 3) -> torch.Tensor:
    return torch.tensor([[5 * lvl + 3 + j for lvl in range(k)] for j in range(n)])


def grid(lay, row):
    return lay.inputs[row].tolist(), lay.targets[row].tolist()


def test_token_table_released_values():
    tok = MiniMindOTokens()
    assert (tok.text_vocab, tok.pad, tok.im_start, tok.im_end, tok.image_pad, tok.audio_pad) == (6400, 0, 1, 2, 12, 16)
    assert (tok.think_start, tok.think_end) == (25, 26)
    assert (tok.audio_vocab, tok.a_pad, tok.a_stop, tok.speaker, tok.n_codebooks) == (2112, 2049, 2050, 2051, 8)
    assert (tok.n_rows, tok.text_row, tok.stop_weight) == (9, 8, 10.0)
    assert tok.is_stop(2048) and tok.is_stop(2050) and not tok.is_stop(2047)
    with pytest.raises(ValueError, match="distinct"):
        MiniMindOTokens(audio_pad=12)
    with pytest.raises(ValueError, match="outside the text vocabulary"):
        MiniMindOTokens(text_vocab=20)


# prompt P = 3 (s = 3), answer m = 4 ([60, 61, <|im_end|>, "\n"]), N = 2 frames -> L = max(6, 3 + 2 + 3) = 8
PROMPT, ANSWER = [1, 50, 51], [60, 61, 2, 3]
TEXT_IN = [1, 50, 51, 60, 61, 2, 3, 0]
TEXT_TG = [X, X, 60, 61, 2, 3, X, X]
AUDIO_TG = {0: [X, X, X, 0, 1, S_, X, X], 1: [X, X, X, X, 5, 6, S_, X], 2: [X, X, X, X, X, 10, 11, S_]}


def test_t2a_table_without_reference_or_speaker():
    lay = build_layout(TOK, PROMPT, ANSWER, answer_codes(2))
    assert lay.start == 3 and lay.length == 8
    assert grid(lay, 3) == (TEXT_IN, TEXT_TG)
    assert grid(lay, 0) == ([P_, P_, P_, P_, 0, 1, S_, P_], AUDIO_TG[0])
    assert grid(lay, 1) == ([P_, P_, P_, P_, P_, 5, 6, S_], AUDIO_TG[1])
    assert grid(lay, 2) == ([P_, P_, P_, P_, P_, P_, 10, 11], AUDIO_TG[2])
    assert lay.weights.tolist() == [[0, 0, 0, 1, 1, 10, 0, 0], [0, 0, 0, 0, 1, 1, 10, 0], [0, 0, 0, 0, 0, 1, 1, 10]]
    assert torch.equal(undelay(lay.inputs[:3], lay.start), answer_codes(2))  # un-delaying recovers the frames


def test_t2a_table_with_speaker_only():
    lay = build_layout(TOK, PROMPT, ANSWER, answer_codes(2), speaker=True)
    assert grid(lay, 0) == ([P_, P_, SPK, P_, 0, 1, S_, P_], AUDIO_TG[0])  # SPEAKER at s - 1
    assert grid(lay, 2) == ([P_, P_, SPK, P_, P_, P_, 10, 11], AUDIO_TG[2])
    assert grid(lay, 3) == (TEXT_IN, TEXT_TG)


def test_t2a_table_with_reference_and_speaker():
    lay = build_layout(TOK, PROMPT, ANSWER, answer_codes(2), ref_codes=ref_codes(2), speaker=True)
    # reference (no delay) right-aligned to end at s - 1, SPEAKER one position before it
    assert grid(lay, 0) == ([SPK, 3, 4, P_, 0, 1, S_, P_], AUDIO_TG[0])
    assert grid(lay, 1) == ([SPK, 8, 9, P_, P_, 5, 6, S_], AUDIO_TG[1])
    assert grid(lay, 2) == ([SPK, 13, 14, P_, P_, P_, 10, 11], AUDIO_TG[2])
    assert grid(lay, 3) == (TEXT_IN, TEXT_TG)


def test_reference_truncated_from_the_left():
    with_spk = build_layout(TOK, PROMPT, ANSWER, answer_codes(2), ref_codes=ref_codes(4), speaker=True)
    assert with_spk.inputs[0, :3].tolist() == [SPK, 5, 6]  # frames 2, 3 kept
    no_spk = build_layout(TOK, PROMPT, ANSWER, answer_codes(2), ref_codes=ref_codes(4))
    assert no_spk.inputs[0, :3].tolist() == [4, 5, 6]  # frames 1..3, no speaker


def test_text_longer_than_audio_pads_audio_rows():
    lay = build_layout(TOK, PROMPT, [60, 61, 62, 63, 64, 65, 66, 2, 3], answer_codes(1))
    assert lay.length == 11  # P + m - 1
    assert grid(lay, 0) == ([P_, P_, P_, P_, 0, S_, P_, P_, P_, P_, P_], [X, X, X, 0, S_, X, X, X, X, X, X])


def test_i2t_has_no_audio_targets():
    lay = build_layout(TOK, PROMPT, ANSWER)
    assert lay.length == 6 and (lay.targets[:3] == X).all() and (lay.weights == 0).all()
    assert (lay.inputs[:3] == P_).all()


def test_a2a_placeholders_one_audio_pad_per_encoder_frame():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    chat = render_chat(TOK, encode, msgs, audio_frames=[3])
    assert chat.prompt == [1, 4, 16, 16, 16, 2, 3, 1, 5]
    assert chat.answer == [41, 2, 3]
    two = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}, *msgs]
    # released: only the LAST user turn is spoken, the earlier one stays text ("hi" = 40)
    assert render_chat(TOK, encode, two, audio_frames=[2]).prompt == \
        [1, 4, 40, 2, 3, 1, 5, 40, 2, 3, 1, 4, 16, 16, 2, 3, 1, 5]
    with pytest.raises(ValueError, match="only the last user turn is spoken"):
        render_chat(TOK, encode, two, audio_frames=[1, 2])


def test_i2t_placeholders_image_pads_and_think_block():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "<image>what is this"},
            {"role": "assistant", "content": "hello"}]
    chat = render_chat(TOK, encode, msgs, n_image_tokens=4)
    # `<image>` at the front joined by "\n" (the deterministic choice): pads, then "\nwhat is this" (44)
    assert chat.prompt == [1, 6, 43, 2, 3, 1, 4, 12, 12, 12, 12, 44, 2, 3, 1, 5]
    think = render_chat(TOK, encode, msgs, n_image_tokens=4, keep_think=True)
    # released: the empty think block is part of the answer (text targets), not the prompt
    assert think.prompt == chat.prompt and think.think == [25, 7, 26, 7] and think.answer == [41, 2, 3]
    with pytest.raises(ValueError, match="end with an assistant turn"):
        render_chat(TOK, encode, msgs[:2])


def test_released_value_layout_k8():
    tok = MiniMindOTokens()
    codes = torch.randint(0, 2048, (5, 8))
    lay = build_layout(tok, [1, 2, 3], [7, 2, 9], codes, speaker=True)
    assert lay.inputs.shape == (9, 3 + 5 + 8) and lay.inputs[:8, 2].eq(2051).all()
    for lvl in range(8):  # frame k of codebook l is the target at s + l + k, its STOP right after, weight 10
        assert lay.targets[lvl, 3 + lvl : 3 + lvl + 5].tolist() == codes[:, lvl].tolist()
        assert lay.targets[lvl, 3 + lvl + 5] == 2050 and lay.weights[lvl, 3 + lvl + 5] == 10.0
    assert (lay.weights > 0).sum() == 8 * 6 and ((lay.targets[:8] != -100) == (lay.weights > 0)).all()


def test_flat_codes_round_trip_and_partial_frame_dropped():
    flat = list(range(8 * 3)) + [1, 2, 3]
    frames = frames_from_flat(flat)
    assert frames.shape == (3, 8) and frames[1].tolist() == list(range(8, 16))
    assert frames_to_flat(frames) == list(range(24))
    assert frames_from_flat(list(range(32)), stored_codebooks=16).tolist() == [list(range(8)), list(range(16, 24))]


def test_augmentations_take_an_explicit_generator():
    lay = build_layout(TOK, PROMPT, ANSWER, answer_codes(2), ref_codes=ref_codes(2), speaker=True)
    same = scheduled_sampling(TOK, lay.inputs, lay.start, 0.0, np.random.default_rng(0))
    assert torch.equal(same, lay.inputs)
    hit = scheduled_sampling(TOK, lay.inputs, lay.start, 1.0, np.random.default_rng(0))
    assert torch.equal(hit[:, :3], lay.inputs[:, :3])  # prompt, reference and speaker untouched
    assert (hit[3, 3:5] >= 27).all() and hit[3, 5:].tolist() == [2, 3, 0]  # ordinary ids; specials, pad kept
    assert ((hit[:3, 3:] >= 0) & (hit[:3, 3:] < 24)).all()  # audio: any of the 24 audio ids (whole frames)
    again = scheduled_sampling(TOK, lay.inputs, lay.start, 0.5, np.random.default_rng(7))
    assert torch.equal(again, scheduled_sampling(TOK, lay.inputs, lay.start, 0.5, np.random.default_rng(7)))

    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    assert pick_turn(conv, None) == conv
    ends = {len(pick_turn(conv, np.random.default_rng(i))) for i in range(20)}
    assert ends == {2, 4}
    sys = add_system_prompt(conv, ("x",), np.random.default_rng(0))
    assert sys[0] == {"role": "system", "content": "x"} and sys[1:] == conv
    with pytest.raises(ValueError, match="probability"):
        Augment(keep_ref=1.5)


def test_audio_augmentations_are_seeded_and_bounded():
    wav = (0.3 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
    a, b = augment_waveform(wav, np.random.default_rng(3)), augment_waveform(wav, np.random.default_rng(3))
    assert np.array_equal(a, b) and not np.array_equal(a, wav) and a.dtype == np.float32
    ratio = np.sqrt(np.mean(a ** 2) / np.mean(wav ** 2))
    assert 10 ** (-6.5 / 20) < ratio < 10 ** (6.5 / 20)  # gain within +-6 dB (noise is >= 15 dB below)
    feats = torch.arange(80 * 300, dtype=torch.float32).view(80, 300)
    masked = spec_augment(feats, 100, np.random.default_rng(1), n_freq=0, max_time=0.1)
    changed = (masked != feats).any(0)
    assert changed[:100].sum() <= 20 and not changed[100:].any()  # time masks only inside the valid frames
    freq = spec_augment(feats, 100, np.random.default_rng(1), n_time=0, max_freq=8)
    assert ((freq != feats).any(1)).sum() <= 16
