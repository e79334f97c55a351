"""Mini-Omni3 token table and layouts against hand-drawn tables (spec: ../shared/spec/mini_omni3.md).

Toy table (`after_vocab(100)`): USER 100, ASSISTANT 101, KEEP_SILENCE 102, PAD 103, ONLINE 104, OFFLINE 105,
ENGLISH 106, HAPPY..URGENT 107..112 (NORMAL 111, URGENT 112), TEXT_END 113, TEXT_BEGIN (= SYSTEM) 114,
AUDIO_PAD 115, AUDIO_BEGIN 116, AUDIO_END 117; table 128 rows.
"""
import pytest

from omni.mini_omni3.layout import (
    Reply, chunk_block, next_token_targets, offline_sequence, online_prefix, online_sequence, reply_chunk_for,
)
from omni.mini_omni3.tokens import MiniOmni3Tokens

X = -100
TOY = MiniOmni3Tokens.after_vocab(100)
US, AS, KS, P, ON, OFF, EN = 100, 101, 102, 103, 104, 105, 106
NORMAL, URGENT, TE, TB, APAD, AB, AE = 111, 112, 113, 114, 115, 116, 117
HEAD = [AB] + [P] * 10 + [AS]


def test_released_ids():
    t = MiniOmni3Tokens()
    assert (t.user, t.assistant, t.keep_silence, t.pad, t.online, t.offline, t.english) == \
        (151601, 151602, 151605, 151608, 151609, 151610, 151611)
    assert (t.happy, t.sad, t.angry, t.surprise, t.normal, t.urgent) == tuple(range(151614, 151620))
    assert (t.text_end, t.text_begin, t.system, t.audio_pad, t.audio_begin, t.audio_end) == \
        (151643, 151644, 151644, 151646, 151647, 151648)
    assert t.vocab_size == 151936 and t.frames_per_chunk == 10
    assert t.emotion(None) == t.normal == 151618 and t.emotion("URGENT") == 151619


def test_configurable_ids():
    assert TOY.controls["pad"] == P and TOY.vocab_size == 128 and TOY.first_control == 100
    assert MiniOmni3Tokens.from_config({"after_vocab": 512}).vocab_size == 576
    assert MiniOmni3Tokens.from_config({"pad": 7, "vocab_size": 151936}).pad == 7
    with pytest.raises(ValueError, match="valid"):
        MiniOmni3Tokens.from_config({"padd": 7})
    with pytest.raises(ValueError, match="distinct"):
        MiniOmni3Tokens(pad=151601)
    with pytest.raises(ValueError, match="outside"):
        MiniOmni3Tokens(vocab_size=1000)
    with pytest.raises(ValueError, match="valid"):
        TOY.emotion("bored")


def test_released_chunk_blocks():
    t = MiniOmni3Tokens()
    head = [151647] + [151608] * 10 + [151602]
    assert chunk_block(t) == (head + [151605], [X] * 12 + [151605])
    ids, labels = chunk_block(t, Reply((7, 8), "happy"))
    assert ids == head + [151644, 151614, 7, 8, 151643]
    assert labels == [X] * 12 + [151644, 151614, 7, 8, 151643]


def test_online_session_table():
    seq = online_sequence(TOY, [5, 6], n_chunks=3, replies={1: Reply((7, 8))})
    prefix = [ON, EN, TB, TB, 5, 6, TE]
    assert online_prefix(TOY, [5, 6]) == prefix
    assert seq.ids == prefix + HEAD + [KS] + HEAD + [TB, NORMAL, 7, 8, TE] + HEAD + [KS]
    assert seq.labels == [X] * 7 + [X] * 12 + [KS] + [X] * 12 + [TB, NORMAL, 7, 8, TE] + [X] * 12 + [KS]
    # PADs of chunk 0 at 8..17, chunk 1 at 21..30, chunk 2 at 38..47; decisions at each ASSISTANT
    assert seq.audio_positions == list(range(8, 18)) + list(range(21, 31)) + list(range(38, 48))
    assert seq.decision_positions == [18, 31, 48]
    assert [seq.ids[p] for p in seq.decision_positions] == [AS] * 3
    assert seq.reply_chunks == [1] and seq.n_chunks == 3


def test_next_token_targets_put_the_decision_at_assistant():
    seq = online_sequence(TOY, [5], n_chunks=2, replies={1: Reply((9,), "urgent")})
    tg = next_token_targets(seq.labels)
    assert len(tg) == len(seq.ids)
    assert [tg[p] for p in seq.decision_positions] == [KS, TB]
    reply_at = seq.decision_positions[1]
    assert tg[reply_at: reply_at + 5] == [TB, URGENT, 9, TE, X]
    assert [i for i, t in enumerate(tg) if t != X] == [seq.decision_positions[0], *range(reply_at, reply_at + 4)]


def test_offline_table():
    seq = offline_sequence(TOY, [5], answer_ids=[7, 8], n_frames=10, user_ids=[9])
    audio = [AB] + [APAD] * 10 + [AE]
    assert seq.ids == [OFF, EN, TB, TB, 5, TE] + audio + [US, TB, 9, TE] + [AS, TB, 7, 8, TE]
    assert seq.labels == [X] * 6 + [X] * 12 + [X] * 4 + [AS, TB, 7, 8, TE]
    assert seq.audio_positions == list(range(7, 17)) and seq.decision_positions == []
    text_only = offline_sequence(TOY, [5], answer_ids=[7], user_ids=[9])
    assert text_only.ids == [OFF, EN, TB, TB, 5, TE, US, TB, 9, TE, AS, TB, 7, TE]
    with pytest.raises(ValueError, match="20 s"):
        offline_sequence(TOY, [5], answer_ids=[7], n_frames=501)
    with pytest.raises(ValueError, match="audio or user text"):
        offline_sequence(TOY, [5], answer_ids=[7])


def test_reply_text_must_not_hold_controls():
    with pytest.raises(ValueError, match="reply tokenizes to control ids"):
        chunk_block(TOY, Reply((7, KS)))
    with pytest.raises(ValueError, match="outside"):
        online_sequence(TOY, [5], n_chunks=2, replies={2: Reply((7,))})


# Released placement (spec, pinned facts): F = whole 40 ms frames (640 samples) up to the end of the speech,
# reply on chunk F // 10. Hand-drawn: (end sample, F, chunk).
REPLY_TABLE = [
    (0, 0, 0),
    (5760, 9, 0),      # 0.36 s: 9 whole frames -> chunk 0
    (5920, 9, 0),      # 0.37 s: 9.25 frames -> 9 -> chunk 0 (the old ">= 0.04 s after" rule said 1)
    (6399, 9, 0),      # one sample short of 10 frames
    (6400, 10, 1),     # 0.4 s: the speech fills chunk 0, the reply is on chunk 1
    (16000, 25, 2),    # 1.0 s
    (18560, 29, 2),    # 1.16 s
    (18720, 29, 2),    # 1.17 s: 29.25 frames (the old rule said 3)
    (19200, 30, 3),    # 1.2 s
]


@pytest.mark.parametrize("end,frames,chunk", REPLY_TABLE)
def test_reply_chunk_is_floor_of_whole_frames_over_10(end, frames, chunk):
    assert end // 640 == frames  # the table's own arithmetic
    assert reply_chunk_for(end) == chunk
