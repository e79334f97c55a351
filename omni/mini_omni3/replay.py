"""Replay a recording through a streaming session as if it arrived live; measure latency and real-time factor.

Chunks are fed one at a time (6400 samples = 0.4 s of audio each); per chunk the report has the wall time to the
listen/speak decision and to the end of any reply. Real-time factor = total processing time / audio duration
(< 1: faster than real time; audio is not throttled to the wall clock, the factor says how much headroom there
is). A chunk's decision also waits for `mel_lookahead_ms` (2.5 ms) of the next chunk's audio, which its last
log-mel frame reads (whole-stream framing, omni/mini_omni3/encoder.py): latency from a chunk's end to its decision
= mel_lookahead_ms + decision_latency_ms.
`python eval.py mode=session ckpt=<streaming ckpt> wav=<file>` writes session.json (see conf/eval.yaml).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from omni.mini_omni3.encoder import CHUNK_SAMPLES, SAMPLE_RATE, pad_to_chunks
from omni.mini_omni3.session import Event, SessionConfig, StreamingSession


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values) * 1000.0
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "max": float(a.max())}


def replay(model: Any, tokenizer: Any, wav: np.ndarray, cfg: SessionConfig | None = None) -> dict[str, Any]:
    """Feed 16 kHz `wav` (zero-padded to whole chunks) chunk by chunk; -> report dict (replies, latencies, RTF)."""
    wav = pad_to_chunks(np.asarray(wav, dtype=np.float32))
    t0 = time.perf_counter()
    session = StreamingSession(model, tokenizer, cfg)
    setup_s = time.perf_counter() - t0
    replies: list[dict[str, Any]] = []
    decisions: list[int] = []
    start = time.perf_counter()
    for c in range(len(wav) // CHUNK_SAMPLES):
        for ev in session.feed(wav[c * CHUNK_SAMPLES:(c + 1) * CHUNK_SAMPLES]):
            _collect(ev, replies, decisions)
    for ev in session.flush():  # the last chunk: its look-ahead is the reflected end of the audio
        _collect(ev, replies, decisions)
    total_s = time.perf_counter() - start
    audio_s = len(wav) / SAMPLE_RATE
    return {
        "audio_s": audio_s, "n_chunks": session.chunks_seen, "processing_s": total_s, "prefill_s": setup_s,
        "rtf": total_s / audio_s if audio_s else float("nan"),
        "chunk_latency_ms": _ms(session.chunk_seconds), "decision_latency_ms": _ms(session.decision_seconds),
        "mel_lookahead_ms": session.lookahead_ms,
        "reply_chunks": decisions, "replies": replies, "generated_tokens": session.generated,
        "budget_exhausted": session.done, "sampling": vars(session.cfg),
    }


def _collect(ev: Event, replies: list[dict[str, Any]], decisions: list[int]) -> None:
    if ev.kind == "reply_start":
        decisions.append(ev.chunk)
    elif ev.kind == "reply_end":
        replies.append({"chunk": ev.chunk, "time_s": round((ev.chunk + 1) * CHUNK_SAMPLES / SAMPLE_RATE, 3),
                        "emotion": ev.emotion, "text": ev.text})


def replay_file(ckpt: str, wav_path: str, sampling: dict[str, Any] | None = None, out_dir: str | None = None
                ) -> dict[str, Any]:
    """Checkpoint (written by train.py) + audio file -> report; also written to OUT_DIR/session.json."""
    from data.audio import decode_audio
    from omni.checkpoint import load_for_eval
    from omni.families import load_tokenizer
    from omni.mini_omni3.model import MiniOmni3

    model, _ = load_for_eval(ckpt)
    if not isinstance(model, MiniOmni3):
        raise ValueError(f"{ckpt}: mode=session needs a Mini-Omni3 checkpoint, got {type(model).__name__}")
    wav = decode_audio(Path(wav_path).read_bytes(), SAMPLE_RATE)
    report = replay(model, load_tokenizer(model.cfg.tokenizer_path), wav, SessionConfig(**(sampling or {})))
    report.update(ckpt=str(ckpt), wav=str(wav_path))
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "session.json").write_text(json.dumps(report, indent=1))
    lat = report["chunk_latency_ms"]
    print(f"[session] {report['audio_s']:.1f} s audio, {report['n_chunks']} chunks: RTF {report['rtf']:.3f}, "
          f"chunk latency mean {lat.get('mean', 0):.1f} ms (p95 {lat.get('p95', 0):.1f} ms) "
          f"+ {report['mel_lookahead_ms']:.1f} ms mel look-ahead, "
          f"{len(report['replies'])} replies")
    for r in report["replies"]:
        print(f"  @{r['time_s']:.1f}s [{r['emotion']}] {r['text']}")
    return report


def eval_session(cfg: Any) -> dict[str, Any]:
    """`python eval.py mode=session ckpt=... wav=...` (this family's eval mode, omni/mini_omni3/family.py)."""
    from omegaconf import OmegaConf

    return replay_file(cfg.ckpt, cfg.wav, OmegaConf.to_container(cfg.session), cfg.out_dir)
