"""Lightning callbacks that measure the speech a model generates during training.

`SpeechSetCallback` generates speech for a fixed small set (the first `max_examples` rows of `split` for `task`)
every `every_n_epochs` validation epochs, through the family's SpeechSample producer (callbacks/speech/sample.py),
once per epoch however many scorers use it. Each scorer is its own optional callback and finds the set in
`trainer.callbacks`:

- `IntelligibilityCallback`: ASR of the speech vs the model's own text and vs the reference (val/speech/asr_*);
- `SpeakerSimilarityCallback`: cosine to the reference voice, overall, seen/unseen, per speaker (val/speech/sim*);
- `SpeechQualityCallback`: DNSMOS (or a local UTMOS) means (val/speech/mos*);
- `SpeechSamplesCallback`: a wandb.Table (prompt, generated text, reference, wandb.Audio, every score) and the
  same under the run directory (`speech_samples/epoch<E>/*.wav` + `samples.jsonl`).

Everything runs on global rank 0 only (other ranks skip); scorers load on first use and are released at the end
of each validation run."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from callbacks.speech import build_asr, build_quality, build_speaker_encoder, speech_producer
from callbacks.speech.sample import SpeechSample, split_speakers
from callbacks.speech.scoring import Rows, intelligibility, quality, speaker_similarity, text_scores

log = logging.getLogger(__name__)
PREFIX = "val/speech"


class SpeechSetCallback(Callback):
    def __init__(self, task: str = "a1a2", max_examples: int = 8, every_n_epochs: int = 1, split: str = "val",
                 max_new_tokens: int = 256, producer: dict | None = None) -> None:
        if max_examples < 1 or every_n_epochs < 1:
            raise ValueError(f"speech_set: max_examples ({max_examples}) and every_n_epochs ({every_n_epochs}) "
                             f"must be >= 1")
        self.task, self.max_examples, self.every_n_epochs = task, max_examples, every_n_epochs
        self.split, self.max_new_tokens = split, max_new_tokens
        self.producer_options = dict(producer or {})
        self.samples: list[SpeechSample] = []
        self.rows: Rows = {}
        self.text_metrics: dict[str, float] = {}
        self.key: tuple[int, int] | None = None  # (epoch, global step) the samples were generated at
        self._train_speakers: set[str] | None = None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Generates the set (if no scorer did yet) and logs the CER/WER of the text spoken alongside it."""
        if self.due(trainer):
            self.get(trainer, pl_module)
            for name, value in self.text_metrics.items():
                pl_module.log(f"{PREFIX}/{name}", float(value), rank_zero_only=True, sync_dist=False)

    def due(self, trainer: Trainer) -> bool:
        return (not trainer.sanity_checking and trainer.is_global_zero
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0)

    @torch.no_grad()
    def get(self, trainer: Trainer, pl_module: LightningModule) -> list[SpeechSample]:
        """This validation run's samples, generated on its first call (greedy decoding)."""
        if self.key == self.current_key(trainer):
            return self.samples
        if not hasattr(trainer.datamodule, "examples"):
            raise ValueError("speech callbacks need a datamodule with `examples(split, task, n)` (the fixed set)")
        examples = trainer.datamodule.examples(self.split, self.task, self.max_examples)
        producer = speech_producer(pl_module.inference(), **self.producer_options)
        sampling = {"temperature": 0.0, "top_k": 1, "max_new_tokens": self.max_new_tokens}  # greedy
        was_training = pl_module.training
        pl_module.eval()
        try:
            self.samples = list(producer.speech_samples(examples, self.task, sampling))
        finally:
            pl_module.train(was_training)
            if hasattr(producer, "release"):
                producer.release()
        self.text_metrics, self.rows = text_scores(self.samples)
        self.key = self.current_key(trainer)
        return self.samples

    @staticmethod
    def current_key(trainer: Trainer) -> tuple[int, int]:
        return trainer.current_epoch, trainer.global_step

    def add_rows(self, rows: Rows) -> None:
        for key, row in rows.items():
            self.rows.setdefault(key, {}).update(row)

    def train_speakers(self, trainer: Trainer) -> set[str]:
        """Speaker ids of the train split (decides seen / unseen when a producer leaves it open)."""
        if self._train_speakers is None:
            paths = getattr(trainer.datamodule, "paths", {}) or {}
            self._train_speakers = split_speakers(paths.get("train"))
        return self._train_speakers


def find_speech_set(trainer: Trainer) -> SpeechSetCallback:
    for cb in trainer.callbacks:
        if isinstance(cb, SpeechSetCallback):
            return cb
    raise ValueError("speech callbacks need `callbacks.speech_set` (callbacks.speech_eval.SpeechSetCallback): "
                     "use `callbacks=speech_eval` or add it to your callbacks config")


