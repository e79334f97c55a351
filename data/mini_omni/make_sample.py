"""Regenerate the bundled sample data set (data/sample/) and the tiny tokenizer (omni/assets/tiny_tokenizer/).

A small, real spoken QA set built with offline TTS (espeak-ng, flite, festival; apt packages):
~120 template question/answer pairs with short answers (arithmetic, colours, days, months, opposites, animal
sounds, capitals, legs, counting). Each question is spoken by several "user" voices; each answer is spoken
once by one fixed "assistant" voice, resampled to 24 kHz and turned into SNAC codes by the `manifest`
subcommand of data/mini_omni/prepare.py (the same code path as user data). The bundled codes come from a RANDOM-weight
SNAC 24 kHz codec (`load_codec(arch="snac_24khz", seed=0)`, deterministic): the stream layout is real but the
codes carry no speech. Real runs re-run this script (or `python -m data.mini_omni.prepare manifest`) with
`--codec /path/to/snac_24khz` (config.json + pytorch_model.bin of hubertsiuzdak/snac_24khz).

Splits: train = train voices only; val and test = held-out voices never heard in train (different ones for
val and test), on disjoint halves of the items.

    python -m data.mini_omni.make_sample                 # writes data/sample/ and omni/assets/tiny_tokenizer/
    python -m data.mini_omni.make_sample --codec /models/snac_24khz
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from data.mini_omni.prepare import prepare_manifest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # data/mini_omni/ -> the checkout
DEFAULT_OUT = os.path.join(REPO, "data", "sample")
DEFAULT_TOKENIZER_OUT = os.path.join(REPO, "omni", "assets", "tiny_tokenizer")
TOKENIZER_VOCAB = 512
ANSWER_SR = 24000
TRAIN_VOICES_PER_ITEM = 3
TRAIN_SHARD_ROWS = 150
ROW_GROUP_ROWS = 32


@dataclass(frozen=True)
class Voice:
    """An offline TTS voice: engine in {espeak-ng, flite, festival}."""

    engine: str
    name: str

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"

    @property
    def slug(self) -> str:
        return self.id.replace(":", "_").replace("+", "_")

    def synth_cmd(self, text: str, wav_path: str) -> tuple[list[str], str | None]:
        """(command, stdin text) writing `text` spoken by this voice to `wav_path`."""
        if self.engine == "espeak-ng":
            return ["espeak-ng", "-v", self.name, "-w", wav_path, text], None
        if self.engine == "flite":
            return ["flite", "-voice", self.name, "-t", text, "-o", wav_path], None
        if self.engine == "festival":
            return ["text2wave", "-o", wav_path, "-eval", f"(voice_{self.name})"], text
        raise ValueError(f"unknown TTS engine {self.engine!r}")


ASSISTANT_VOICE = Voice("flite", "slt")
# Train voices: 4 espeak-ng (formant synthesis) + 5 recorded-speaker engines (flite diphone / clustergen, festival
# diphone / HTS), so held-out voices of either kind have relatives in training (omni/DESIGN.md #45).
TRAIN_VOICES = (
    Voice("espeak-ng", "en-us+m3"),
    Voice("espeak-ng", "en+f2"),
    Voice("festival", "ked_diphone"),
    Voice("flite", "awb"),
    Voice("espeak-ng", "en-gb+m1"),
    Voice("flite", "kal"),
    Voice("festival", "cmu_us_slt_arctic_hts"),
    Voice("espeak-ng", "en-gb-x-rp+f4"),
    Voice("flite", "slt"),
)
VAL_VOICES = (Voice("flite", "rms"), Voice("espeak-ng", "en-sc+m4"))
TEST_VOICES = (Voice("festival", "kal_diphone"), Voice("espeak-ng", "en-029+f3"))

NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
           "sixteen seventeen eighteen nineteen twenty").split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
MONTHS = ("january february march april may june july august september october november december").split()
COLOURS = [("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"), ("coal", "black"),
           ("a tomato", "red"), ("an orange", "orange"), ("a lemon", "yellow"), ("milk", "white"),
           ("a strawberry", "red")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("day", "night"),
             ("happy", "sad"), ("open", "closed"), ("old", "new"), ("left", "right"), ("wet", "dry"),
             ("light", "dark"), ("early", "late"), ("full", "empty"), ("high", "low"), ("yes", "no"),
             ("in", "out")]
ANIMAL_SOUNDS = [("a cow", "moo"), ("a dog", "woof"), ("a cat", "meow"), ("a duck", "quack"), ("a sheep", "baa"),
                 ("a pig", "oink"), ("an owl", "hoot"), ("a snake", "hiss"), ("a lion", "roar"), ("a bee", "buzz")]
CAPITALS = [("france", "paris"), ("spain", "madrid"), ("italy", "rome"), ("germany", "berlin"),
            ("japan", "tokyo"), ("egypt", "cairo"), ("russia", "moscow"), ("england", "london"),
            ("greece", "athens"), ("ireland", "dublin"), ("norway", "oslo"), ("portugal", "lisbon")]
LEGS = [("a spider", "eight"), ("a dog", "four"), ("a bird", "two"), ("an ant", "six"), ("a fish", "zero"),
        ("a horse", "four")]


@dataclass(frozen=True)
class Item:
    category: str
    question: str
    answer: str


def qa_items() -> list[Item]:
    """The fixed, ordered list of distinct question/answer pairs (124)."""
    items = [Item("plus", f"what is {NUMBERS[a]} plus {NUMBERS[b]}", NUMBERS[a + b])
             for a in range(1, 7) for b in range(1, 5)]
    items += [Item("minus", f"what is {NUMBERS[a]} minus {NUMBERS[b]}", NUMBERS[a - b])
              for a in range(6, 11) for b in (2, 3)]
    items += [Item("count", f"what number comes after {NUMBERS[n]}", NUMBERS[n + 1]) for n in range(1, 11)]
    items += [Item("days", f"what comes after {d}", DAYS[(i + 1) % 7]) for i, d in enumerate(DAYS)]
    items += [Item("days", f"what comes before {d}", DAYS[(i - 1) % 7]) for i, d in enumerate(DAYS)]
    items += [Item("months", f"which month comes after {m}", MONTHS[(i + 1) % 12]) for i, m in enumerate(MONTHS)]
    items += [Item("colours", f"what colour is {thing}", c) for thing, c in COLOURS]
    items += [Item("opposites", f"what is the opposite of {w}", o) for w, o in OPPOSITES]
    items += [Item("animals", f"what does {a} say", s) for a, s in ANIMAL_SOUNDS]
    items += [Item("capitals", f"what is the capital of {c}", cap) for c, cap in CAPITALS]
    items += [Item("legs", f"how many legs does {a} have", n) for a, n in LEGS]
    assert len({it.question for it in items}) == len(items), "questions must be distinct"
    return items


def split_assignments(items: list[Item]) -> dict[str, list[tuple[int, Voice]]]:
    """(item index, voice) pairs per split. Train: every item by 3 of the train voices (offsets 0, 1, 3);
    val: even items, test: odd items, each by one held-out voice (alternating)."""
    n_train = len(TRAIN_VOICES)
    train = [(i, TRAIN_VOICES[(i + k) % n_train]) for i in range(len(items)) for k in (0, 1, 3)]
    val = [(i, VAL_VOICES[(i // 2) % len(VAL_VOICES)]) for i in range(0, len(items), 2)]
    test = [(i, TEST_VOICES[(i // 2) % len(TEST_VOICES)]) for i in range(1, len(items), 2)]
    return {"train": train, "val": val, "test": test}


def synthesize(voice: Voice, text: str, out_path: str, rate: int | None = None) -> None:
    """Speak `text` with `voice`, trim leading/trailing silence with sox (keep 50 ms pads), optionally resample;
    sox runs without dither (-D) so reruns give identical files."""
    raw = out_path + ".raw.wav"
    cmd, stdin = voice.synth_cmd(text, raw)
    subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True)
    sox = ["sox", "-D", raw, out_path, "silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%",
           "reverse", "pad", "0.05", "0.05"]
    if rate:
        sox += ["rate", "-h", str(rate)]
    subprocess.run(sox, check=True, capture_output=True)
    os.remove(raw)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def write_manifests(work: str, items: list[Item], splits: dict[str, list[tuple[int, Voice]]], jobs: int) -> dict:
    """Synthesize all question and answer wavs under `work` and write WORK/{split}.jsonl; returns paths."""
    tasks: list[tuple[Voice, str, str, int | None]] = []
    for answer in sorted({it.answer for it in items}):
        tasks.append((ASSISTANT_VOICE, answer, os.path.join(work, "answers", f"{_slug(answer)}.wav"), ANSWER_SR))
    manifests = {}
    for split, pairs in splits.items():
        lines = []
        for i, voice in pairs:
            it = items[i]
            rel_q = os.path.join("questions", voice.slug, f"{i:03d}.wav")
            tasks.append((voice, it.question, os.path.join(work, rel_q), None))
            lines.append(dict(
                id=f"{split}-{i:03d}-{voice.slug}", question_text=it.question, question_audio=rel_q,
                answer_text=it.answer, answer_audio=os.path.join("answers", f"{_slug(it.answer)}.wav"),
                speaker=voice.id, source=f"omni-train sample ({it.category}; tts {voice.engine})",
            ))
        manifests[split] = os.path.join(work, f"{split}.jsonl")
        with open(manifests[split], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in lines)
    for _, _, path, _ in tasks:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    unique = {t[2]: t for t in tasks}.values()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda t: synthesize(t[0], t[1], t[2], t[3]), unique))
    return manifests


def train_tokenizer(texts: list[str], out_dir: str, vocab_size: int = TOKENIZER_VOCAB,
                    special_tokens: list[str] | tuple[str, ...] = ()) -> int:
    """Byte-level BPE (256-byte alphabet + merges) with exactly `vocab_size` entries, saved as a
    PreTrainedTokenizerFast in `out_dir` (loadable offline with AutoTokenizer). `special_tokens` take ids
    0..len-1 in order (a family's fixed special ids). Returns len(tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=list(special_tokens), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"BPE reached {tok.get_vocab_size()} entries, need {vocab_size}: add corpus text")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=2048)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    fast.save_pretrained(out_dir)
    return len(fast)


def tokenizer_corpus(items: list[Item]) -> list[str]:
    """All sample texts (questions and answers) plus the template vocabulary, repeated so frequent words merge
    first; the word lists make sure enough distinct merges exist to fill the 512 entries."""
    words = NUMBERS + DAYS + MONTHS + [w for pair in OPPOSITES for w in pair]
    return [it.question for it in items] + [it.answer for it in items] + [" ".join(words)]


def split_stats(out: str, split: str) -> dict:
    """Rows, shards, bytes, audio seconds and speakers of one written split."""
    folder = os.path.join(out, split)
    shards = sorted(p for p in os.listdir(folder) if p.endswith(".parquet"))
    cols = ["speaker", "duration_s", "n_frames"]
    table = pa.concat_tables([pq.read_table(os.path.join(folder, s), columns=cols) for s in shards])
    size = sum(os.path.getsize(os.path.join(folder, p)) for p in os.listdir(folder))
    speakers = table.column("speaker").to_pylist()
    return dict(
        rows=table.num_rows, shards=len(shards), bytes=size,
        audio_s=float(sum(table.column("duration_s").to_pylist())),
        answer_frames=int(sum(table.column("n_frames").to_pylist())),
        speakers={s: speakers.count(s) for s in sorted(set(speakers))},
    )


def write_readme(out: str, stats: dict[str, dict], n_items: int, n_answers: int, elapsed: float) -> None:
    """data/sample/README.md with content, voices, row counts and sizes (numbers from the written files)."""
    lines = [
        "# Bundled sample: tiny spoken QA set",
        "",
        "Generated by `python -m data.mini_omni.make_sample` (offline TTS + `python -m data.mini_omni.prepare manifest`); do not edit",
        "by hand. Schema: see `data/mini_omni/schema.py`. Rows have `task` = null, so each serves every task its fields",
        "allow: asr, a1t2, a1a2, t1t2, t1a2, tts.",
        "",
        f"- {n_items} distinct template question/answer pairs with short answers (arithmetic, counting, days,",
        "  months, colours, opposites, animal sounds, capitals, legs). Example: \"what is three plus four\" -> \"seven\".",
        "- `question_audio`: the question spoken by a \"user\" voice (espeak-ng / flite / festival), silence-trimmed,",
        "  stored as FLAC 16 kHz mono; `speaker` is the voice id (`engine:voice`).",
        f"- `answer_codes`: each of the {n_answers} distinct answers spoken once by the fixed assistant voice",
        f"  `{ASSISTANT_VOICE.id}`, resampled to 24 kHz and encoded as SNAC frames (7 codes per 2048 samples,",
        "  spec stream order).",
        "- **The codes come from a random-weight SNAC 24 kHz (`load_codec(arch=\"snac_24khz\", seed=0)`)**: layout and",
        "  lengths are real, the codes are not decodable speech. For real training re-run with real weights:",
        "  `python -m data.mini_omni.make_sample --codec /path/to/snac_24khz` (a local folder with config.json +",
        "  pytorch_model.bin of hubertsiuzdak/snac_24khz).",
        "",
        "## Splits",
        "",
        "| split | rows | shards | size (MB) | question audio (s) | voices (rows) |",
        "|---|---|---|---|---|---|",
    ]
    for split, s in stats.items():
        voices = ", ".join(f"`{v}` ({n})" for v, n in s["speakers"].items())
        lines.append(f"| {split} | {s['rows']} | {s['shards']} | {s['bytes'] / 1e6:.2f} | {s['audio_s']:.0f} | {voices} |")
    total = sum(s["bytes"] for s in stats.values())
    lines += [
        "",
        f"Total {total / 1e6:.2f} MB. Train: every item spoken by {TRAIN_VOICES_PER_ITEM} of the "
        f"{len(TRAIN_VOICES)} train voices, {TRAIN_SHARD_ROWS} rows per shard, row groups of {ROW_GROUP_ROWS}.",
        "Val (even items) and test (odd items) use held-out voices that never occur in train, and differ from",
        "each other, so they measure generalisation to new voices (items are shared with train, voices are not).",
        "",
        "## Regenerate",
        "",
        "```bash",
        "sudo apt-get install espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox",
        "python -m data.mini_omni.make_sample            # rewrites data/sample/ and omni/assets/tiny_tokenizer/",
        "```",
        "",
        f"Takes about {elapsed:.0f} s on a 2-core CPU. The tiny tokenizer (`omni/assets/tiny_tokenizer`) is a",
        f"byte-level BPE with exactly {TOKENIZER_VOCAB} entries (256 bytes + merges) trained on these texts.",
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.mini_omni.make_sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="sample folder (train/, val/, test/, README.md)")
    p.add_argument("--tokenizer-out", default=DEFAULT_TOKENIZER_OUT, help="tiny tokenizer folder")
    p.add_argument("--codec", default=None, help="local real SNAC 24 kHz folder; default random weights, seed 0")
    p.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 1), help="parallel TTS processes")
    p.add_argument("--keep-work", default=None, help="keep the wavs and manifests in this folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.time()
    items = qa_items()
    splits = split_assignments(items)
    work = args.keep_work or tempfile.mkdtemp(prefix="omni_sample_")
    os.makedirs(work, exist_ok=True)
    try:
        manifests = write_manifests(work, items, splits, args.jobs)
        print(f"[make_sample] synthesized audio in {time.time() - start:.1f} s", file=sys.stderr)
        for split, manifest in manifests.items():
            shard_rows = TRAIN_SHARD_ROWS if split == "train" else 1000
            prepare_manifest(manifest, work, os.path.join(args.out, split), codec=args.codec,
                             codec_arch="snac_24khz", codec_seed=0, shard_rows=shard_rows,
                             row_group_rows=ROW_GROUP_ROWS, strict=True)
            # strict=True: nothing was skipped; drop the report, whose temp paths would differ per run
            os.remove(os.path.join(args.out, split, "skipped.json"))
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    n_vocab = train_tokenizer(tokenizer_corpus(items), args.tokenizer_out)
    stats = {split: split_stats(args.out, split) for split in splits}
    elapsed = time.time() - start
    write_readme(args.out, stats, len(items), len({it.answer for it in items}), elapsed)
    print(json.dumps({"elapsed_s": round(elapsed, 1), "tokenizer_len": n_vocab, **{
        k: {"rows": v["rows"], "MB": round(v["bytes"] / 1e6, 2), "voices": len(v["speakers"])}
        for k, v in stats.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
