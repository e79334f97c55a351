"""Synthetic T2A rows of a chosen length, for throughput benchmarks only (the codes are random, not speech).

    python -m data.minimind_o.bench_data --out /tmp/mm_bench --rows 96 --min-frames 160 --max-frames 215

Each row: a sample question, a long text answer (sample answers strung together), `answer_audios` of N random
Mimi frames (N uniform in [min, max]), random `ref_audios` (20 frames) and `spk_emb`. With the tiny tokenizer the
laid-out length is about N + 30 positions, so the defaults give sequences of roughly 190-250 (<= 256).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from data.mini_omni.make_sample import qa_items
from data.minimind_o.schema import WRITE_SCHEMA
from data.prepare import ShardWriter


def bench_rows(n: int, min_frames: int, max_frames: int, spk_dim: int = 256, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = qa_items()
    rows = []
    for i in range(n):
        q = items[int(rng.integers(len(items)))].question
        answer = " ".join(items[int(j)].answer for j in rng.integers(len(items), size=40))
        frames = int(rng.integers(min_frames, max_frames + 1))
        rows.append({
            "id": f"bench-{i:04d}",
            "conversations": json.dumps([{"role": "user", "content": q}, {"role": "assistant", "content": answer}]),
            "answer_audios": [rng.integers(0, 2048, frames * 8).tolist()],
            "ref_audios": rng.integers(0, 2048, 20 * 8).tolist(),
            "spk_emb": rng.standard_normal(spk_dim).astype(np.float32).tolist(),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.minimind_o.bench_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder; writes OUT/train/shard-00000.parquet")
    p.add_argument("--rows", type=int, default=96)
    p.add_argument("--min-frames", type=int, default=160)
    p.add_argument("--max-frames", type=int, default=215)
    p.add_argument("--spk-dim", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    with ShardWriter(os.path.join(a.out, "train"), shard_rows=10_000, row_group_rows=64, schema=WRITE_SCHEMA) as w:
        for row in bench_rows(a.rows, a.min_frames, a.max_frames, a.spk_dim, a.seed):
            w.add(row)
    print(f"wrote {a.rows} rows to {os.path.join(a.out, 'train')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
