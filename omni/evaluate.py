"""Library side of `python eval.py`: rebuild the model from the checkpoint's own config (weights-only load),
generate on a split (every row unless `max_examples`), and measure it:

- text tasks: CER/WER of the generated text vs the reference, overall and per reference-length bucket;
- speaking tasks: the family's SpeechSample producer (callbacks/speech/sample.py) streams the speech, written as
  wav files; intelligibility (ASR CER/WER vs the model's own text and vs the reference), speaker similarity (per
  speaker, seen / unseen) and quality (MOS) by the offline scorers configured under `speech` (null skips one).

Writes metrics.json, transcripts.jsonl (one row per example with its scores), wav/, report.md and plots/*.png."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from callbacks.metrics import bucketed_error_rates, error_rates
from omni.checkpoint import load_for_eval  # noqa: F401 - this module's API since eval.py's first version
from omni.config import configure_environment

log = logging.getLogger(__name__)


def build_datamodule(run_cfg: dict, cfg: DictConfig):
    """The checkpoint's DataModule (an allow-listed class, omni.families.instantiate_stored), `data_path` applied."""
    from omni.families import instantiate_stored

    data_cfg = dict(run_cfg.get("data") or {})
    if cfg.data_path:
        data_cfg[cfg.split] = str(cfg.data_path)
    if not data_cfg.get(cfg.split):
        raise ValueError(f"split {cfg.split!r} has no data path in the checkpoint config; set data_path=...")
    return instantiate_stored(run_cfg, "data", cfg.ckpt, node=data_cfg)


