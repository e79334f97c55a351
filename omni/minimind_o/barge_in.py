"""Turn detection and barge-in with Silero VAD (spec "Generation": 16 kHz input, speech probability > 0.8,
>= 128 ms of speech starts a user turn, >= 800 ms of silence ends it; speech during generation interrupts it).

`TurnDetector.push(chunk)` takes microphone audio of any chunk size and returns turn events; the VAD runs on
512-sample windows (32 ms, what silero-vad 6 accepts at 16 kHz) and keeps its recurrent state across chunks.
`BargeIn` connects it to generation: while a reply is being generated, a turn start sets `interrupt`, the
threading.Event that `generate.decode_steps` / `playback.stream` check between steps. Audio may be fed from a
capture thread or, in a single thread, from the interrupt callback itself (`BargeIn.poll`).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

VAD_SR = 16000
VAD_WINDOW = 512


@dataclass(frozen=True)
class VADConfig:
    threshold: float = 0.8        # speech probability above which a window is speech
    min_speech_ms: int = 128      # consecutive speech that starts a turn
    min_silence_ms: int = 800     # silence that ends it
    pre_roll_ms: int = 256        # audio kept from before the start (the first syllable's onset)

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"vad threshold must be in (0, 1), got {self.threshold}")
        if min(self.min_speech_ms, self.min_silence_ms, self.pre_roll_ms) < 0:
            raise ValueError(f"vad durations must be >= 0: {self}")


@dataclass
class TurnEvent:
    """kind: "start" | "end"; time: seconds of input consumed when it was decided; audio: the turn's 16 kHz
    samples (pre-roll + speech, trailing silence trimmed to one window) on "end", else None."""

    kind: str
    time: float
    audio: np.ndarray | None = None


def load_vad() -> Any:
    """Silero VAD (the TorchScript model shipped inside the `silero-vad` package; no download)."""
    from silero_vad import load_silero_vad

    return load_silero_vad()


class TurnDetector:
    def __init__(self, cfg: VADConfig | None = None, model: Any = None) -> None:
        self.cfg = cfg or VADConfig()
        self.model = model if model is not None else load_vad()
        ms = VAD_SR / 1000
        self.speech_needed = int(self.cfg.min_speech_ms * ms)
        self.silence_needed = int(self.cfg.min_silence_ms * ms)
        self.pre_roll = int(self.cfg.pre_roll_ms * ms) // VAD_WINDOW
        self.reset()

    def reset(self) -> None:
        self.model.reset_states()
        self.speaking = False
        self._rest = np.zeros(0, dtype=np.float32)
        self._ring: list[np.ndarray] = []     # recent windows before a turn
        self._turn: list[np.ndarray] = []     # windows of the current turn
        self.speech = self.silence = self.consumed = 0
        self.probs: list[float] = []

    @torch.no_grad()
    def probability(self, window: np.ndarray) -> float:
        return float(self.model(torch.from_numpy(window), VAD_SR))

    def push(self, chunk: np.ndarray) -> list[TurnEvent]:
        """(n,) float32 16 kHz mono -> turn events decided by it (in order)."""
        audio = np.concatenate([self._rest, np.asarray(chunk, dtype=np.float32).reshape(-1)])
        n = audio.shape[0] // VAD_WINDOW * VAD_WINDOW
        self._rest = audio[n:]
        events = []
        for start in range(0, n, VAD_WINDOW):
            event = self._window(audio[start: start + VAD_WINDOW])
            if event is not None:
                events.append(event)
        return events

    def _window(self, w: np.ndarray) -> TurnEvent | None:
        p = self.probability(w)
        self.probs.append(p)
        self.consumed += VAD_WINDOW
        now = self.consumed / VAD_SR
        if p > self.cfg.threshold:
            self.silence = 0
            self.speech += VAD_WINDOW
            if self.speaking:
                self._turn.append(w)
                return None
            self._ring.append(w)
            if self.speech >= self.speech_needed:
                self.speaking, self._turn, self._ring = True, self._ring, []
                return TurnEvent("start", now)
            return None
        if self.speaking:
            self._turn.append(w)
            self.silence += VAD_WINDOW
            if self.silence >= self.silence_needed:
                keep = len(self._turn) - self.silence // VAD_WINDOW + 1
                audio = np.concatenate(self._turn[:keep])
                self.speaking, self._turn, self.speech, self.silence = False, [], 0, 0
                return TurnEvent("end", now, audio)
            return None
        self.speech = 0  # speech must be consecutive to start a turn
        self._ring = (self._ring + [w])[-max(1, self.pre_roll):]
        return None


class BargeIn:
    """Microphone audio -> turn events; a turn that starts while `generating()` is active sets `interrupt`."""

    def __init__(self, detector: TurnDetector | None = None) -> None:
        self.detector = detector or TurnDetector()
        self.interrupt = threading.Event()
        self._generating = False
        self._lock = threading.Lock()
        self.events: list[TurnEvent] = []

    def feed(self, chunk: np.ndarray) -> list[TurnEvent]:
        with self._lock:
            events = self.detector.push(chunk)
            self.events += events
            if self._generating and any(e.kind == "start" for e in events):
                self.interrupt.set()
        return events

    @contextmanager
    def generating(self) -> Iterator[threading.Event]:
        """Mark a reply as being generated; yields the Event to pass as `interrupt`."""
        self.interrupt.clear()
        self._generating = True
        try:
            yield self.interrupt
        finally:
            self._generating = False

    def poll(self, source: Callable[[], np.ndarray | None]) -> Callable[[], bool]:
        """Single-threaded hook: an interrupt callable that first feeds the next chunk from `source` (None when no
        audio is waiting), then reports whether generation must stop."""
        def check() -> bool:
            chunk = source()
            if chunk is not None and len(chunk):
                self.feed(chunk)
            return self.interrupt.is_set()
        return check
