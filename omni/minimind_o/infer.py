"""MiniMind-O inference on dataset examples (eval.py, the text-metrics callback, the speech producer
`callbacks/minimind_o/speech.py`). An example is the dict of `data.minimind_o.dataset.MiniMindODataset` (no
augmentation): its prefill batch is the prompt columns of its training layout plus its features, i.e. exactly
what `generate.chat_batch` builds from the conversation and voice (tested); decoding is `generate.generate` /
`playback.stream`, unchanged.

Sampling: a MiniMind-O `SamplingConfig` is used as given; the eval / callback form ({temperature, top_k,
max_new_tokens, seed} as a dict or Mini-Omni's SamplingConfig) sets the Thinker AND the Talker to that
temperature / top-k with nucleus sampling and penalties off, so `temperature: 0` is greedy everywhere (the
released defaults sample: temperature 0.7 / top-p 0.85, audio 0.2 / top-k 50 / penalty 1.05). Extra MiniMind-O
keys (audio_temperature, frames_until, ...) in a dict override that mapping."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from typing import Any

import torch

from data.minimind_o.collate import MiniMindOCollator
from omni.minimind_o.generate import SamplingConfig, generate
from omni.minimind_o.model import MiniMindO
from omni.minimind_o.playback import StreamEvent, stream

TASKS: dict[str, bool] = {"t2a": True, "a2a": True, "i2t": False}  # task -> the answer is spoken


@dataclass
class Answer:
    text: str
    text_ids: list[int]          # sampled answer ids, `<|im_end|>` excluded
    frames: torch.Tensor | None  # (N, 8) emitted Mimi frames (specials kept), None for text-only decoding


def sampling_config(sampling: Any, speech: bool) -> SamplingConfig:
    """Eval / callback sampling settings -> MiniMind-O SamplingConfig with `speech` set (see the module doc)."""
    if isinstance(sampling, SamplingConfig):
        return replace(sampling, speech=speech)
    if is_dataclass(sampling) and not isinstance(sampling, type):
        sampling = asdict(sampling)
    if not isinstance(sampling, Mapping):
        raise TypeError(f"sampling must be a SamplingConfig, a dataclass or a mapping, got {type(sampling).__name__}")
    if float(sampling.get("ctc_weight", 0.0)) > 0:
        raise ValueError("sampling.ctc_weight (joint CTC/attention ASR decoding) needs a CTC head; MiniMind-O has none")
    if sampling.get("force_pad_a", False):
        raise ValueError("sampling.force_pad_a (Mini-Omni's forced PAD_A audio fill) has no MiniMind-O meaning")
    sampling = {k: v for k, v in sampling.items() if k not in ("ctc_weight", "force_pad_a")}  # Mini-Omni's, off
    valid = {f.name for f in fields(SamplingConfig)} - {"speech"}
    unknown = sorted(set(sampling) - valid)
    if unknown:
        raise ValueError(f"sampling keys {unknown} are not MiniMind-O sampling settings; valid: {sorted(valid)}")
    t, k = float(sampling.get("temperature", 0.0)), int(sampling.get("top_k", 0))
    mapped = {"temperature": t, "top_k": k, "top_p": 1.0, "repetition_penalty": 1.0, "audio_temperature": t,
              "audio_top_k": k, "audio_top_p": 1.0, "audio_penalty": 1.0}
    return SamplingConfig(**{**mapped, **dict(sampling), "speech": speech})


class MiniMindOInference:
    TASKS = TASKS

    def __init__(self, model: MiniMindO, tokenizer: Any) -> None:
        self.model, self.tokenizer, self.tok = model, tokenizer, model.tokens
        self.newline = list(tokenizer.encode("\n", add_special_tokens=False))  # the layout's answer suffix
        self.collate = MiniMindOCollator(model.tokens, model.cfg.spk_dim)

    def sampling_config(self, sampling: Any, task: str, speech: bool | None = None) -> SamplingConfig:
        """`sampling` for `task`; speech defaults to whether the task's answer is spoken."""
        return sampling_config(sampling, self.speaks(task) if speech is None else speech)

    def speaks(self, task: str) -> bool:
        if task not in TASKS:
            raise ValueError(f"unknown MiniMind-O task {task!r}; valid: {sorted(TASKS)}")
        return TASKS[task]

    def batch(self, example: dict, task: str) -> dict[str, Any]:
        """The prefill batch of one example on the model's device: input_ids (1, 9, P) = its layout's prompt
        columns (reference codes and SPEAKER included), speaker_emb, audio_mels / audio_frames, pixel_values."""
        if example.get("task") != task:
            raise ValueError(f"example {example.get('id')!r} is a {example.get('task')!r} row, not {task!r}: a "
                             "MiniMind-O row's columns decide its task (datamodule.examples(split, task, n))")
        self.speaks(task)
        full = self.collate([example])
        weight = self.model.thinker.lm_head.weight
        start = int(full["prompt_len"][0])
        move = lambda x: None if x is None else x.to(weight.device, weight.dtype)  # noqa: E731
        batch = {"input_ids": full["input_ids"][:, :, :start].to(weight.device),
                 "speaker_emb": move(full["speaker_emb"]), "pixel_values": move(full["pixel_values"])}
        if full["audio_mels"] is not None:
            batch["audio_mels"] = move(full["audio_mels"])
            batch["audio_frames"] = full["audio_frames"].to(weight.device)
        return batch

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i < self.tok.text_vocab], skip_special_tokens=True).strip()

    @torch.no_grad()
    def answer(self, example: dict, task: str, sampling: Any, batch_parallel: bool = True,
               speech: bool = False) -> Answer:
        """Generate the whole answer of one example. Text only by default: the Thinker never reads the Talker's
        rows, so its text is the same with or without speech (`speech=True` adds the frames).
        `batch_parallel` is Mini-Omni's option (the caller's signature); MiniMind-O has one decoding path."""
        gen = generate(self.model, self.batch(example, task), self.sampling_config(sampling, task, speech),
                       self.newline)
        ids = [i for i in gen.text_ids if i != self.tok.im_end]
        return Answer(self.decode_text(ids), ids, gen.frames if speech else None)

    def stream(self, example: dict, task: str, sampling: Any, mimi: Any = None,
               chunk_frames: int = 4) -> Iterator[StreamEvent]:
        """Text pieces + Mimi audio chunks of one example's answer as decoding runs (`playback.stream`)."""
        return stream(self.model, self.batch(example, task), self.sampling_config(sampling, task), mimi=mimi,
                      decode_text=self.decode_text, newline=self.newline, chunk_frames=chunk_frames)
