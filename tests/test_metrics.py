"""Text normaliser and corpus CER/WER against hand-computed values."""
import math

import pytest

from callbacks.metrics import bucketed_error_rates, error_rates, length_bucket
from callbacks.normalize import normalize_text
from callbacks.text_metrics import TextMetricsCallback, rate_scores


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


def test_jiwer_reference_pairs():
    # jiwer's README pair and hand-counted edits (insertions, deletions, substitutions)
    assert error_rates(["hello world"], ["hello duck"])["wer"] == pytest.approx(0.5)
    assert error_rates(["a b c d"], ["a x c"])["wer"] == pytest.approx(2 / 4)  # 1 sub + 1 del
    assert error_rates(["a b"], ["a b c d"])["wer"] == pytest.approx(2 / 2)  # 2 insertions
    assert error_rates(["abcd"], ["abxd"])["cer"] == pytest.approx(1 / 4)
    assert error_rates(["abc"], ["abcde"])["cer"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("n_words,bucket", [(1, "short"), (15, "short"), (16, "mid"), (30, "mid"), (31, "long"),
                                            (60, "long"), (61, "over_60")])
def test_length_bucket_boundaries(n_words, bucket):
    assert length_bucket(" ".join(["word"] * n_words) + " !!") == bucket  # punctuation is not a word
    assert length_bucket("  ... ") is None


def test_bucketed_error_rates_split_the_corpus():
    short_ref, mid_ref = "one two three", " ".join(f"w{i}" for i in range(20))
    mid_hyp = mid_ref.replace("w3", "x3").replace("w7 ", "")  # 1 substitution + 1 deletion over 20 words
    refs, hyps = [short_ref, mid_ref, "four"], ["one two", mid_hyp, "four"]
    buckets = bucketed_error_rates(refs, hyps)
    assert list(buckets) == ["short", "mid"]
    assert buckets["short"]["n"] == 2 and buckets["short"]["wer"] == pytest.approx(1 / 4)
    assert buckets["mid"]["wer"] == pytest.approx(2 / 20)
    assert buckets["short"] == error_rates([short_ref, "four"], ["one two", "four"])


def test_text_metrics_scores_include_buckets():
    scores = rate_scores(["what is one plus two", "seven"], ["what is one plus two", "eleven"], "_asr")
    assert scores["cer_asr"] == scores["cer_asr_short"] and scores["wer_asr"] == pytest.approx(1 / 6)
    assert not any(k.endswith(("_mid", "_long")) for k in scores)
