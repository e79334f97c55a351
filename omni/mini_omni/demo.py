"""Web demo page of Mini-Omni / Mini-Omni2 (omni/demo.py serves it; `python eval.py mode=demo ckpt=...`).

A spoken question (microphone or file; Mini-Omni2: plus an optional image) is answered in text and speech: A1A2
(image_a1a2 with an image) decoded batch-parallel as released, streamed by `MiniOmniInference.stream` (SNAC
`stream_stride` frames per chunk), the text and the speech shown as they are generated, with the time to the
first audio chunk. The question goes through the same features as training (Whisper log-mel over the encoder
window, T = int(ms / 20) + 1 frames) and may last at most the encoder window.
"""
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch

from omni.demo import (
    DemoContext, DemoInputError, SpokenAnswer, SpokenUpdate, can_stream_audio, first_audio_label, guard, pcm16,
    read_audio, read_image,
)
from omni.mini_omni.generate import SamplingConfig
from omni.mini_omni.infer import MiniOmniInference

SAMPLE_RATE = 16000  # Whisper input
HOP = 160


class MiniOmniDemo:
    """The page's handler, usable without a server: `answer(audio, image)` yields SpokenUpdate's."""

    def __init__(self, ctx: DemoContext) -> None:
        from transformers import WhisperFeatureExtractor

        self.ctx, self.model = ctx, ctx.model.eval()
        self.infer = MiniOmniInference(self.model, ctx.tokenizer)
        self.vision = bool(self.model.cfg.has_vision)
        enc = self.model.audio_encoder.config
        self.window = int(enc.max_source_positions)  # encoder frames (20 ms each)
        self.n_samples = 2 * self.window * HOP
        self.features = WhisperFeatureExtractor(feature_size=int(enc.num_mel_bins), sampling_rate=SAMPLE_RATE,
                                                hop_length=HOP, chunk_length=int(np.ceil(self.n_samples / SAMPLE_RATE)))
        self.sampling = SamplingConfig(**ctx.sampling) if ctx.sampling else SamplingConfig()
        self._codec, self._pixels = None, None

    @property
    def window_s(self) -> float:
        return self.window * 0.02

    @property
    def codec(self):
        if self._codec is None:
            from data.mini_omni.codec import load_codec

            o = self.ctx.codec_options("snac_24khz")
            self._codec = load_codec(o["codec_path"], arch=o["codec_arch"], seed=o["codec_seed"])
        return self._codec

    def example(self, wav: np.ndarray, image: bytes | None = None) -> tuple[dict, str]:
        """16 kHz question (+ image bytes) -> (example dict as data.mini_omni.dataset.OmniDataset makes it, task)."""
        from data.mini_omni.lengths import encoder_frames

        feats = self.features(wav, sampling_rate=SAMPLE_RATE, return_tensors="np", padding="max_length",
                              max_length=self.n_samples, truncation=True)["input_features"][0]
        example = {"id": "demo", "mels": torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
                   "n_audio_frames": int(encoder_frames(len(wav) / SAMPLE_RATE, self.window)),
                   "question_text": "", "speaker": None}
        if image is None:
            return example, "a1a2"
        example["pixels"] = self.pixels(image)
        return example, "image_a1a2"

    def pixels(self, image: bytes) -> torch.Tensor:
        from omni.mini_omni.vision import image_processor, load_pixels

        cfg = self.model.cfg
        if self._pixels is None:
            size = int((cfg.vision or {}).get("image_size", 224))
            self._pixels = image_processor(cfg.vision_arch, cfg.vision_path, size)
        try:
            return load_pixels(image, self._pixels)
        except ValueError as exc:
            raise DemoInputError(f"Cannot use the image: {exc}") from exc

    def answer(self, audio: Any, image: Any = None) -> Iterator[SpokenUpdate]:
        """The spoken question (path or (rate, samples)) and optional image path -> updates while generating."""
        from data.mini_omni.codec import codec_sample_rate, decode_frames

        wav = read_audio(audio, SAMPLE_RATE, self.ctx.demo, max_seconds=self.window_s,
                         limit_reason=f"the audio encoder's window is {self.window_s:g} s")
        data = read_image(image) if self.vision else None
        if image is not None and not self.vision:
            raise DemoInputError("This checkpoint is Mini-Omni (no vision tower): remove the image.")
        example, task = self.example(wav, data)
        codec = self.codec
        answer = SpokenAnswer(codec_sample_rate(codec))
        with torch.no_grad():
            for event in self.infer.stream(example, task, self.sampling, partial(decode_frames, codec),
                                           self.ctx.stride):
                if event.text or event.audio is not None:
                    yield answer.add(event.text, event.audio)
        yield answer.finish()


def build(ctx: DemoContext) -> Any:
    import gradio as gr

    demo = MiniOmniDemo(ctx)
    name = "Mini-Omni2" if demo.vision else "Mini-Omni"
    streams = can_stream_audio()  # live speech needs ffmpeg (Gradio's stream encoder)
    with gr.Blocks(title=ctx.demo.title or f"{name} demo", analytics_enabled=False) as app:
        longest = min(demo.window_s, ctx.demo.max_seconds)
        gr.Markdown(f"# {name}\nAsk a spoken question{' about an image' if demo.vision else ''}: the answer's text "
                    f"and speech stream in as they are generated. Questions up to {longest:g} s.")
        with gr.Row():
            with gr.Column():
                question = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Spoken question",
                                    elem_id="question")
                image = gr.Image(type="filepath", label="Image (optional)", elem_id="image",
                                 visible=demo.vision)
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                text = gr.Textbox(label="Answer", lines=4, interactive=False, elem_id="answer-text")
                live = gr.Audio(label="Speech (live)", streaming=True, autoplay=True, interactive=False,
                                visible=streams, elem_id="answer-live")
                full = gr.Audio(label="Whole answer", type="numpy", interactive=False, elem_id="answer-audio")
                ttfa = gr.Markdown(first_audio_label(None), elem_id="ttfa")
                status = gr.Markdown("", elem_id="status")

        def run(audio: Any, img: Any) -> Iterator[dict]:
            yield {status: "Generating…", text: "", full: None, ttfa: first_audio_label(None)}
            for u in demo.answer(audio, img if demo.vision else None):
                out = {text: u.text, ttfa: first_audio_label(u.first_audio_s)}
                if u.chunk is not None and streams:
                    out[live] = (u.sample_rate, pcm16(u.chunk))
                if u.done:
                    out[status] = u.status
                    out[full] = None if u.audio is None else (u.sample_rate, pcm16(u.audio))
                yield out

        ask.click(guard(run, status), inputs=[question, image], outputs=[text, live, full, ttfa, status])
    return app
