"""Conversations -> streaming sessions: concatenate turns, place each reply on its chunk, write schema rows.

A turn (spec "Training data") is leading noise / ambient audio + the user's clip (speech, or a sound event).
As in the release (spec, pinned facts), the user's clip is first cropped to whole 40 ms encoder frames (640
samples; the partial tail frame is dropped); with F = the whole frames of the session up to the end of the
clip, its reply, when it needs one, goes on chunk floor(F / 10) (`omni.mini_omni3.layout.reply_chunk_for`); a
turn that needs no reply stays KEEP_SILENCE. Leads are cropped to whole frames too, so every clip starts and ends
on a session frame boundary: the end is exactly F frames and the reply chunk holds 1-10 whole frames after the
speech (0.04-0.4 s, spec "Training data"). With an unaligned lead the speech would spill into frame F and the
reply chunk could hold as little as one sample after it (a label the audio cannot support yet). Clips are taken
to end where the speech ends (trim them first; the sample generator does with sox). Audio is 16 kHz mono
float32 (n,) numpy arrays throughout.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from data.mini_omni3.schema import empty_row
from omni.mini_omni3.encoder import CHUNK_SAMPLES, SAMPLE_RATE, n_chunks
from omni.mini_omni3.layout import FRAME_SAMPLES, OFFLINE_MAX_CHUNKS, reply_chunk_for
from omni.mini_omni3.tokens import EMOTIONS


@dataclass(frozen=True)
class Turn:
    """One user turn. `reply` None = needs no reply (stays silent)."""

    audio: np.ndarray
    reply: str | None = None
    emotion: str = "normal"
    lead: np.ndarray | None = None
    kind: str = "speech"
    text: str | None = None

    def __post_init__(self) -> None:
        if self.emotion not in EMOTIONS:
            raise ValueError(f"turn emotion {self.emotion!r} is not one of {list(EMOTIONS)}")
        if np.asarray(self.audio).ndim != 1 or len(self.audio) == 0:
            raise ValueError("turn audio must be a non-empty (n,) mono array at 16 kHz")


@dataclass
class Session:
    """A built session: audio (n,), its chunk count, and (chunk, text, emotion) replies in chunk order."""

    audio: np.ndarray
    replies: list[tuple[int, str, str]] = field(default_factory=list)
    turn_kind: list[str] = field(default_factory=list)
    turn_end_s: list[float] = field(default_factory=list)

    @property
    def n_chunks(self) -> int:
        return n_chunks(len(self.audio))

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def build_session(turns: Sequence[Turn], tail: np.ndarray | None = None, background: np.ndarray | None = None
                  ) -> Session:
    """Concatenate turns (lead + clip each) and `tail`; add `background` (looped) under everything. The session is
    extended with silence when a reply falls on a chunk past its end. Two replies on one chunk fail."""
    pieces: list[np.ndarray] = []
    session = Session(np.zeros(0, dtype=np.float32))
    t = 0
    by_chunk: dict[int, int] = {}
    for i, turn in enumerate(turns):
        clip = np.asarray(turn.audio, dtype=np.float32)
        clip = clip[: len(clip) // FRAME_SAMPLES * FRAME_SAMPLES]  # whole 40 ms encoder frames only
        if len(clip) == 0:
            raise ValueError(f"turn {i}: its clip is shorter than one 40 ms encoder frame ({FRAME_SAMPLES} samples)")
        lead = None if turn.lead is None else np.asarray(turn.lead, dtype=np.float32)
        if lead is not None:  # whole frames too: the clip then starts and ends on a session frame boundary
            lead = lead[: len(lead) // FRAME_SAMPLES * FRAME_SAMPLES]
        for part in (lead, clip):
            if part is not None and len(part):
                pieces.append(np.asarray(part, dtype=np.float32))
                t += len(part)
        end_s = t / SAMPLE_RATE
        session.turn_kind.append(turn.kind)
        session.turn_end_s.append(round(end_s, 4))
        if turn.reply is not None:
            chunk = reply_chunk_for(t)
            if chunk in by_chunk:
                raise ValueError(f"turns {by_chunk[chunk]} and {i} would both answer chunk {chunk}: "
                                 f"give turn {i} a longer lead")
            by_chunk[chunk] = i
            session.replies.append((chunk, turn.reply, turn.emotion))
    if tail is not None:
        pieces.append(np.asarray(tail, dtype=np.float32))
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    need = (max(by_chunk) + 1) * CHUNK_SAMPLES if by_chunk else 0
    if len(audio) < need:
        audio = np.pad(audio, (0, need - len(audio)))
    if background is not None and len(background) and len(audio):
        reps = -(-len(audio) // len(background))
        audio = audio + np.tile(np.asarray(background, dtype=np.float32), reps)[: len(audio)]
    session.audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    return session


def session_row(row_id: str, session: Session, encode: Callable[[np.ndarray, int], bytes], speaker: str | None = None,
                source: str | None = None) -> dict:
    """A streaming-schema row (mode online) with the session audio encoded by `encode(wav, sr) -> bytes`."""
    return empty_row(
        id=row_id, mode="online", audio=encode(session.audio, SAMPLE_RATE), n_chunks=session.n_chunks,
        duration_s=float(session.duration_s), reply_chunk=[c for c, _, _ in session.replies],
        reply_text=[r for _, r, _ in session.replies], reply_emotion=[e for _, _, e in session.replies],
        turn_kind=session.turn_kind, turn_end_s=session.turn_end_s, speaker=speaker, source=source,
    )


def offline_row(row_id: str, answer: str, encode: Callable[[np.ndarray, int], bytes] | None = None,
                audio: np.ndarray | None = None, user_text: str | None = None, emotion: str = "normal",
                speaker: str | None = None, source: str | None = None) -> dict:
    """A streaming-schema row (mode offline): audio (<= 20 s) and/or user text, one answer."""
    if audio is None and not user_text:
        raise ValueError(f"offline row {row_id!r} needs audio or user_text")
    values = dict(id=row_id, mode="offline", reply_text=[answer], reply_emotion=[emotion], user_text=user_text,
                  speaker=speaker, source=source)
    if audio is not None:
        if encode is None:
            raise ValueError("offline_row with audio needs `encode`")
        chunks = n_chunks(len(audio))
        if chunks > OFFLINE_MAX_CHUNKS:
            raise ValueError(f"offline row {row_id!r}: {len(audio) / SAMPLE_RATE:.1f} s of audio, the cap is 20 s")
        values.update(audio=encode(np.asarray(audio, dtype=np.float32), SAMPLE_RATE), n_chunks=chunks,
                      duration_s=len(audio) / SAMPLE_RATE)
    return empty_row(**values)
