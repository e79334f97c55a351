"""Regenerate the bundled streaming sample (data/sample_streaming/): spoken questions separated by silence and
background sounds, some needing no reply, in the streaming schema (data/mini_omni3/schema.py).

Voices, question/answer items and the TTS command are those of the spoken-QA sample (data/mini_omni/make_sample.py):
train sessions use its train voices, val and test its held-out voices (never heard in train). Each session is
one user voice and 3-4 turns after a lead of silence / ambient sound:
  question   a spoken QA item                       -> reply (its answer), emotion normal
  statement  an emotional spoken statement          -> reply, emotion happy / sad / urgent
  filler     a short spoken filler ("okay", "hmm")  -> no reply
  ambient    generated noise burst / hum / chime    -> no reply
  alarm      generated beeping alarm                -> reply, emotion urgent
Some sessions carry a low background noise under everything. Offline rows (one question clip + its answer) are
added per split. Audio is stored as Ogg/Opus 16 kHz mono (about 3.7 kB/s).

    python -m data.mini_omni3.make_sample                # rewrites data/sample_streaming/
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from data.audio import decode_audio
from data.mini_omni.make_sample import TEST_VOICES, TRAIN_VOICES, VAL_VOICES, Voice, qa_items, synthesize
from data.mini_omni3.builder import Turn, build_session, offline_row, session_row
from data.mini_omni3.schema import SCHEMA
from omni.mini_omni3.encoder import SAMPLE_RATE

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "data", "sample_streaming")
SPLITS = {  # split: (voices, online sessions, offline rows, seed)
    "train": (TRAIN_VOICES, 72, 24, 0),
    "val": (VAL_VOICES, 12, 6, 1),
    "test": (TEST_VOICES, 20, 6, 2),
}
STATEMENTS = [  # (spoken text, emotion, reply)
    ("i passed my exam today", "happy", "well done, that is great news"),
    ("i won the game", "happy", "congratulations"),
    ("my cat is sick", "sad", "i am sorry to hear that"),
    ("i lost my keys", "sad", "i am sorry, let us look for them"),
    ("help, i fell down", "urgent", "stay calm, i am calling for help"),
]
FILLERS = ["okay", "hmm", "never mind", "right"]
ALARM_REPLY = "that sounds like an alarm, do you need help"
TURN_KINDS = {"question": 0.55, "statement": 0.1, "filler": 0.1, "ambient": 0.15, "alarm": 0.1}
ROW_GROUP_ROWS = 16


def encode_opus(wav: np.ndarray, sr: int) -> bytes:
    """(n,) float waveform -> Ogg/Opus bytes (soundfile / libsndfile; compact, decodes to the same length)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1, 1), sr, format="OGG", subtype="OPUS", compression_level=0.9)
    return buf.getvalue()


# -- generated sounds ---------------------------------------------------------------------------------------------
def _seconds(rng: np.random.Generator, lo: float, hi: float) -> int:
    return int(rng.uniform(lo, hi) * SAMPLE_RATE)


def noise_burst(rng: np.random.Generator) -> np.ndarray:
    """White, pink-ish or brown-ish noise with a fade in/out."""
    n = _seconds(rng, 0.6, 1.6)
    x = rng.normal(0, 1, n)
    colour = rng.integers(3)
    if colour == 1:
        x = np.convolve(x, np.ones(8) / 8, mode="same")
    elif colour == 2:
        x = np.cumsum(x)
        x -= np.convolve(x, np.ones(400) / 400, mode="same")
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.05, 0.3)
    fade = np.minimum(1, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.05 * SAMPLE_RATE))
    return (x * fade).astype(np.float32)


def hum(rng: np.random.Generator) -> np.ndarray:
    n, f0 = _seconds(rng, 0.8, 1.8), rng.choice([50.0, 60.0, 120.0])
    t = np.arange(n) / SAMPLE_RATE
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
    return (x / 2 * rng.uniform(0.05, 0.2)).astype(np.float32)


def chime(rng: np.random.Generator) -> np.ndarray:
    n, f = _seconds(rng, 0.6, 1.2), rng.uniform(500, 1200)
    t = np.arange(n) / SAMPLE_RATE
    return (np.sin(2 * np.pi * f * t) * np.exp(-4 * t) * rng.uniform(0.2, 0.5)).astype(np.float32)


