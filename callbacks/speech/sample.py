"""The family-agnostic evaluation record of generated speech, and the protocol that produces it.

Protocol (how a model family plugs into speech evaluation, in the training callbacks and in `eval.py`):

    producer = speech_producer(infer, **options)       # infer: the family's inference helper
    for sample in producer.speech_samples(examples, task, sampling):
        ...                                            # one SpeechSample per dataset example

- `infer` is what `omni.families.make_inference(model, tokenizer)` returns (the object `OmniModule.inference()`
  caches). If it has a method `speech_samples(examples, task, sampling)` it IS the producer; otherwise an adapter
  wraps it (`factory(infer, **options)`): the one its family names in its registry entry (`Family.speech`, e.g.
  the Mini-Omni adapter wraps that family's helper without changing it), or one `register_producer(InferenceClass,
  factory)` registered.
- `examples` are the dicts of `datamodule.examples(split, task, n)`; `task` is the family's task name (e.g. a1a2,
  t1a2 for Mini-Omni; t2a / a2a for a Thinker-Talker family); `sampling` is the family's sampling config or a
  plain dict {temperature, top_k, max_new_tokens, seed} (what the training callbacks pass) to convert into it.
- Each SpeechSample carries the generated speech as a mono float32 waveform at its own rate, the model's own
  text (what the speech should say), the reference text, and the reference voice (audio of the voice the speech
  should have: the training voice for fixed-voice models, the cloning prompt for voice-cloning models) with its
  speaker id and whether that voice was seen in training (None: scorers derive it from the train speakers).
- Producers load heavy pieces (codec, vocoder) lazily and expose `release()`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class SpeechSample:
    id: str
    task: str
    prompt: str                               # the question (text, or the transcript of the spoken question)
    text: str                                 # text the model generated alongside its speech ("" if none)
    reference_text: str                       # expected answer text
    audio: np.ndarray | None                  # (n,) float32 mono generated speech; None when nothing was spoken
    sample_rate: int
    reference_audio: np.ndarray | None = None  # (m,) float32 mono speech in the target voice
    reference_sample_rate: int | None = None
    speaker: str | None = None                # id of the target voice
    seen: bool | None = None                  # target voice heard in training? None: decide from train speakers
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific columns (frames, latency, ...)

    def __post_init__(self) -> None:
        for name in ("audio", "reference_audio"):
            wav = getattr(self, name)
            if wav is not None:
                wav = np.asarray(wav, dtype=np.float32)
                if wav.ndim != 1:
                    raise ValueError(f"SpeechSample {self.id!r}: {name} must be a mono (n,) waveform, "
                                     f"got shape {wav.shape}")
                setattr(self, name, wav if wav.size else None)
        if self.reference_audio is not None and not self.reference_sample_rate:
            raise ValueError(f"SpeechSample {self.id!r}: reference_audio needs reference_sample_rate")

    @property
    def duration_s(self) -> float:
        return 0.0 if self.audio is None else self.audio.shape[0] / float(self.sample_rate)


@runtime_checkable
class SpeechProducer(Protocol):
    def speech_samples(self, examples: Sequence[dict], task: str, sampling: Any) -> Iterator[SpeechSample]: ...


_PRODUCERS: dict[type, Callable[..., SpeechProducer]] = {}


def register_producer(inference_cls: type, factory: Callable[..., SpeechProducer]) -> None:
    """Make `speech_producer(infer)` wrap instances of `inference_cls` with `factory(infer, **options)`."""
    _PRODUCERS[inference_cls] = factory


def _family_factory(infer: Any) -> Callable[..., SpeechProducer] | None:
    """The producer the helper's family registers (`Family.speech`, omni.families), or None."""
    from omni.families import speech_producer_factory

    return speech_producer_factory(infer)


def speech_producer(infer: Any, **options: Any) -> SpeechProducer:
    """The SpeechSample producer of a family's inference helper (see the module docstring)."""
    if isinstance(infer, SpeechProducer):
        return infer
    for cls, factory in _PRODUCERS.items():  # register_producer() adapters first: they may override a family's
        if isinstance(infer, cls):
            return factory(infer, **options)
    factory = _family_factory(infer)
    if factory is not None:
        return factory(infer, **options)
    raise TypeError(f"{type(infer).__name__} cannot produce speech samples: give it a `speech_samples(examples, "
                    f"task, sampling)` method, name a producer in its family's entry (Family.speech) or "
                    f"register_producer() an adapter; registered: {[c.__name__ for c in _PRODUCERS]}")


def split_speakers(paths: Any) -> set[str]:
    """The distinct `speaker` values of a split's parquet shards (files or folders; light column read). Scorers use
    the train split's speakers to decide seen / unseen voices."""
    import pyarrow.parquet as pq

    from data.dataset import expand_paths

    speakers: set[str] = set()
    for path in expand_paths(paths) if paths else []:
        speakers.update(s for s in pq.read_table(path, columns=["speaker"]).column("speaker").to_pylist() if s)
    return speakers
