"""Regenerate the bundled Mini-Omni2 image sample (data/sample_vision/): drawn shapes, spoken questions, answers.

Images are drawn with Pillow (a filled circle, square or triangle in one of six colours on a light background,
two jittered variants per pair); questions are spoken by the same offline TTS voices as data/sample (train voices
for train, held-out voices for val / test); answers are spoken once by the assistant voice and encoded to SNAC
codes by `python -m data.mini_omni.prepare manifest` (the user data path, with its `image` manifest field). As in
data/sample, the codes come from a RANDOM-weight SNAC 24 kHz (seed 0) unless `--codec` points at real weights.

Rows: per image, one caption row (image + answer text; task `caption`) and spoken QA rows (image + question
audio + answer text + answer codes; they serve `image_a1t2` and `image_a1a2`). Train uses variant 0 of every
(shape, colour) pair, val and test use variant 1 with held-out voices (val: even pairs, test: odd pairs).

    python -m data.mini_omni.make_vision_sample            # writes data/sample_vision/{train,val,test}
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from data.mini_omni.make_sample import (ANSWER_SR, ASSISTANT_VOICE, REPO, TEST_VOICES, TRAIN_VOICES, VAL_VOICES, Voice,
                              _slug, synthesize)
from data.mini_omni.prepare import prepare_manifest

DEFAULT_OUT = os.path.join(REPO, "data", "sample_vision")
SIZE = 224
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220), "yellow": (235, 210, 20),
           "black": (15, 15, 15), "purple": (130, 40, 170)}
QUESTIONS = {  # question -> answer template over (colour, shape)
    "what colour is the shape": "{colour}",
    "what shape is in the picture": "a {shape}",
    "what do you see": "a {colour} {shape}",
}


def draw(shape: str, colour: str, variant: int, path: str) -> None:
    """A SIZE x SIZE PNG of one filled shape; `variant` seeds its size, position and background tint."""
    from PIL import Image, ImageDraw

    rng = random.Random(f"{shape}-{colour}-{variant}")
    bg = tuple(rng.randint(225, 255) for _ in range(3))
    img = Image.new("RGB", (SIZE, SIZE), bg)
    half = rng.randint(45, 80)
    cx, cy = rng.randint(half + 5, SIZE - half - 5), rng.randint(half + 5, SIZE - half - 5)
    box = (cx - half, cy - half, cx + half, cy + half)
    pen = ImageDraw.Draw(img)
    if shape == "circle":
        pen.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        pen.rectangle(box, fill=COLOURS[colour])
    else:
        pen.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=COLOURS[colour])
    img.save(path, format="PNG", optimize=True)


def build_manifests(work: str, jobs: int) -> dict[str, str]:
    """Draw images, synthesize questions / answers under `work`; write WORK/{split}.jsonl. Returns the paths."""
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    speech: dict[str, tuple[Voice, str, int | None]] = {}
    rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    os.makedirs(os.path.join(work, "images"), exist_ok=True)
    for p, (shape, colour) in enumerate(pairs):
        for variant in (0, 1):
            split = "train" if variant == 0 else ("val" if p % 2 == 0 else "test")
            image = os.path.join("images", f"{shape}_{colour}_{variant}.png")
            draw(shape, colour, variant, os.path.join(work, image))
            caption = f"a {colour} {shape} on a light background"
            rows[split].append(dict(id=f"{split}-{shape}-{colour}-caption", task="caption", image=image,
                                    answer_text=caption, source="omni-train vision sample (caption)"))
            if split == "train":
                asked = [(q, TRAIN_VOICES[(p + k) % len(TRAIN_VOICES)]) for k, q in enumerate(QUESTIONS)]
            else:
                voices = VAL_VOICES if split == "val" else TEST_VOICES
                q = list(QUESTIONS)[p % len(QUESTIONS)]
                asked = [(q, voices[(p // 2) % len(voices)])]
            for q, voice in asked:
                answer = QUESTIONS[q].format(colour=colour, shape=shape)
                q_rel = os.path.join("questions", voice.slug, f"{_slug(q)}.wav")
                a_rel = os.path.join("answers", f"{_slug(answer)}.wav")
                speech[q_rel] = (voice, q, None)
                speech[a_rel] = (ASSISTANT_VOICE, answer, ANSWER_SR)
                rows[split].append(dict(
                    id=f"{split}-{shape}-{colour}-{_slug(q)}-{voice.slug}", image=image, question_text=q,
                    question_audio=q_rel, answer_text=answer, answer_audio=a_rel, speaker=voice.id,
                    source=f"omni-train vision sample (qa; tts {voice.engine})"))
    for rel in speech:
        os.makedirs(os.path.dirname(os.path.join(work, rel)), exist_ok=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda kv: synthesize(kv[1][0], kv[1][1], os.path.join(work, kv[0]), kv[1][2]),
                      speech.items()))
    manifests = {}
    for split, lines in rows.items():
        manifests[split] = os.path.join(work, f"{split}.jsonl")
        with open(manifests[split], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in lines)
    return manifests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--codec", default=None, help="local SNAC 24 kHz folder (default: random weights, seed 0)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    start = time.time()
    work = tempfile.mkdtemp(prefix="omni_vision_sample_")
    try:
        manifests = build_manifests(work, args.jobs)
        summary = {}
        for split, manifest in manifests.items():
            report = prepare_manifest(manifest, work, os.path.join(args.out, split), codec=args.codec,
                                      codec_arch="snac_24khz", codec_seed=0, shard_rows=1000, row_group_rows=32,
                                      strict=True)
            os.remove(os.path.join(args.out, split, "skipped.json"))
            summary[split] = report.n_written
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"elapsed_s": round(time.time() - start, 1), "rows": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