def alarm(rng: np.random.Generator) -> np.ndarray:
    """4-6 beeps at 2-3 kHz, 0.15 s on / 0.1 s off."""
    f, beeps = rng.uniform(2000, 3000), int(rng.integers(4, 7))
    on, off = int(0.15 * SAMPLE_RATE), int(0.1 * SAMPLE_RATE)
    t = np.arange(on) / SAMPLE_RATE
    beep = np.sin(2 * np.pi * f * t) * rng.uniform(0.3, 0.6)
    return np.concatenate([np.concatenate([beep, np.zeros(off)]) for _ in range(beeps)])[:-off].astype(np.float32)


def lead(rng: np.random.Generator) -> np.ndarray:
    """Silence with a faint noise floor, 0.3-1.4 s."""
    return rng.normal(0, 0.0015, _seconds(rng, 0.3, 1.4)).astype(np.float32)


# -- sessions -----------------------------------------------------------------------------------------------------
def plan_split(split: str) -> list[dict]:
    """The deterministic session plan of a split: per session, its voice and turns (kind, text, reply, emotion)."""
    voices, n_sessions, _, seed = SPLITS[split]
    rng = np.random.default_rng(seed)
    items = qa_items()
    kinds, weights = list(TURN_KINDS), np.array(list(TURN_KINDS.values()))
    plans = []
    for s in range(n_sessions):
        turns = []
        for _ in range(int(rng.integers(3, 5))):
            kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
            if kind == "question":
                it = items[int(rng.integers(len(items)))]
                turns.append(dict(kind=kind, text=it.question, reply=it.answer, emotion="normal"))
            elif kind == "statement":
                text, emotion, reply = STATEMENTS[int(rng.integers(len(STATEMENTS)))]
                turns.append(dict(kind=kind, text=text, reply=reply, emotion=emotion))
            elif kind == "filler":
                turns.append(dict(kind=kind, text=FILLERS[int(rng.integers(len(FILLERS)))], reply=None))
            elif kind == "alarm":
                turns.append(dict(kind=kind, reply=ALARM_REPLY, emotion="urgent"))
            else:
                turns.append(dict(kind=kind, reply=None))
        plans.append(dict(id=f"{split}-s{s:03d}", voice=voices[s % len(voices)], turns=turns,
                          background=bool(rng.random() < 0.3), seed=seed * 1000 + s))
    return plans


def speech_jobs(plans: list[dict], offline: list[tuple[Voice, str]], work: str) -> tuple[dict, dict]:
    """Every distinct (voice id, text) spoken clip -> (its wav path under `work`, its (voice, text))."""
    jobs = {}
    for p in plans:
        for t in p["turns"]:
            if "text" in t:
                jobs[(p["voice"].id, t["text"])] = (p["voice"], t["text"])
    for voice, text in offline:
        jobs[(voice.id, text)] = (voice, text)
    paths = {key: os.path.join(work, voice.slug, f"{i:04d}.wav") for i, (key, (voice, _)) in enumerate(jobs.items())}
    return paths, jobs


def synthesize_all(paths: dict, jobs: dict, n_jobs: int) -> None:
    for path in paths.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:
        list(pool.map(lambda k: synthesize(jobs[k][0], jobs[k][1], paths[k], SAMPLE_RATE), list(jobs)))


