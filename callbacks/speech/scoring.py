"""Scores over a list of SpeechSample: each function returns (metrics dict, per-sample rows keyed by sample id).

- `text_scores`: CER/WER of the generated text against the reference, overall and per length bucket.
- `intelligibility`: ASR of the generated speech, CER/WER against the model's own text (`asr_cer_text`:
  does the speech say what the text says?) and against the reference (`asr_cer_ref`), corpus level; a sample
  with no speech transcribes to "" (all deletions). Both sides go through `normalize_spoken` (Whisper's English
  normaliser: "7" / "seven", "colour" / "color" score as equal) before the usual CER normaliser; length buckets
  stay those of the raw reference, as in `text_scores` (whose text CER keeps `normalize_text` alone).
- `speaker_similarity`: cosine between the speaker embeddings of the generated speech and of the reference voice;
  mean overall (`sim`), over seen / unseen voices (`sim_seen`, `sim_unseen`) and per speaker (`sim/<speaker>`).
- `quality`: MOS predictor over the generated speech: mean of each score (`mos`, `mos_sig`, ...).
Samples without generated audio are counted (`n_no_audio` in text_scores) and left out of similarity and quality
(`sim_n`, `mos_n` count the samples scored)."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from callbacks.metrics import LENGTH_BUCKETS, OVER_BUCKET, bucketed_error_rates, error_rates, length_bucket
from callbacks.normalize import normalize_spoken
from callbacks.speech.sample import SpeechSample
from callbacks.speech.speaker import cosine

Rows = dict[str, dict[str, Any]]


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def text_scores(samples: Sequence[SpeechSample]) -> tuple[dict[str, float], Rows]:
    refs = [s.reference_text for s in samples]
    hyps = [s.text for s in samples]
    rates = error_rates(refs, hyps)
    metrics: dict[str, float] = {"text_cer": rates["cer"], "text_wer": rates["wer"], "n": len(samples),
                                 "n_no_audio": sum(s.audio is None for s in samples)}
    for bucket, r in bucketed_error_rates(refs, hyps).items():
        metrics[f"text_cer_{bucket}"], metrics[f"text_wer_{bucket}"] = r["cer"], r["wer"]
        metrics[f"n_{bucket}"] = r["n"]
    rows = {s.id: {"text_cer": error_rates([s.reference_text], [s.text])["cer"]} for s in samples}
    return metrics, rows


def intelligibility(samples: Sequence[SpeechSample], asr: Any) -> tuple[dict[str, float], Rows]:
    heard = [asr.transcribe(s.audio, s.sample_rate) if s.audio is not None else "" for s in samples]
    spoken = [normalize_spoken(h) for h in heard]
    said = [normalize_spoken(s.text) for s in samples]
    refs = [normalize_spoken(s.reference_text) for s in samples]
    vs_text = error_rates(said, spoken)
    vs_ref = error_rates(refs, spoken)
    metrics = {"asr_cer_text": vs_text["cer"], "asr_wer_text": vs_text["wer"],
               "asr_cer_ref": vs_ref["cer"], "asr_wer_ref": vs_ref["wer"]}
    groups: dict[str, list[int]] = defaultdict(list)  # bucket of the raw reference (the same as text_scores')
    for i, s in enumerate(samples):
        bucket = length_bucket(s.reference_text)
        if bucket is not None:
            groups[bucket].append(i)
    for bucket in [name for name, _, _ in LENGTH_BUCKETS] + [OVER_BUCKET]:
        if bucket in groups:
            r = error_rates([refs[i] for i in groups[bucket]], [spoken[i] for i in groups[bucket]])
            metrics[f"asr_cer_ref_{bucket}"] = r["cer"]
    rows = {s.id: {"asr_text": h, "asr_cer_text": error_rates([t], [n])["cer"],
                   "asr_cer_ref": error_rates([r], [n])["cer"]}
            for s, h, n, t, r in zip(samples, heard, spoken, said, refs)}
    return metrics, rows


def speaker_similarity(samples: Sequence[SpeechSample], encoder: Any,
                       train_speakers: set[str] | None = None) -> tuple[dict[str, float], Rows]:
    """`train_speakers` decides `seen` for samples whose producer left it None (else they count as unseen)."""
    rows: Rows = {}
    by_speaker: dict[str, list[float]] = defaultdict(list)
    by_seen: dict[bool, list[float]] = defaultdict(list)
    ref_cache: dict[int, np.ndarray] = {}
    for s in samples:
        if s.audio is None or s.reference_audio is None:
            continue
        key = id(s.reference_audio)
        if key not in ref_cache:
            ref_cache[key] = encoder.embed(s.reference_audio, s.reference_sample_rate)
        sim = cosine(encoder.embed(s.audio, s.sample_rate), ref_cache[key])
        seen = s.seen if s.seen is not None else bool(train_speakers and s.speaker in train_speakers)
        speaker = s.speaker or "?"
        rows[s.id] = {"similarity": sim, "speaker": speaker, "seen": seen}
        by_speaker[speaker].append(sim)
        by_seen[seen].append(sim)
    metrics: dict[str, float] = {"sim": _mean(v for vs in by_speaker.values() for v in vs), "sim_n": len(rows)}
    for seen, name in ((True, "sim_seen"), (False, "sim_unseen")):
        if by_seen.get(seen):
            metrics[name] = _mean(by_seen[seen])
    for speaker, values in sorted(by_speaker.items()):
        metrics[f"sim/{speaker}"] = _mean(values)
    return metrics, rows


def quality(samples: Sequence[SpeechSample], predictor: Any) -> tuple[dict[str, float], Rows]:
    rows: Rows = {}
    for s in samples:
        if s.audio is not None:
            rows[s.id] = {("mos" if k == "mos" else f"mos_{k}"): v for k, v in predictor.score(s.audio,
                                                                                              s.sample_rate).items()}
    keys = sorted({k for r in rows.values() for k in r})
    metrics: dict[str, float] = {k: _mean(r[k] for r in rows.values() if k in r) for k in keys}
    metrics["mos_n"] = len(rows)
    return metrics, rows


def merge_rows(*parts: Rows) -> Rows:
    out: Rows = defaultdict(dict)
    for part in parts:
        for key, row in part.items():
            out[key].update(row)
    return dict(out)


def score_speech(samples: Sequence[SpeechSample], asr: Any = None, speaker: Any = None, predictor: Any = None,
                 train_speakers: set[str] | None = None) -> tuple[dict[str, float], Rows]:
    """text_scores plus every scorer given (None skips one): merged metrics and per-sample rows."""
    metrics, rows = text_scores(samples)
    parts = [rows]
    for scorer, fn in ((asr, intelligibility), (speaker, speaker_similarity), (predictor, quality)):
        if scorer is not None:
            m, r = fn(samples, scorer, train_speakers) if fn is speaker_similarity else fn(samples, scorer)
            metrics.update(m)
            parts.append(r)
    return metrics, merge_rows(*parts)
