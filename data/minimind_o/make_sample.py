"""Regenerate the bundled MiniMind-O sample (data/sample_minimind/) and its tiny tokenizer
(omni/minimind_o/assets/tiny_tokenizer/).

Rows in the released schema, built by `python -m data.minimind_o.prepare` (the same code path as user data):
- T2A: the template questions of data/mini_omni/make_sample.py as text; answers spoken by an "assistant" voice
  (offline TTS) -> Mimi codes; reference-voice codes + speaker embedding on most rows; some 2-turn chats.
- A2A: the spoken questions of the bundled Mini-Omni sample (data/sample, user voices) -> `question_audios`.
- I2T: generated pictures (Pillow: a coloured shape on a plain background) with text answers.
Mimi codes come from a RANDOM-weight Mimi of the real architecture (seed 0; no hub here): layout and lengths
are real, the codes are not speech. Speaker embeddings: resemblyzer (GE2E, real weights, 256-d).

    python -m data.minimind_o.make_sample                  # ~3 min on 2 CPU cores
    python -m data.minimind_o.make_sample --codec /models/mimi --speaker-model /models/xvector
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq

from data.mini_omni.make_sample import Voice, qa_items, synthesize, train_tokenizer
from data.minimind_o.prepare import prepare_manifest
from omni.minimind_o.layout import Augment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "data", "sample_minimind")
DEFAULT_TOKENIZER_OUT = os.path.join(REPO, "omni", "minimind_o", "assets", "tiny_tokenizer")
MINI_OMNI_SAMPLE = os.path.join(REPO, "data", "sample")
TOKENIZER_VOCAB = 512
ANSWER_SR = 24000
DEFAULT_VOICE = Voice("flite", "slt")                     # rows without reference / speaker speak this voice
SEEN_VOICES = (DEFAULT_VOICE, Voice("espeak-ng", "en+f4"))
UNSEEN_VOICE = Voice("flite", "kal16")                   # val / test only (voice cloning of a new voice)
REFERENCE_TEXT = "hello there, this is the voice i will use to answer your questions"
A2A_ROWS = {"train": 64, "val": 16, "test": 16}
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "black": (15, 15, 15), "purple": (140, 50, 170)}
IMAGE_QUESTIONS = (("<image>what is in the picture", "a {colour} {shape}"),
                   ("<image>what colour is the shape", "{colour}"), ("<image>what shape is this", "a {shape}"))


def special_tokens() -> list[str]:
    """MiniMind's special ids: 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|>, 12 <|image_pad|>, 16 <|audio_pad|>,
    25 <think>, 26 </think> (spec); the other ids below 27 are reserved names here."""
    names = [f"<|reserved_{i}|>" for i in range(27)]
    for i, name in {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>", 12: "<|image_pad|>",
                    16: "<|audio_pad|>", 25: "<think>", 26: "</think>"}.items():
        names[i] = name
    return names


def draw_image(shape: str, colour: str, rng: np.random.Generator, size: int = 96) -> bytes:
    """PNG bytes: one filled shape of `colour` at a random place and size on a light random background."""
    import io

    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = max(2, r // 3)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)[:60]


def chat(*pairs: tuple[str, str]) -> list[dict]:
    return [m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


def answer_path(voice: Voice, text: str) -> str:
    return os.path.join("answers", voice.slug, f"{_slug(text)}.wav")


def voiced(line: dict, voice: Voice, conditioned: bool) -> dict:
    """Add the reference / speaker-embedding clip of `voice` (conditioned rows)."""
    if conditioned:
        line["ref_audio"] = os.path.join("refs", f"{voice.slug}.wav")
    return line


def t2a_lines(split: str, items, rng: np.random.Generator) -> list[dict]:
    """Train: every item once (seen voices; 1 in 3 rows in the default voice without conditioning; every 8th item
    also as a 2-turn chat). Val / test: 24 even / odd items, conditioned, half in the unseen voice."""
    lines = []
    if split == "train":
        for i, it in enumerate(items):
            conditioned = i % 3 != 0
            voice = SEEN_VOICES[i % 2] if conditioned else DEFAULT_VOICE
            pairs = [(it.question, it.answer)]
            if i % 8 == 7:
                prev = items[i - 1]
                pairs = [(prev.question, prev.answer), *pairs]
            lines.append(voiced({"id": f"t2a-{split}-{i:03d}", "conversations": chat(*pairs),
                                 "answer_audios": [answer_path(voice, a) for _, a in pairs]}, voice, conditioned))
        return lines
    picks = list(range(0 if split == "val" else 1, len(items), 2))[:24]
    for k, i in enumerate(picks):
        voice = UNSEEN_VOICE if k % 2 else SEEN_VOICES[k // 2 % 2]
        it = items[i]
        lines.append(voiced({"id": f"t2a-{split}-{i:03d}", "conversations": chat((it.question, it.answer)),
                             "answer_audios": [answer_path(voice, it.answer)]}, voice, True))
    return lines


def a2a_lines(split: str, work: str, rng: np.random.Generator) -> list[dict]:
    """Spoken questions of the Mini-Omni sample split (one user voice per item), answered in a seen voice."""
    table = pq.read_table(os.path.join(MINI_OMNI_SAMPLE, split),
                          columns=["id", "question_text", "question_audio", "answer_text"]).to_pylist()
    rows, seen_q = [], set()
    for rec in table:
        if rec["question_text"] in seen_q:
            continue
        seen_q.add(rec["question_text"])
        rows.append(rec)
    picks = sorted(rng.choice(len(rows), size=min(A2A_ROWS[split], len(rows)), replace=False).tolist())
    lines = []
    for k, i in enumerate(picks):
        rec = rows[i]
        q_rel = os.path.join("questions", split, f"{_slug(rec['id'])}.flac")
        with open(os.path.join(work, q_rel), "wb") as f:
            f.write(rec["question_audio"])
        voice = SEEN_VOICES[k % 2]
        lines.append(voiced({"id": f"a2a-{split}-{k:03d}", "source": rec["id"],
                             "conversations": chat((rec["question_text"], rec["answer_text"])),
                             "question_audios": [q_rel], "answer_audios": [answer_path(voice, rec["answer_text"])]},
                            voice, k % 4 != 0))
    return lines


def i2t_lines(split: str, work: str, rng: np.random.Generator) -> list[dict]:
    """Train: every (shape, colour) twice with random questions; val / test: 12 new pictures each."""
    combos = [(s, c) for s in SHAPES for c in COLOURS]
    picks = combos * 2 if split == "train" else [combos[int(i)] for i in rng.choice(len(combos), 12, replace=False)]
    lines = []
    for k, (shape, colour) in enumerate(picks):
        rel = os.path.join("images", split, f"{k:03d}.png")
        with open(os.path.join(work, rel), "wb") as f:
            f.write(draw_image(shape, colour, rng))
        q, a = IMAGE_QUESTIONS[int(rng.integers(len(IMAGE_QUESTIONS)))]
        lines.append({"id": f"i2t-{split}-{k:03d}", "image": rel,
                      "conversations": chat((q, a.format(shape=shape, colour=colour)))})
    return lines


def synthesize_all(work: str, lines: list[dict], jobs: int) -> None:
    """Every answer / reference wav the manifests name, at 24 kHz."""
    voices = {v.slug: v for v in (*SEEN_VOICES, UNSEEN_VOICE)}
    todo = {}
    for line in lines:
        texts = [m["content"] for m in line["conversations"] if m["role"] == "assistant"]
        for rel, text in zip(line.get("answer_audios", []), texts):
            todo[rel] = (voices[rel.split(os.sep)[1]], text)
        if "ref_audio" in line:
            slug = os.path.splitext(os.path.basename(line["ref_audio"]))[0]
            todo[line["ref_audio"]] = (voices[slug], REFERENCE_TEXT)
    for rel in todo:
        os.makedirs(os.path.dirname(os.path.join(work, rel)), exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda kv: synthesize(kv[1][0], kv[1][1], os.path.join(work, kv[0]), ANSWER_SR),
                      todo.items()))


def tokenizer_corpus(items) -> list[str]:
    words = ["system", "user", "assistant", "\n", REFERENCE_TEXT, *Augment().system_prompts,
             *(q.replace("<image>", "") for q, _ in IMAGE_QUESTIONS), *SHAPES, *COLOURS, "a picture"]
    return [it.question for it in items] + [it.answer for it in items] + words * 3


def write_readme(out: str, stats: dict, elapsed: float) -> None:
    lines = [
        "# Bundled MiniMind-O sample (released parquet schema)",
        "",
        "Generated by `python -m data.minimind_o.make_sample` (offline TTS + `python -m data.minimind_o.prepare`);",
        "do not edit by hand. Schema: `data/minimind_o/schema.py` (the released sft_t2a / sft_a2a / sft_i2t columns).",
        "",
        "- **t2a**: template questions (data/mini_omni/make_sample.py) as text; answers spoken by an assistant voice",
        f"  (seen: {', '.join(f'`{v.id}`' for v in SEEN_VOICES)}; val/test also `{UNSEEN_VOICE.id}`, never in train).",
        f"  Most rows carry `ref_audios` (Mimi codes of the voice reading \"{REFERENCE_TEXT}\") and `spk_emb`;",
        f"  rows without them speak in the default voice `{DEFAULT_VOICE.id}`. Some train rows are 2-turn chats.",
        "- **a2a**: spoken questions of the Mini-Omni sample (`data/sample`, user voices; FLAC 16 kHz) in",
        "  `question_audios`, answered with speech as in t2a.",
        "- **i2t**: generated 96 px pictures (a coloured shape on a light background) with `<image>` questions and",
        "  text answers (no answer audio, as released).",
        "- **Mimi codes come from a random-weight Mimi of the real architecture** (`load_mimi(arch=\"mimi\", seed=0)`):",
        "  frame rate, lengths and layout are real, the codes are not speech. Re-run with `--codec /path/to/mimi` for",
        "  real codes. `spk_emb` = resemblyzer GE2E embeddings (256-d, unit norm; the release uses 192-d CAM++).",
        "",
        "| split | rows | t2a | a2a | i2t | size (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for split, s in stats.items():
        lines.append(f"| {split} | {s['rows']} | {s['t2a']} | {s['a2a']} | {s['i2t']} | {s['bytes'] / 1e6:.2f} |")
    lines += [
        "",
        "## Regenerate",
        "",
        "```bash",
        "sudo apt-get install espeak-ng flite sox",
        "python -m data.minimind_o.make_sample   # rewrites data/sample_minimind/ and omni/minimind_o/assets/tiny_tokenizer/",
        "```",
        "",
        f"Takes about {elapsed:.0f} s on a 2-core CPU. The tokenizer is a byte-level BPE with exactly {TOKENIZER_VOCAB}",
        "entries whose first 27 are MiniMind's special ids (`<|im_start|>` = 1, `<|audio_pad|>` = 16, ...).",
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def split_stats(folder: str) -> dict:
    table = pq.read_table(folder, columns=["id"])
    ids = table.column("id").to_pylist()
    size = sum(os.path.getsize(os.path.join(folder, p)) for p in os.listdir(folder))
    return {"rows": len(ids), "bytes": size, **{t: sum(i.startswith(t) for i in ids) for t in ("t2a", "a2a", "i2t")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.minimind_o.make_sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--tokenizer-out", default=DEFAULT_TOKENIZER_OUT)
    p.add_argument("--codec", default=None, help="local Mimi folder; default random weights of the real arch")
    p.add_argument("--speaker-model", default=None, help="local x-vector folder; default resemblyzer")
    p.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--keep-work", default=None, help="keep wavs, images and manifests in this folder")
    args = p.parse_args(argv)
    start, items = time.time(), qa_items()
    work = args.keep_work or tempfile.mkdtemp(prefix="minimind_sample_")
    stats = {}
    try:
        manifests = {}
        for split in ("train", "val", "test"):
            rng = np.random.default_rng(["train", "val", "test"].index(split))
            for sub in ("questions", "images"):
                os.makedirs(os.path.join(work, sub, split), exist_ok=True)
            manifests[split] = t2a_lines(split, items, rng) + a2a_lines(split, work, rng) + i2t_lines(split, work, rng)
        synthesize_all(work, [x for lines in manifests.values() for x in lines], args.jobs)
        print(f"[make_sample] synthesized audio in {time.time() - start:.1f} s", file=sys.stderr)
        for split, lines in manifests.items():
            path = os.path.join(work, f"{split}.jsonl")
            with open(path, "w") as f:
                f.writelines(json.dumps(x) + "\n" for x in lines)
            out = os.path.join(args.out, split)
            prepare_manifest(path, work, out, codec=args.codec, codec_arch="mimi", codec_seed=0,
                             speaker_model=args.speaker_model, shard_rows=1000, row_group_rows=32, strict=True)
            os.remove(os.path.join(out, "skipped.json"))  # strict: nothing skipped; temp paths differ per run
            stats[split] = split_stats(out)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    texts = [m["content"] for lines in manifests.values() for x in lines for m in x["conversations"]]
    n_vocab = train_tokenizer(tokenizer_corpus(items) + texts, args.tokenizer_out, TOKENIZER_VOCAB, special_tokens())
    elapsed = time.time() - start
    write_readme(args.out, stats, elapsed)
    print(json.dumps({"elapsed_s": round(elapsed, 1), "tokenizer_len": n_vocab, **stats}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
