"""Library side of `python eval.py`: rebuild the model from the checkpoint's own config (weights-only load),
generate on a split, score text with CER/WER, decode generated SNAC codes to wav files, write metrics JSON."""
from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import numpy as np

import hydra
from omegaconf import DictConfig, OmegaConf

from callbacks.metrics import error_rates
from callbacks.text_metrics import REFERENCE_FIELD
from omni.checkpoint import model_state_dict, read_checkpoint
from omni.config import configure_environment

log = logging.getLogger(__name__)


def load_for_eval(ckpt_path: str):
    """-> (model in eval mode, run config dict) from a checkpoint written by train.py."""
    ckpt = read_checkpoint(ckpt_path)
    run_cfg = ckpt.get("omni_config")
    if not run_cfg:
        raise ValueError(f"{ckpt_path}: no `omni_config` in this checkpoint; was it written by train.py?")
    model = hydra.utils.instantiate(OmegaConf.create(run_cfg["model"]))
    model.load_state_dict(model_state_dict(ckpt))
    return model.eval(), run_cfg


def build_datamodule(run_cfg: dict, cfg: DictConfig):
    data_cfg = OmegaConf.create(run_cfg["data"])
    if cfg.data_path:
        data_cfg[cfg.split] = cfg.data_path
    if not data_cfg.get(cfg.split):
        raise ValueError(f"split {cfg.split!r} has no data path in the checkpoint config; set data_path=...")
    return hydra.utils.instantiate(data_cfg)


def speak(infer, example: dict, task: str, sampling, codec, cfg: DictConfig, wav_path: Path) -> dict:
    """Stream one spoken answer (chunks of `cfg.stream_stride` frames), write it as a wav, time the first chunk."""
    from data.audio import write_wav
    from data.codec import codec_sample_rate, decode_frames

    text, chunks, n_frames, first = "", [], 0, None
    t0 = time.perf_counter()
    for event in infer.stream(example, task, sampling, partial(decode_frames, codec), cfg.stream_stride,
                              cfg.batch_parallel):
        text += event.text
        if event.audio is not None:
            first = first if first is not None else time.perf_counter() - t0
            chunks.append(event.audio)
            n_frames += int(event.frames.shape[0])
    row = {"hypothesis": text.strip(), "n_frames": n_frames, "first_chunk_s": first}
    if chunks:
        write_wav(wav_path, np.concatenate(chunks), codec_sample_rate(codec))
        row["wav"] = str(wav_path)
    return row


def evaluate(cfg: DictConfig) -> dict:
    from data.codec import load_codec
    from omni.families import load_tokenizer, make_inference
    from omni.mini_omni.layout import task_spec
    from omni.mini_omni.generate import SamplingConfig

    configure_environment()
    unknown = sorted(set(cfg.tasks) - set(REFERENCE_FIELD))
    if unknown:
        raise ValueError(f"eval tasks {unknown} are not evaluable; valid: {sorted(REFERENCE_FIELD)}")
    model, run_cfg = load_for_eval(cfg.ckpt)
    infer = make_inference(model, load_tokenizer(model.cfg.tokenizer_path))
    datamodule = build_datamodule(run_cfg, cfg)
    sampling = SamplingConfig(**cfg.sampling)
    out_dir = Path(cfg.out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    codec = None
    results, rows = {}, []
    for task in cfg.tasks:
        examples = datamodule.examples(cfg.split, task, cfg.max_examples)
        refs, hyps, t0 = [], [], time.perf_counter()
        for ex in examples:
            row = {"task": task, "id": ex["id"], "speaker": ex.get("speaker"), "reference": ex[REFERENCE_FIELD[task]]}
            if task_spec(task).audio_out:
                codec = codec or load_codec(cfg.codec.path, arch=cfg.codec.arch, seed=cfg.codec.seed)
                row.update(speak(infer, ex, task, sampling, codec, cfg, out_dir / "wav" / f"{task}-{ex['id']}.wav"))
            else:
                row["hypothesis"] = infer.answer(ex, task, sampling, batch_parallel=cfg.batch_parallel).text
            rows.append(row)
            refs.append(row["reference"] or "")
            hyps.append(row["hypothesis"])
        rates = error_rates(refs, hyps) if examples else {"cer": float("nan"), "wer": float("nan"), "n": 0}
        rates["seconds"] = round(time.perf_counter() - t0, 2)
        results[task] = rates
        log.info("%s: %s", task, rates)
        print(f"[eval] {task}: CER {rates['cer']:.3f} WER {rates['wer']:.3f} over {rates['n']} rows")
    report = {"ckpt": str(cfg.ckpt), "split": cfg.split, "tasks": results,
              "sampling": OmegaConf.to_container(cfg.sampling)}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1))
    with open(out_dir / "transcripts.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"[eval] wrote {out_dir / 'metrics.json'}")
    return report