def load_clip(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        return decode_audio(f.read(), SAMPLE_RATE)


def session_rows(plans: list[dict], clips: dict) -> list[dict]:
    rows = []
    for p in plans:
        rng = np.random.default_rng(p["seed"])
        turns = []
        for t in p["turns"]:
            if t["kind"] in ("question", "statement", "filler"):
                audio = clips[(p["voice"].id, t["text"])]
            elif t["kind"] == "alarm":
                audio = alarm(rng)
            else:
                audio = [noise_burst, hum, chime][int(rng.integers(3))](rng)
            turns.append(Turn(audio, t["reply"], t.get("emotion", "normal"), lead(rng), t["kind"], t.get("text")))
        background = rng.normal(0, rng.uniform(0.003, 0.01), SAMPLE_RATE).astype(np.float32) \
            if p["background"] else None
        session = build_session(turns, tail=lead(rng), background=background)
        kinds = ", ".join(t["kind"] for t in p["turns"])
        rows.append(session_row(p["id"], session, encode_opus, speaker=p["voice"].id,
                                source=f"omni-train streaming sample ({kinds}; tts {p['voice'].engine})"))
    return rows


def offline_plan(split: str) -> list[tuple[Voice, str, str]]:
    voices, _, n_offline, seed = SPLITS[split]
    rng = np.random.default_rng(100 + seed)
    items = qa_items()
    picks = rng.choice(len(items), size=n_offline, replace=False)
    return [(voices[k % len(voices)], items[i].question, items[i].answer) for k, i in enumerate(picks)]


def write_split(out: str, split: str, rows: list[dict]) -> str:
    folder = os.path.join(out, split)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    path = os.path.join(folder, "shard-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=ROW_GROUP_ROWS,
                   compression="zstd")
    return path


def split_stats(rows: list[dict], path: str) -> dict:
    online = [r for r in rows if r["mode"] == "online"]
    kinds: dict[str, int] = {}
    for r in online:
        for k in r["turn_kind"]:
            kinds[k] = kinds.get(k, 0) + 1
    return dict(sessions=len(online), offline=len(rows) - len(online), bytes=os.path.getsize(path),
                audio_s=sum(r["duration_s"] for r in rows), chunks=sum(r["n_chunks"] for r in online),
                replies=sum(len(r["reply_chunk"]) for r in online), turns=kinds,
                voices=sorted({r["speaker"] for r in rows}))


def write_readme(out: str, stats: dict[str, dict], elapsed: float) -> None:
    lines = [
        "# Bundled streaming sample (Mini-Omni3 LISTENING / SPEAKING)",
        "",
        "Generated by `python -m data.mini_omni3.make_sample`; do not edit by hand. Schema: `data/mini_omni3/schema.py`.",
        "",
        "Online rows are sessions of 3-4 turns, each after a lead of faint noise (0.3-1.4 s): spoken questions",
        "(the QA items and voices of `data/sample`), emotional statements, fillers, generated ambient sounds",
        "(noise bursts, hum, chimes) and beeping alarms; about 30 % of sessions have low background noise. As",
        "released, each clip is cropped to whole 40 ms frames and its reply sits on chunk floor(F / 10), F = the",
        "whole frames up to the clip's end (question -> its answer, emotion normal; statement -> happy / sad /",
        "urgent reply; alarm -> urgent reply); fillers and ambient sounds need no reply. Offline rows: one",
        "question clip + its answer.",
        "Audio: Ogg/Opus 16 kHz mono bytes.",
        "",
        "| split | sessions | offline rows | chunks | replies | audio (s) | size (MB) | turns | voices |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, s in stats.items():
        turns = ", ".join(f"{k} {v}" for k, v in sorted(s["turns"].items()))
        voices = ", ".join(f"`{v}`" for v in s["voices"])
        lines.append(f"| {split} | {s['sessions']} | {s['offline']} | {s['chunks']} | {s['replies']} | "
                     f"{s['audio_s']:.0f} | {s['bytes'] / 1e6:.2f} | {turns} | {voices} |")
    total = sum(s["bytes"] for s in stats.values())
    lines += [
        "",
        f"Total {total / 1e6:.2f} MB. Val and test voices never occur in train (and differ from each other).",
        "",
        "## Regenerate",
        "",
        "```bash",
        "sudo apt-get install espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox",
        "python -m data.mini_omni3.make_sample     # rewrites data/sample_streaming/",
        "```",
        "",
        f"Takes about {elapsed:.0f} s on a 2-core CPU.",
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.mini_omni3.make_sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 1))
    args = p.parse_args(argv)
    start = time.time()
    work = tempfile.mkdtemp(prefix="omni_streaming_sample_")
    stats = {}
    try:
        for split in SPLITS:
            plans, offline = plan_split(split), offline_plan(split)
            paths, jobs = speech_jobs(plans, [(v, q) for v, q, _ in offline], os.path.join(work, split))
            synthesize_all(paths, jobs, args.jobs)
            clips = {key: load_clip(path) for key, path in paths.items()}
            rows = session_rows(plans, clips)
            rows += [offline_row(f"{split}-o{k:03d}", answer, encode_opus, audio=clips[(v.id, q)], speaker=v.id,
                                 source="omni-train streaming sample (offline question)")
                     for k, (v, q, answer) in enumerate(offline)]
            stats[split] = split_stats(rows, write_split(args.out, split, rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.time() - start
    write_readme(args.out, stats, elapsed)
    print(json.dumps({"elapsed_s": round(elapsed, 1), **{k: {kk: v[kk] for kk in ("sessions", "offline", "replies",
                                                                                  "bytes")}
                                                        for k, v in stats.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
