"""Text normaliser and corpus CER/WER against hand-computed values."""
import math

import pytest

from callbacks.metrics import error_rates
from callbacks.normalize import normalize_text
from callbacks.text_metrics import TextMetricsCallback


@pytest.mark.parametrize("raw,norm", [
    ("What is THREE plus four?", "what is three plus four"),
    ("  don't   stop,\tnow! ", "don't stop now"),
    ("'quoted' words", "quoted words"),
    ("ｆｕｌｌ-width — dash", "full width dash"),
    ("snake_case 7", "snake case 7"),
])
def test_normalize_text(raw, norm):
    assert normalize_text(raw) == norm


def test_error_rates_known_values():
    # WER: ref 4 words, 1 substitution -> 0.25; CER: "seven" vs "eleven": 2 subs + 1 ins over 5 chars... computed
    # on the whole corpus: refs "the cat sat down" (16 chars) + "seven" (5) = 21 chars.
    rates = error_rates(["The cat sat down.", "seven"], ["the bat sat down", "seven"])
    assert rates["wer"] == pytest.approx(1 / 5)  # 1 substituted word / 5 reference words
    assert rates["cer"] == pytest.approx(1 / 21)  # 1 substituted char / 21 reference chars (spaces count)
    assert rates["n"] == 2


def test_empty_reference_is_not_scored_and_empty_hypothesis_is_all_deletions():
    rates = error_rates(["", "abc"], ["x", ""])
    assert rates["n"] == 1 and rates["cer"] == 1.0 and rates["wer"] == 1.0
    assert math.isnan(error_rates([""], ["x"])["cer"])
    with pytest.raises(ValueError):
        error_rates(["a"], [])


def test_callback_rejects_unknown_task():
    with pytest.raises(ValueError, match="valid"):
        TextMetricsCallback(tasks=["asr", "speech"])