class _SpeechScorerCallback(Callback):
    """Scores the speech set at the end of a due validation epoch and logs `val/speech/<name>`."""

    def __init__(self) -> None:
        self.scorer: Any = None
        self.last: dict[str, float] = {}

    def score(self, speech_set: SpeechSetCallback, trainer: Trainer) -> tuple[dict[str, float], Rows]:
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        speech_set = find_speech_set(trainer)
        if not speech_set.due(trainer):
            return
        speech_set.get(trainer, pl_module)
        metrics, rows = self.score(speech_set, trainer)
        speech_set.add_rows(rows)
        self.last = metrics
        for name, value in metrics.items():
            pl_module.log(f"{PREFIX}/{name}", float(value), rank_zero_only=True, sync_dist=False)
        shown = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if not k.endswith("_n"))
        print(f"[speech] epoch {trainer.current_epoch} {type(self).__name__}: {shown}")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.scorer is not None:
            self.scorer.release()


class IntelligibilityCallback(_SpeechScorerCallback):
    def __init__(self, asr: dict | None = None) -> None:
        super().__init__()
        self.scorer = build_asr(**(asr or {}))

    def score(self, speech_set, trainer):
        return intelligibility(speech_set.samples, self.scorer)


class SpeakerSimilarityCallback(_SpeechScorerCallback):
    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.scorer = build_speaker_encoder(path)

    def score(self, speech_set, trainer):
        metrics, rows = speaker_similarity(speech_set.samples, self.scorer, speech_set.train_speakers(trainer))
        return metrics, rows


class SpeechQualityCallback(_SpeechScorerCallback):
    def __init__(self, path: str | None = None, sample_rate: int = 16000) -> None:
        super().__init__()
        self.scorer = build_quality(path, sample_rate)

    def score(self, speech_set, trainer):
        return quality(speech_set.samples, self.scorer)


class SpeechSamplesCallback(Callback):
    """Logs the speech set with every score gathered this epoch (runs after all scorers: on_validation_end)."""

    def __init__(self, out_dir: str | None = None, key: str = f"{PREFIX}/samples") -> None:
        self.out_dir, self.key = out_dir, key

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        speech_set = find_speech_set(trainer)
        if not speech_set.due(trainer) or speech_set.key != speech_set.current_key(trainer):
            return
        folder = Path(self.out_dir or Path(trainer.default_root_dir) / "speech_samples") / \
            f"epoch{trainer.current_epoch:03d}"
        records = write_samples(speech_set.samples, speech_set.rows, folder)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                log_wandb_table(logger, self.key, speech_set.samples, records, trainer.global_step)
        print(f"[speech] epoch {trainer.current_epoch}: {len(records)} samples -> {folder}")


def write_samples(samples: list[SpeechSample], rows: Rows, folder: Path) -> list[dict]:
    """<folder>/<id>.wav (+ <id>.ref.wav) and samples.jsonl (one record per sample with every score)."""
    from data.audio import write_wav

    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for s in samples:
        rec = {"id": s.id, "task": s.task, "prompt": s.prompt, "text": s.text, "reference": s.reference_text,
               "speaker": s.speaker, "seen": s.seen, "duration_s": round(s.duration_s, 3),
               **{k: v for k, v in s.extra.items() if isinstance(v, (str, int, float, bool, type(None)))},
               **rows.get(s.id, {})}
        if s.audio is not None:
            rec["wav"] = str(folder / f"{_safe(s.id)}.wav")
            write_wav(rec["wav"], s.audio, s.sample_rate)
        if s.reference_audio is not None:
            rec["reference_wav"] = str(folder / f"{_safe(s.id)}.ref.wav")
            write_wav(rec["reference_wav"], s.reference_audio, s.reference_sample_rate)
        records.append(rec)
    with open(folder / "samples.jsonl", "w") as f:
        for rec in records:
            f.write(json.dumps(rec, default=str) + "\n")
    return records


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def log_wandb_table(logger: Any, key: str, samples: list[SpeechSample], records: list[dict], step: int) -> None:
    import wandb

    scores = sorted({k for r in records for k, v in r.items() if k not in _TABLE_FIXED and
                     isinstance(v, (int, float)) and not isinstance(v, bool)})
    columns = ["id", "prompt", "text", "reference", "audio", "reference_audio", "speaker", *scores]
    data = []
    for s, rec in zip(samples, records):
        audio = wandb.Audio(s.audio, sample_rate=s.sample_rate, caption=s.text) if s.audio is not None else None
        ref = wandb.Audio(s.reference_audio, sample_rate=s.reference_sample_rate) \
            if s.reference_audio is not None else None
        data.append([s.id, s.prompt, s.text, s.reference_text, audio, ref, s.speaker or "",
                     *[rec.get(k) for k in scores]])
    # The table (with its audio) goes to a run artifact; the clips are also logged as media so that the run's own
    # files hold them (files/media/audio) even before an offline run is synced.
    clips = [wandb.Audio(s.audio, sample_rate=s.sample_rate, caption=f"{s.id}: {s.text}")
             for s in samples if s.audio is not None]
    logger.experiment.log({key: wandb.Table(columns=columns, data=data), f"{key}_audio": clips,
                           "trainer/global_step": step})


_TABLE_FIXED = {"id", "task", "prompt", "text", "reference", "speaker", "seen", "wav", "reference_wav"}
