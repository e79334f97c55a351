"""Web demo page of Mini-Omni3 (omni/demo.py serves it; `python eval.py mode=demo ckpt=...`).

Streaming audio in, text out: microphone audio (streamed by the page) or a file (replayed chunk by chunk as if it
arrived live) feeds one `session.StreamingSession`; a live timeline shows every 0.4 s chunk's decision
(listening = KEEP_SILENCE, replying = TEXT_BEGIN) with its processing latency (decision + any reply; the 2.5 ms
log-mel look-ahead comes on top), and each reply with its emotion as it is decoded. Sampling: `session` of the
eval config (released defaults: temperature 0.3, top-k 3).
"""
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omni.demo import DemoContext, guard, pcm16, read_audio, session_id
from omni.mini_omni3.encoder import CHUNK_SAMPLES, SAMPLE_RATE
from omni.mini_omni3.session import Event, SessionConfig, StreamingSession

COLUMNS = ["chunk", "audio until (s)", "decision", "latency (ms)", "emotion", "reply"]


@dataclass
class Timeline:
    """Per-chunk decisions of one session, as table rows (COLUMNS), and the replies."""

    session: StreamingSession
    rows: list[list] = field(default_factory=list)
    replies: list[dict] = field(default_factory=list)

    def take(self, event: Event) -> None:
        c = event.chunk
        if event.kind in ("silence", "reply_start"):
            decision = "listening" if event.kind == "silence" else "replying"
            self.rows.append([c, round((c + 1) * CHUNK_SAMPLES / SAMPLE_RATE, 2), decision, None, "", ""])
        elif event.kind in ("text", "reply_end") and self.rows:
            row = self.rows[-1]
            row[4] = event.emotion or "normal"
            row[5] = event.text if event.kind == "reply_end" else row[5] + event.text
            if event.kind == "reply_end":
                self.replies.append({"chunk": c, "time_s": row[1], "emotion": row[4], "text": event.text})
        self._latencies()

    def _latencies(self) -> None:
        done = self.session.chunk_seconds
        for row in self.rows:
            if row[3] is None and row[0] < len(done):
                row[3] = round(done[row[0]] * 1000.0, 1)

    def replies_markdown(self) -> str:
        if not self.replies:
            return "_No reply yet._"
        return "\n".join(f"- **@{r['time_s']:.1f} s [{r['emotion']}]** {r['text'] or '(empty)'}" for r in self.replies)

    def status(self) -> str:
        s = self.session
        lat = [r[3] for r in self.rows if r[3] is not None]
        mean = f", mean chunk latency {np.mean(lat):.0f} ms" if lat else ""
        return (f"{s.chunks_seen} chunks ({s.chunks_seen * CHUNK_SAMPLES / SAMPLE_RATE:.1f} s), "
                f"{len(self.replies)} replies{mean}" + (" — token budget exhausted" if s.done else ""))


class MiniOmni3Demo:
    """The page's handlers, usable without a server: `replay(audio)` (a whole file) and `listen(sid, chunk)`
    (microphone chunks of one tab's live session) yield / return the Timeline."""

    def __init__(self, ctx: DemoContext) -> None:
        self.ctx, self.model = ctx, ctx.model.eval()
        self.session_cfg = SessionConfig(**ctx.session) if ctx.session else SessionConfig()
        self.live: dict[str, Timeline] = {}
        self._lock = threading.Lock()

    def new_timeline(self) -> Timeline:
        return Timeline(StreamingSession(self.model, self.ctx.tokenizer, self.session_cfg))

    def replay(self, audio: Any) -> Iterator[tuple[Timeline, np.ndarray]]:
        """A recording -> (timeline, the 16 kHz audio heard) after every event, chunk by chunk as if live."""
        wav = read_audio(audio, SAMPLE_RATE, self.ctx.demo)
        timeline = self.new_timeline()
        for start in range(0, len(wav), CHUNK_SAMPLES):
            for event in timeline.session.feed(wav[start:start + CHUNK_SAMPLES]):
                timeline.take(event)
                yield timeline, wav
        for event in timeline.session.flush():
            timeline.take(event)
            yield timeline, wav
        timeline._latencies()
        yield timeline, wav

    def listen(self, sid: str, chunk: Any) -> Timeline:
        """A microphone chunk ((rate, samples)) -> that tab's live session; its timeline."""
        from data.audio import resample

        with self._lock:
            timeline = self.live.get(sid) or self.live.setdefault(sid, self.new_timeline())
        if chunk is not None:
            rate, data = int(chunk[0]), np.asarray(chunk[1])
            wav = data.astype(np.float32) / 32768.0 if data.dtype == np.int16 else data.astype(np.float32)
            wav = wav.mean(axis=1) if wav.ndim == 2 else wav
            for event in timeline.session.feed(resample(wav, rate, SAMPLE_RATE)):
                timeline.take(event)
        return timeline

    def stop(self, sid: str) -> Timeline | None:
        """End of the microphone stream: flush the last chunk."""
        with self._lock:
            timeline = self.live.pop(sid, None)
        if timeline is not None:
            for event in timeline.session.flush():
                timeline.take(event)
            timeline._latencies()
        return timeline


def build(ctx: DemoContext) -> Any:
    import gradio as gr

    demo = MiniOmni3Demo(ctx)
    with gr.Blocks(title=ctx.demo.title or "Mini-Omni3 demo", analytics_enabled=False) as app:
        gr.Markdown("# Mini-Omni3\nStream the microphone or replay a file: every 0.4 s chunk the model decides to "
                    "keep listening or to reply; replies come with their emotion.")
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.Audio(sources=["upload"], type="filepath", label="Audio file", elem_id="question")
                replay = gr.Button("Replay file as a live stream", variant="primary", elem_id="ask")
                mic = gr.Audio(sources=["microphone"], streaming=True, label="Live microphone", elem_id="mic")
                heard = gr.Audio(label="Audio heard (16 kHz)", type="numpy", interactive=False, elem_id="heard")
            with gr.Column(scale=3):
                status = gr.Markdown("", elem_id="status")
                replies = gr.Markdown("_No reply yet._", elem_id="replies")
                table = gr.Dataframe(headers=COLUMNS, value=[], label="Timeline (per 0.4 s chunk)", interactive=False,
                                     elem_id="timeline", wrap=True)

        def run(audio: Any) -> Iterator[dict]:
            yield {status: "Streaming…", replies: "_No reply yet._", table: [], heard: None}
            timeline, wav = None, None
            for timeline, wav in demo.replay(audio):
                yield {table: [list(r) for r in timeline.rows], replies: timeline.replies_markdown(),
                       status: "Streaming… " + timeline.status()}
            if timeline is not None:
                yield {status: "Done: " + timeline.status(), heard: (SAMPLE_RATE, pcm16(wav))}

        def listen(chunk: Any, request: gr.Request) -> tuple:
            timeline = demo.listen(session_id(request), chunk)
            return [list(r) for r in timeline.rows], timeline.replies_markdown(), "Listening… " + timeline.status()

        def stop(request: gr.Request) -> tuple:
            timeline = demo.stop(session_id(request))
            if timeline is None:
                return gr.update(), gr.update(), ""
            return [list(r) for r in timeline.rows], timeline.replies_markdown(), "Done: " + timeline.status()

        replay.click(guard(run, status), inputs=[upload], outputs=[table, replies, status, heard])
        mic.stream(listen, inputs=[mic], outputs=[table, replies, status], stream_every=0.4)
        mic.stop_recording(stop, outputs=[table, replies, status])
    return app
