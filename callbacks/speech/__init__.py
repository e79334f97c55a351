"""Measuring generated speech: the SpeechSample record + producer protocol (`sample`), offline scorers that load
lazily and release (`asr`: pocketsphinx / local Whisper or CTC; `speaker`: resemblyzer / local x-vector;
`quality`: DNSMOS / local exported UTMOS), scoring functions (`scoring`) and the eval report (`report`).
Nothing here imports Lightning; the training callbacks live in `callbacks/speech_eval.py`."""
from callbacks.speech.asr import build_asr
from callbacks.speech.quality import build_quality
from callbacks.speech.sample import SpeechProducer, SpeechSample, register_producer, speech_producer
from callbacks.speech.speaker import build_speaker_encoder, cosine

__all__ = ["SpeechSample", "SpeechProducer", "speech_producer", "register_producer", "build_asr",
           "build_speaker_encoder", "build_quality", "cosine"]
