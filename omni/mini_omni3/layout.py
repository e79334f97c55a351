"""Mini-Omni3 sequence layouts: pure functions from token lists to one flat id sequence and its labels.

Online (streaming) session, spec "Streaming session" / "Training data":

    ONLINE ENGLISH SYSTEM TEXT_BEGIN system... TEXT_END                       prefix, no loss
    AUDIO_BEGIN PAD*10 ASSISTANT KEEP_SILENCE                                 a silent chunk
    AUDIO_BEGIN PAD*10 ASSISTANT TEXT_BEGIN EMOTION reply... TEXT_END         the chunk that answers

Labels are in the spec's form, aligned with the ids: label[p] == ids[p] where position p is supervised, IGNORE
elsewhere (chunk block: ignore x 12, then the decision and the reply). `next_token_targets` shifts them into the
next-token targets the model scores (target[p] = label[p + 1]), so the decision is predicted at ASSISTANT.
The 10 PAD embeddings of chunk c are replaced by that chunk's encoder frames (`audio_positions`).

Offline: OFFLINE ENGLISH SYSTEM TEXT_BEGIN system... TEXT_END [AUDIO_BEGIN AUDIO_PAD*N AUDIO_END]
[USER TEXT_BEGIN user... TEXT_END] ASSISTANT TEXT_BEGIN answer... TEXT_END; labels cover ASSISTANT onwards.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from omni.mini_omni3.tokens import IGNORE, MiniOmni3Tokens

RELEASED_SYSTEM_PROMPT = (
    "You are a helpful assistant. When there is no user text, if the audio contains a question, please answer it. "
    "If it is a sound effect, determine based on the sound whether help is needed."
)
OFFLINE_MAX_CHUNKS = 50  # offline audio is capped at 20 s = 50 chunks = 500 encoder frames
BLOCK_HEAD = 12          # AUDIO_BEGIN + 10 PAD + ASSISTANT: the unsupervised head of every chunk block


@dataclass(frozen=True)
class Reply:
    """One assistant turn: text token ids (no controls) and its emotion name (None -> normal)."""

    ids: tuple[int, ...]
    emotion: str | None = "normal"


@dataclass
class Sequence:
    """A laid-out example. Positions index `ids`.

    audio_positions: where encoder frames replace the placeholder embeddings, in frame order (chunk-major).
    decision_positions: online only, the ASSISTANT of every chunk block (the decision is the next token).
    reply_chunks: online chunk indices that carry a reply.
    """

    mode: str
    ids: list[int]
    labels: list[int]
    audio_positions: list[int] = field(default_factory=list)
    decision_positions: list[int] = field(default_factory=list)
    reply_chunks: list[int] = field(default_factory=list)
    n_chunks: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def _prefix(tok: MiniOmni3Tokens, mode_token: int, system_ids: list[int]) -> list[int]:
    tok.check_text_ids(list(system_ids), "system prompt")
    return [mode_token, tok.english, tok.system, tok.text_begin, *system_ids, tok.text_end]


def online_prefix(tok: MiniOmni3Tokens, system_ids: list[int]) -> list[int]:
    """ONLINE ENGLISH SYSTEM TEXT_BEGIN system... TEXT_END."""
    return _prefix(tok, tok.online, system_ids)


def offline_prefix(tok: MiniOmni3Tokens, system_ids: list[int]) -> list[int]:
    """OFFLINE ENGLISH SYSTEM TEXT_BEGIN system... TEXT_END."""
    return _prefix(tok, tok.offline, system_ids)


def chunk_head(tok: MiniOmni3Tokens) -> list[int]:
    """AUDIO_BEGIN PAD*10 ASSISTANT: what a session feeds for each new chunk (before the decision)."""
    return [tok.audio_begin, *[tok.pad] * tok.frames_per_chunk, tok.assistant]


def reply_tokens(tok: MiniOmni3Tokens, reply: Reply) -> list[int]:
    """TEXT_BEGIN EMOTION text... TEXT_END."""
    tok.check_text_ids(list(reply.ids), "reply")
    return [tok.text_begin, tok.emotion(reply.emotion), *reply.ids, tok.text_end]


def chunk_block(tok: MiniOmni3Tokens, reply: Reply | None = None) -> tuple[list[int], list[int]]:
    """(ids, labels) of one chunk: silent -> KEEP_SILENCE, else the reply; labels ignore the 12-token head."""
    tail = [tok.keep_silence] if reply is None else reply_tokens(tok, reply)
    head = chunk_head(tok)
    return head + tail, [IGNORE] * len(head) + tail


def online_sequence(tok: MiniOmni3Tokens, system_ids: list[int], n_chunks: int,
                    replies: Mapping[int, Reply] | None = None) -> Sequence:
    """A streaming session of `n_chunks` chunks; `replies` maps chunk index -> Reply (at most one per chunk)."""
    replies = dict(replies or {})
    bad = sorted(c for c in replies if not 0 <= c < n_chunks)
    if bad:
        raise ValueError(f"reply chunk(s) {bad} outside the session's {n_chunks} chunks")
    ids = online_prefix(tok, system_ids)
    labels = [IGNORE] * len(ids)
    seq = Sequence("online", ids, labels, n_chunks=n_chunks, reply_chunks=sorted(replies))
    for c in range(n_chunks):
        start = len(ids)
        block_ids, block_labels = chunk_block(tok, replies.get(c))
        ids += block_ids
        labels += block_labels
        seq.audio_positions += range(start + 1, start + 1 + tok.frames_per_chunk)
        seq.decision_positions.append(start + BLOCK_HEAD - 1)
    return seq


def offline_sequence(tok: MiniOmni3Tokens, system_ids: list[int], answer_ids: list[int], n_chunks: int = 0,
                     user_ids: list[int] | None = None) -> Sequence:
    """Offline turn: optional audio (n_chunks * 10 AUDIO_PAD frames, at most 20 s), optional user text, answer."""
    if n_chunks > OFFLINE_MAX_CHUNKS:
        raise ValueError(f"offline audio has {n_chunks} chunks; the cap is {OFFLINE_MAX_CHUNKS} (20 s)")
    if n_chunks <= 0 and not user_ids:
        raise ValueError("an offline example needs audio or user text")
    if not answer_ids:
        raise ValueError("an offline example needs answer tokens")
    ids = offline_prefix(tok, system_ids)
    seq = Sequence("offline", ids, [], n_chunks=max(n_chunks, 0))
    if n_chunks > 0:
        n = n_chunks * tok.frames_per_chunk
        seq.audio_positions = list(range(len(ids) + 1, len(ids) + 1 + n))
        ids += [tok.audio_begin, *[tok.audio_pad] * n, tok.audio_end]
    if user_ids:
        tok.check_text_ids(list(user_ids), "user text")
        ids += [tok.user, tok.text_begin, *user_ids, tok.text_end]
    tok.check_text_ids(list(answer_ids), "answer")
    answer = [tok.assistant, tok.text_begin, *answer_ids, tok.text_end]
    seq.labels = [IGNORE] * len(ids) + answer
    ids += answer
    return seq


def next_token_targets(labels: list[int]) -> list[int]:
    """Spec-form labels (aligned with ids) -> next-token targets: target[p] = labels[p + 1], last IGNORE."""
    return list(labels[1:]) + [IGNORE]


def reply_chunk_for(speech_end_s: float, chunk_s: float = 0.4, min_after_s: float = 0.04) -> int:
    """Index of the chunk that answers a turn whose speech ends at `speech_end_s`: the first chunk ending at least
    `min_after_s` after the speech, so it holds between 0.04 and 0.44 s of audio after the user stopped."""
    import math

    return max(0, math.ceil((speech_end_s + min_after_s) / chunk_s - 1e-9) - 1)
