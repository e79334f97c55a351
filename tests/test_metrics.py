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


# -- torchmetrics: split-level states, summed over batches and ranks ------------------------------------------------
def test_metric_states_sum_over_batches_not_a_mean_of_batch_rates():
    from callbacks.metrics import NormalizedCER, NormalizedWER

    # batch 1: "abcd" -> "abxd": 1 char edit / 4 chars, 1 word edit / 1 word
    # batch 2: "a b c d" -> "a x c": b->x and " d" deleted = 3 char edits / 7 chars; 1 sub + 1 del / 4 words
    # batch 3: an empty reference is not scored (no defined rate)
    cer, wer = NormalizedCER(), NormalizedWER()
    for refs, hyps in ((["ABCD!"], ["abxd"]), (["a b c d"], ["a x c"]), ([" ... "], ["x"])):
        cer.update(hyps, refs)
        wer.update(hyps, refs)
    assert float(cer.compute()) == pytest.approx(4 / 11) and float(wer.compute()) == pytest.approx(3 / 5)
    assert int(cer.pairs) == 2 and float(cer.errors) == 4 and float(cer.total) == 11
    # negative control: the mean of the per-batch rates is (1/4 + 3/7) / 2 = 0.339 and (1 + 1/2) / 2 = 0.75
    assert float(cer.compute()) != pytest.approx((1 / 4 + 3 / 7) / 2)
    assert float(wer.compute()) != pytest.approx(0.75)
    assert math.isnan(float(NormalizedCER().compute()))


def test_torchmetrics_rates_equal_jiwer_on_random_pairs():
    """An independent implementation (jiwer, rapidfuzz edit distances) on the same normalised pairs."""
    import random

    import jiwer

    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "seven", "don't", "eleven", "x"]
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(40)]
    hyps = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(40)]
    rates = error_rates(refs, hyps)
    norm_r, norm_h = [normalize_text(r) for r in refs], [normalize_text(h) for h in hyps]
    assert rates["cer"] == pytest.approx(jiwer.cer(norm_r, norm_h), rel=1e-6)
    assert rates["wer"] == pytest.approx(jiwer.wer(norm_r, norm_h), rel=1e-6)


@pytest.mark.slow  # two spawned processes
def test_text_error_rates_sync_over_two_gloo_processes(tmp_path):
    """Rank 0 scores "abcd" -> "abxd" (1/4 chars, 1/1 words); rank 1 "a b c d" -> "a x c" (3/7 chars, 2/4 words)
    plus an unscored empty reference, and alone a key of its own. Every rank gets the split's rates."""
    import json

    import torch.multiprocessing as mp

    from tests.gloo_workers import text_error_rates_worker

    mp.spawn(text_error_rates_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())["synced"]
        assert got[""]["cer"] == pytest.approx(4 / 11) and got[""]["wer"] == pytest.approx(3 / 5)
        assert got[""]["n"] == 2
        assert got["_only_rank1"] == {"cer": 1.0, "wer": 1.0, "n": 1}  # "one" -> "two": 3 subs / 3 chars
        # negative control: rank 0's own pair alone (what a rank-0-only log of its share would show), or the
        # mean of the two ranks' rates, differ from the split's value
        assert got[""]["cer"] != pytest.approx(1 / 4) and got[""]["cer"] != pytest.approx((1 / 4 + 3 / 7) / 2)


@pytest.mark.slow
def test_sharded_text_metrics_equal_single_process_cer(tmp_path):
    """train.py with 1 and with 2 CPU DDP processes (gloo), the same weights (seeded init, lr 0) and the same 5
    validation rows per task: each rank decodes its share (3 + 2 rows) and both log exactly the 1-process CER /
    WER (val/cer, per task, per bucket). Seed 4 gives the tiny random model distinct, non-empty outputs (CER not
    0 or 1), so a rank's share alone would give a different value."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import ROOT

    env = {"HF_HUB_OFFLINE": "1", "OMNI_AUTO_PRECISION": "32-true", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "TOKENIZERS_PARALLELISM": "false", "HOME": str(Path.home())}
    common = ["debug=fast", "logger=csv", "data.max_tokens=1200", "test=false", "stage.lr=0", "seed=4",
              "callbacks.text_metrics.max_examples=5", "trainer.accelerator=cpu"]
    logged = {}
    for name, extra in (("one", []), ("two", ["trainer=ddp"])):
        out = tmp_path / name
        res = subprocess.run([sys.executable, "train.py", *common, *extra, f"hydra.run.dir={out}",
                              f"paths.output_dir={out}"], capture_output=True, text=True, cwd=ROOT, timeout=400,
                             env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        text = res.stdout + res.stderr
        rows = list(csv.DictReader((out / "csv" / "version_0" / "metrics.csv").open()))
        logged[name] = {k: float(v) for r in rows for k, v in r.items() if v and k.startswith(("val/cer", "val/wer"))}
        if name == "two":
            for task in ("asr", "a1t2"):
                assert f"rank 0 of 2 decodes 3 of 5 {task} rows" in text, text[-3000:]
                assert f"rank 1 of 2 decodes 2 of 5 {task} rows" in text, text[-3000:]
        else:
            assert "rank 0 of 1 decodes 5 of 5 asr rows" in text
    print("1 process:", logged["one"], "\n2 processes:", logged["two"])
    assert logged["one"] and logged["one"] == logged["two"]
    assert 0 < logged["one"]["val/cer"] != 1.0 and logged["one"]["val/cer_asr"] != logged["one"]["val/cer_a1t2"]
