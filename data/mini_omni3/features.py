"""Precompute chunk-wise tower features into streaming shards (the released fine-tuning reads features, not audio).

Each row's audio -> log-mel -> the frozen audio tower -> `features` (float16) and `feature_dim`: online rows one
whole-stream log-mel sliced per chunk, one tower audio per chunk (n_chunks * 10 * E); offline rows one whole-clip
log-mel (<= 20 s) and ONE tower call (clip_frames * E, as the release); the other columns are copied (audio
too unless --drop-audio). Training then skips the tower: the collator passes `audio_features` /
`clip_features` and the model only applies its projection (if any). Features belong to the tower
that made them: recompute after changing or training the tower.

    python -m data.mini_omni3.features --model-config conf/model/mini_omni3.yaml \
        --encoder-config /models/mini-omni3/qwen25OmniConfig \
        --encoder-weights /models/mini-omni3/MiniOmni3_ChunkwisedEncoder.pth \
        --input data/my_sessions/train --out data/my_sessions_feats/train
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from data.audio import AudioDecodeError, decode_audio
from data.dataset import expand_paths
from data.mini_omni3.schema import SCHEMA, validate_schema
from omni.mini_omni3.encoder import (
    CHUNK_SAMPLES, OFFLINE_MAX_SAMPLES, SAMPLE_RATE, ChunkwiseAudioEncoder, LogMel, audio_config, load_tower_weights,
    pad_to_chunks,
)


@torch.no_grad()
def row_features(encoder: ChunkwiseAudioEncoder, mel: LogMel, rec: dict[str, Any], where: str,
                 batch_chunks: int = 256) -> np.ndarray:
    """Float16 features of one row's audio, flat: online (n_chunks * 10 * E,), offline (clip_frames * E,);
    errors name the row and column."""
    if not rec.get("audio"):
        raise ValueError(f"{where}, column 'audio': no audio to encode")
    try:
        raw = decode_audio(rec["audio"], SAMPLE_RATE)
    except AudioDecodeError as exc:
        raise ValueError(f"{where}, column 'audio': {exc}") from exc
    wav = pad_to_chunks(raw)
    n = len(wav) // CHUNK_SAMPLES
    if n != int(rec["n_chunks"]):
        raise ValueError(f"{where}, column 'n_chunks': the audio has {n} chunks but n_chunks is {rec['n_chunks']}")
    device = next(encoder.parameters()).device
    if rec["mode"] == "offline":
        clip = mel.clip(raw[:OFFLINE_MAX_SAMPLES])
        feats = encoder.encode_clip(clip.to(device), [clip.shape[-1]]).float().cpu()
        return feats.numpy().astype(np.float16).reshape(-1)
    mels = mel.stream(wav)
    out = [encoder(mels[i: i + batch_chunks].to(device)).float().cpu() for i in range(0, len(mels), batch_chunks)]
    feats = torch.cat(out) if out else torch.zeros(0)
    return feats.numpy().astype(np.float16).reshape(-1)


def precompute(inputs: Any, out_dir: str, encoder: ChunkwiseAudioEncoder, n_mels: int, drop_audio: bool = False,
               row_group_rows: int = 16) -> list[str]:
    """Write one output shard per input shard (same file names) with `features` / `feature_dim` filled."""
    encoder.eval()
    mel = LogMel(n_mels)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path in expand_paths(inputs):
        pf = pq.ParquetFile(path)
        validate_schema(pf.schema_arrow, path)
        target = os.path.join(out_dir, os.path.basename(path))
        with pq.ParquetWriter(target, SCHEMA, compression="zstd") as writer:
            row_base = 0
            for g in range(pf.num_row_groups):
                recs = pf.read_row_group(g).to_pylist()
                for r, rec in enumerate(recs):
                    if int(rec["n_chunks"]) > 0:
                        rec["features"] = row_features(encoder, mel, rec, f"{path}: row {row_base + r} "
                                                                          f"(id={rec['id']!r})")
                        rec["feature_dim"] = encoder.output_dim
                    if drop_audio:
                        rec["audio"] = None
                rows = [{k: rec.get(k) for k in SCHEMA.names} for rec in recs]
                writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), row_group_size=row_group_rows)
                row_base += len(recs)
        written.append(target)
    return written


def encoder_from_args(args: argparse.Namespace) -> tuple[ChunkwiseAudioEncoder, int]:
    raw: dict[str, Any] = {}
    if args.model_config:
        from omni.mini_omni3.model import config_from_yaml

        raw = config_from_yaml(args.model_config).encoder
    cfg = audio_config(raw, args.encoder_config)
    encoder = ChunkwiseAudioEncoder(cfg)
    if args.encoder_weights:
        load_tower_weights(encoder, args.encoder_weights)
    else:
        print("[features] no --encoder-weights: using a RANDOM tower (tests / smoke runs only)", file=sys.stderr)
    return encoder, int(cfg.num_mel_bins)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.mini_omni3.features", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, nargs="+", help="streaming parquet files or folders")
    p.add_argument("--out", required=True)
    p.add_argument("--model-config", default=None, help="conf/model/*.yaml whose `encoder` settings to use")
    p.add_argument("--encoder-config", default=None, help="released audio config (qwen25OmniConfig folder / json)")
    p.add_argument("--encoder-weights", default=None, help="tower weights .pth (weights only)")
    p.add_argument("--drop-audio", action="store_true", help="leave the audio column empty in the output")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    encoder, n_mels = encoder_from_args(args)
    written = precompute(args.input, args.out, encoder.to(args.device), n_mels, args.drop_audio)
    print(f"[features] wrote {len(written)} shard(s) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
