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
N is the tower's output length for the WHOLE clip in one call (encoder.clip_frames: 57 for 2.3 s), not chunks x 10.

Sessions longer than the maximum length are truncated, not skipped: `truncate_online` drops the tail chunks
(whole chunk blocks, with their replies) until the sequence fits.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from omni.mini_omni3.tokens import IGNORE, MiniOmni3Tokens

RELEASED_SYSTEM_PROMPT = (
    "You are a helpful assistant. When there is no user text, if the audio contains a question, please answer it. "
    "If it is a sound effect, determine based on the sound whether help is needed."
)
OFFLINE_MAX_CHUNKS = 50  # offline audio is capped at 20 s = 50 chunks
OFFLINE_MAX_FRAMES = 500  # = encoder.clip_frames(20 s): 2000 mel frames -> 1000 after conv2 -> 500 after pooling
BLOCK_HEAD = 12          # AUDIO_BEGIN + 10 PAD + ASSISTANT: the unsupervised head of every chunk block
FRAMES = 10              # encoder frames (PADs) per chunk


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


def offline_sequence(tok: MiniOmni3Tokens, system_ids: list[int], answer_ids: list[int], n_frames: int = 0,
                     user_ids: list[int] | None = None) -> Sequence:
    """Offline turn: optional audio (`n_frames` AUDIO_PAD = the whole-clip tower output length, encoder.clip_frames;
    at most 500 = 20 s), optional user text, answer. `audio_positions` are the AUDIO_PAD positions."""
    if n_frames > OFFLINE_MAX_FRAMES:
        raise ValueError(f"offline audio has {n_frames} tower frames; the cap is {OFFLINE_MAX_FRAMES} (20 s)")
    if n_frames <= 0 and not user_ids:
        raise ValueError("an offline example needs audio or user text")
    if not answer_ids:
        raise ValueError("an offline example needs answer tokens")
    ids = offline_prefix(tok, system_ids)
    seq = Sequence("offline", ids, [])
    if n_frames > 0:
        n = n_frames
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


FRAME_SAMPLES = 640  # one 40 ms encoder frame at 16 kHz


def reply_chunk_for(speech_end_sample: int, frame_samples: int = FRAME_SAMPLES, frames_per_chunk: int = 10) -> int:
    """Chunk that answers a turn whose (frame-cropped) speech ends at session sample `speech_end_sample` (spec,
    pinned facts): F = whole 40 ms frames up to the end of the speech, reply on chunk floor(F / 10)."""
    if speech_end_sample < 0:
        raise ValueError(f"speech end {speech_end_sample} < 0")
    return (int(speech_end_sample) // frame_samples) // frames_per_chunk


def online_length(prefix_len: int, n_chunks: int, reply_lens: Mapping[int, int]) -> int:
    """Laid-out length of a session: prefix + 13 per chunk + (text + 2) per reply (TEXT_BEGIN EMOTION text
    TEXT_END replaces KEEP_SILENCE)."""
    return prefix_len + 13 * n_chunks + sum(n + 2 for c, n in reply_lens.items() if c < n_chunks)


def chunks_within(prefix_len: int, n_chunks: int, reply_lens: Mapping[int, int], max_len: int) -> int:
    """The most leading chunks whose session fits `max_len` (tail chunks dropped; 0 when not even one fits)."""
    k = n_chunks
    while k > 0 and online_length(prefix_len, k, reply_lens) > max_len:
        k -= 1
    return k


def truncate_online(seq: Sequence, n_keep: int) -> Sequence:
    """The session's first `n_keep` chunk blocks (prefix kept; later chunks and their replies dropped)."""
    if n_keep >= seq.n_chunks:
        return seq
    end = seq.decision_positions[n_keep] - BLOCK_HEAD + 1  # start of block n_keep
    return Sequence(seq.mode, seq.ids[:end], seq.labels[:end], seq.audio_positions[: n_keep * FRAMES],
                    seq.decision_positions[:n_keep], [c for c in seq.reply_chunks if c < n_keep], n_keep)
