"""English normalisation of the ASR-of-speech scores (callbacks/normalize.py `normalize_spoken`, Whisper's English
normaliser) while the text CER keeps its documented normaliser. Expected values are hand-computed below."""
from __future__ import annotations

import math

import numpy as np
import pytest

from callbacks.metrics import error_rates
from callbacks.normalize import normalize_spoken, normalize_text
from callbacks.speech.sample import SpeechSample
from callbacks.speech.scoring import intelligibility, text_scores

# (what the model wrote / the reference, what an ASR wrote for the same words)
SAME_WORDS = [
    ("it costs 7 dollars", "it costs seven dollars"),
    ("The colour of the sky.", "the color of the sky"),
    ("twenty-one cats", "21 cats"),
    ("I'm ten years old", "i am 10 years old"),
    ("Mr. Smith arrived on the first of May", "mister smith arrived on the 1st of may"),
]


@pytest.mark.parametrize("written,heard", SAME_WORDS)
def test_same_words_score_zero_after_spoken_normalisation(written, heard):
    assert normalize_spoken(written) == normalize_spoken(heard)
    assert error_rates([normalize_spoken(written)], [normalize_spoken(heard)])["cer"] == 0.0
    assert error_rates([written], [heard])["cer"] > 0  # negative control: the text CER's normaliser alone differs


def test_spoken_normaliser_hand_table():
    table = {  # Whisper's English normaliser (numbers to digits, American spellings, fillers dropped)
        "it costs seven dollars": "it costs $7",
        "The colour is grey!": "the color is gray",
        "uh I mean hmm, seven": "i mean 7",
    }
    assert {k: normalize_spoken(k) for k in table} == table
    assert normalize_text("it costs seven dollars") == "it costs seven dollars"  # the text CER's: unchanged words


def test_different_numbers_still_count():
    # "it costs $7" vs "it costs $8" -> normalize_text -> "it costs 7" (10 characters) vs "it costs 8": 1 substitution
    r = error_rates([normalize_spoken("it costs seven dollars")], [normalize_spoken("it costs 8 dollars")])
    assert r["cer"] == pytest.approx(1 / 10)
    assert r["wer"] == pytest.approx(1 / 3)


class ScriptedASR:
    """Returns a fixed transcript per call, in order (the speech itself is a placeholder)."""

    def __init__(self, transcripts):
        self.transcripts = list(transcripts)

    def transcribe(self, wav, sr):
        return self.transcripts.pop(0)


def sample(i: int, text: str, reference: str) -> SpeechSample:
    return SpeechSample(id=str(i), task="t1a2", prompt="q", text=text, reference_text=reference,
                        audio=np.zeros(1600, dtype=np.float32), sample_rate=16000)


def test_intelligibility_uses_spoken_normaliser_text_cer_does_not():
    samples = [sample(0, "it costs seven dollars", "It costs seven dollars."),
               sample(1, "The colour is red.", "the colour is red")]
    heard = ["it costs 7 dollars", "the color is red"]
    metrics, rows = intelligibility(samples, ScriptedASR(heard))
    assert metrics["asr_cer_text"] == 0.0 and metrics["asr_cer_ref"] == 0.0
    assert metrics["asr_wer_text"] == 0.0 and metrics["asr_cer_ref_short"] == 0.0
    assert [rows[k]["asr_cer_text"] for k in ("0", "1")] == [0.0, 0.0]
    assert rows["0"]["asr_text"] == "it costs 7 dollars"  # the recogniser's raw output is kept for reading
    # negative control: the same pairs under the text CER's normaliser alone. Hand count: "it costs seven dollars"
    # (22 chars) -> "it costs 7 dollars": "seven" -> "7" is 1 substitution + 4 deletions; "the colour is red" (17)
    # -> "the color is red": 1 deletion. Corpus CER = (5 + 1) / (22 + 17)
    raw = error_rates([s.text for s in samples], heard)
    assert raw["cer"] == pytest.approx(6 / 39)
    # the text CER (model text vs reference) keeps normalize_text: "7" vs "seven" is an error there
    text_samples = [sample(0, "it costs 7 dollars", "it costs seven dollars")]
    text_metrics, _ = text_scores(text_samples)
    assert text_metrics["text_cer"] == pytest.approx(5 / 22)


def test_empty_after_normalisation_is_not_scored():
    # a reference that is only a filler normalises to "" and has no defined error rate (skipped, as empty refs are)
    metrics, _ = intelligibility([sample(0, "uh", "uh")], ScriptedASR(["hello"]))
    assert math.isnan(metrics["asr_cer_ref"])