def evaluate(cfg: DictConfig) -> dict:
    """Generate on `cfg.split` and write the measurements (see the module docstring); returns metrics.json's dict."""
    from callbacks.speech import speech_producer
    from callbacks.speech.report import write_report
    from callbacks.speech.sample import split_speakers
    from callbacks.speech.scoring import score_speech
    from omni.families import eval_mode, eval_modes, eval_tasks, family_of, load_tokenizer, make_inference
    from omni.families import sampling_config

    configure_environment()
    mode = cfg.get("mode", "split")
    if eval_mode(mode) is not None:  # a family's own mode (Mini-Omni3: session, a recording replayed live)
        return eval_mode(mode)(cfg)
    if mode == "demo":  # serve the checkpoint family's web page (omni/demo.py)
        from omni.demo import serve

        return serve(cfg)
    if mode != "split":
        raise ValueError(f"eval mode={cfg.mode!r}; valid: {['split', *eval_modes(), 'demo']}")
    scorers = build_scorers(cfg.get("speech"))
    model, run_cfg = load_for_eval(cfg.ckpt)
    infer = make_inference(model, load_tokenizer(model.cfg.tokenizer_path))
    speaks = eval_tasks(infer)  # {task: spoken answer} of this checkpoint's family
    unknown = [task for task in cfg.tasks if task not in speaks]
    if unknown:
        raise ValueError(f"eval tasks {unknown} are not tasks of this {type(model).__name__} checkpoint; valid: "
                         f"{sorted(speaks)} (e.g. tasks=[{','.join(sorted(speaks))}])")
    datamodule = build_datamodule(run_cfg, cfg)
    sampling = sampling_config(model, OmegaConf.to_container(cfg.sampling))
    reference_field = family_of(model).reference_field
    out_dir = Path(cfg.out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    limit = int(cfg.max_examples) if cfg.get("max_examples") else sys.maxsize
    producer, train_speakers = None, None
    results, rows = {}, []
    for task in cfg.tasks:
        examples = datamodule.examples(cfg.split, task, limit)
        t0 = time.perf_counter()
        if speaks[task]:
            codec = {"codec_path": cfg.codec.path, "codec_arch": cfg.codec.arch, "codec_seed": cfg.codec.seed}
            producer = producer or speech_producer(  # codec.arch null: the family's default codec
                infer, **{k: v for k, v in codec.items() if v is not None}, stride=cfg.stream_stride,
                batch_parallel=cfg.batch_parallel)
            samples = list(producer.speech_samples(examples, task, sampling))
            generated = time.perf_counter() - t0
            if train_speakers is None and any(s.seen is None for s in samples):  # producers may decide `seen`
                train_speakers = split_speakers(run_cfg["data"].get("train"))
            speech, per_sample = score_speech(samples, train_speakers=train_speakers, **scorers)
            task_rows = [speech_row(s, per_sample.get(s.id, {}), out_dir / "wav" / f"{task}-{s.id}.wav")
                         for s in samples]
        else:
            speech, generated = None, None
            task_rows = [{"task": task, "id": ex["id"], "speaker": ex.get("speaker"),
                          "reference": ex[reference_field[task]] or "",
                          "hypothesis": infer.answer(ex, task, sampling, batch_parallel=cfg.batch_parallel).text}
                         for ex in examples]
        refs, hyps = [r["reference"] for r in task_rows], [r["hypothesis"] for r in task_rows]
        rates = error_rates(refs, hyps) if task_rows else {"cer": float("nan"), "wer": float("nan"), "n": 0}
        rates["buckets"] = bucketed_error_rates(refs, hyps)
        rates["seconds"] = round(time.perf_counter() - t0, 2)
        if speech is not None:
            rates["speech"] = {k: v for k, v in speech.items() if not k.startswith("text_")}
            rates["generate_seconds"] = round(generated, 2)
        results[task] = rates
        rows += task_rows
        log.info("%s: %s", task, rates)
        print(f"[eval] {task}: CER {rates['cer']:.3f} WER {rates['wer']:.3f} over {rates['n']} rows" +
              ("".join(f", {k} {speech[k]:.3f}" for k in ("asr_cer_text", "asr_cer_ref", "sim", "mos")
                       if speech and k in speech)))
    for scorer in scorers.values():
        if scorer is not None:
            scorer.release()
    if producer is not None and hasattr(producer, "release"):
        producer.release()
    report = {"ckpt": str(cfg.ckpt), "split": cfg.split, "tasks": results,
              "sampling": OmegaConf.to_container(cfg.sampling),
              "scorers": {k: getattr(v, "name", None) for k, v in scorers.items()}}
    (out_dir / "metrics.json").write_text(json.dumps(_json_safe(report), indent=1))
    with open(out_dir / "transcripts.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(_json_safe(row), default=str) + "\n")
    if cfg.get("report", True):
        print(f"[eval] wrote {write_report(report, rows, out_dir)}")
    print(f"[eval] wrote {out_dir / 'metrics.json'}")
    return report


def _json_safe(obj):
    """NaN (an undefined rate, e.g. CER against an empty text) -> null, so the files are strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def build_scorers(speech: DictConfig | None) -> dict:
    """{asr, speaker, predictor} from the `speech` config (a null entry, or speech=null, skips that scorer).
    Built here (cheap, lazy): a bad path fails before any generation."""
    from callbacks.speech import build_asr, build_quality, build_speaker_encoder

    speech = speech or {}
    unknown = sorted(set(speech) - {"asr", "speaker", "quality"})
    if unknown:
        raise ValueError(f"eval speech.{unknown[0]} is not a scorer; valid: ['asr', 'quality', 'speaker']")
    node = {k: (OmegaConf.to_container(v) if isinstance(v, DictConfig) else v) for k, v in speech.items()}
    return {"asr": build_asr(**node["asr"]) if node.get("asr") is not None else None,
            "speaker": build_speaker_encoder(**node["speaker"]) if node.get("speaker") is not None else None,
            "predictor": build_quality(**node["quality"]) if node.get("quality") is not None else None}


def speech_row(sample, scores: dict, wav_path: Path) -> dict:
    """One transcripts.jsonl row of a spoken answer; writes its wav."""
    from data.audio import write_wav

    row = {"task": sample.task, "id": sample.id, "speaker": sample.extra.get("input_speaker"),
           "voice": sample.speaker, "seen": sample.seen, "prompt": sample.prompt,
           "reference": sample.reference_text, "hypothesis": sample.text,
           **{k: v for k, v in sample.extra.items() if k != "input_speaker"}, **scores}
    if sample.audio is not None:
        write_wav(wav_path, sample.audio, sample.sample_rate)
        row["wav"] = str(wav_path)
    return row
