"""Web demo page of MiniMind-O (omni/demo.py serves it; `python eval.py mode=demo ckpt=...`).

Chat by text or voice (the last user turn spoken, as in training: `generate.chat_batch`); the Thinker's text and
the Talker's speech stream in as generated (`playback.stream`, Mimi decoded incrementally, `stream_stride`
frames = 80 ms each per chunk), with the time to the first audio chunk. Voice cloning: an uploaded reference
(>= 1.8 s, else rejected with a message) becomes the conditioning voice (`voice.reference_voice`: Mimi codes of
the 1.5x sped-up clip + a speaker embedding when the speaker encoder's width equals the model's spk_dim).
Barge-in: the microphone stream feeds Silero VAD (`barge_in.BargeIn`); a user turn that starts while an answer
is being generated stops it between two decoding steps. State (history, voice, VAD) is kept per browser tab.
"""
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from omni.demo import (
    DemoContext, DemoInputError, SpokenAnswer, SpokenUpdate, can_stream_audio, first_audio_label, guard, pcm16,
    read_audio,
    session_id,
)
from omni.minimind_o.generate import Voice, chat_batch
from omni.minimind_o.infer import MiniMindOInference
from omni.minimind_o.voice import MIN_REFERENCE_S, reference_voice

AUDIO_SR = 16000  # question audio and the VAD


@dataclass
class ChatState:
    """One browser tab's conversation (the model's messages), cloned voice and barge-in detector."""

    messages: list[dict] = field(default_factory=list)
    voice: Voice | None = None
    voice_note: str = ""
    barge: Any = None


class MiniMindODemo:
    """The page's handlers, usable without a server (`sid` names the conversation)."""

    def __init__(self, ctx: DemoContext, vad: Any = None) -> None:
        self.ctx, self.model = ctx, ctx.model.eval()
        self.infer = MiniMindOInference(self.model, ctx.tokenizer)
        self.sampling = self.infer.sampling_config(dict(ctx.sampling), "a2a", speech=True)
        self.window_s = float(self.model.cfg.audio_encoder.window_s)
        self.states: dict[str, ChatState] = {}
        self._mimi, self._speaker, self._vad = None, None, vad
        self._lock = threading.Lock()

    @property
    def mimi(self):
        if self._mimi is None:
            from omni.minimind_o.codec import load_mimi

            o = self.ctx.codec_options("mimi")
            self._mimi = load_mimi(o["codec_path"], arch=o["codec_arch"], seed=o["codec_seed"])
        return self._mimi

    def state(self, sid: str) -> ChatState:
        with self._lock:
            return self.states.setdefault(sid, ChatState())

    def barge(self, sid: str):
        from omni.minimind_o.barge_in import BargeIn, TurnDetector

        st = self.state(sid)
        if st.barge is None:
            st.barge = BargeIn(TurnDetector(model=self._vad))
        return st.barge

    # -- voice cloning ---------------------------------------------------------------------------------------------
    def set_voice(self, sid: str, reference: Any) -> str:
        """An uploaded reference recording -> the tab's voice; the status line to show."""
        from omni.minimind_o.codec import sample_rate

        wav = read_audio(reference, sample_rate(self.mimi), self.ctx.demo, what="reference voice",
                         max_seconds=self.ctx.demo.max_seconds, min_seconds=MIN_REFERENCE_S,
                         limit_reason="voice cloning needs a reference of at least "
                                      f"{MIN_REFERENCE_S:g} s")
        sr, note = sample_rate(self.mimi), ""
        try:
            voice = reference_voice(wav, sr, self.mimi, self.speaker(), self.model.cfg.spk_dim)
        except ValueError as exc:
            if "spk_dim" not in str(exc):
                raise DemoInputError(str(exc)) from exc
            voice = reference_voice(wav, sr, self.mimi, None)  # the encoder's width differs: codes only
            note = f" (reference codes only: {exc})"
        st = self.state(sid)
        st.voice, st.voice_note = voice, note
        return (f"✅ Voice cloned from {wav.shape[0] / sr:.1f} s of reference ({voice.ref_codes.shape[0]} Mimi "
                f"frames){note}.")

    def clear_voice(self, sid: str) -> str:
        self.state(sid).voice = None
        return "Voice: the model's own."

    def speaker(self):
        if self._speaker is None and self.model.cfg.spk_dim:
            from omni.minimind_o.voice import speaker_encoder

            self._speaker = speaker_encoder(self.ctx.speaker_path)
        return self._speaker

    # -- chat ------------------------------------------------------------------------------------------------------
    def respond(self, sid: str, text: str | None, audio: Any = None) -> Iterator[SpokenUpdate]:
        """A text or spoken user turn -> updates while the answer is generated (stops early on barge-in)."""
        from omni.minimind_o.codec import sample_rate
        from omni.minimind_o.playback import stream

        text = (text or "").strip()
        wav = None
        if audio is not None:
            wav = read_audio(audio, AUDIO_SR, self.ctx.demo, max_seconds=self.window_s,
                             limit_reason=f"the audio encoder's window is {self.window_s:g} s")
        elif not text:
            raise DemoInputError("Nothing to answer: type a message, or record / upload a spoken one.")
        st = self.state(sid)
        messages = st.messages + [{"role": "user", "content": text}]
        n_user = sum(m["role"] == "user" for m in messages)
        clips = [] if wav is None else [np.zeros(1, np.float32)] * (n_user - 1) + [wav]  # the last turn spoken
        encode = lambda s: list(self.infer.tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
        batch = chat_batch(self.model, encode, messages, st.voice, clips)
        answer = SpokenAnswer(sample_rate(self.mimi))
        barge, interrupted = self.barge(sid), False
        with barge.generating() as interrupt, torch.no_grad():
            for event in stream(self.model, batch, self.sampling, mimi=self.mimi, decode_text=self.infer.decode_text,
                                newline=self.infer.newline, chunk_frames=self.ctx.stride, interrupt=interrupt):
                interrupted = interrupted or event.interrupted
                if event.text or event.audio is not None:
                    yield answer.add(event.text, event.audio)
        final = answer.finish("⏹ Stopped: you started speaking (barge-in)." if interrupted else "")
        st.messages = messages + [{"role": "assistant", "content": final.text}]
        yield final

    def hear(self, sid: str, chunk: Any) -> str:
        """A microphone chunk ((rate, samples) from the page) -> the VAD; a turn start while answering stops it."""
        from data.audio import resample

        if chunk is None:
            return ""
        rate, data = int(chunk[0]), np.asarray(chunk[1])
        wav = data.astype(np.float32) / 32768.0 if data.dtype == np.int16 else data.astype(np.float32)
        wav = wav.mean(axis=1) if wav.ndim == 2 else wav
        barge = self.barge(sid)
        generating = barge._generating
        events = barge.feed(resample(wav, rate, AUDIO_SR))
        if any(e.kind == "start" for e in events):
            return "🎤 Heard you: stopping the answer." if generating else "🎤 Listening…"
        return ""

    def reset(self, sid: str) -> None:
        with self._lock:
            self.states.pop(sid, None)


def build(ctx: DemoContext) -> Any:
    import gradio as gr

    demo = MiniMindODemo(ctx)
    streams = can_stream_audio()  # live speech needs ffmpeg (Gradio's stream encoder)
    with gr.Blocks(title=ctx.demo.title or "MiniMind-O demo", analytics_enabled=False) as app:
        gr.Markdown("# MiniMind-O\nChat by text or voice; the answer's speech streams in as it is generated. Clone a "
                    f"voice from a reference recording (at least {MIN_REFERENCE_S:g} s). Speak into the barge-in "
                    "microphone while an answer plays to interrupt it.")
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(label="Conversation", height=320, elem_id="chat")
                with gr.Row():
                    message = gr.Textbox(label="Message", placeholder="Type a question…", scale=3, elem_id="message")
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                spoken = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Or ask by voice",
                                  elem_id="question")
                live = gr.Audio(label="Speech (live)", streaming=True, autoplay=True, interactive=False,
                                visible=streams, elem_id="answer-live")
                full = gr.Audio(label="Whole answer", type="numpy", interactive=False, elem_id="answer-audio")
                ttfa = gr.Markdown(first_audio_label(None), elem_id="ttfa")
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=2):
                reference = gr.Audio(sources=["upload", "microphone"], type="filepath",
                                     label=f"Reference voice (>= {MIN_REFERENCE_S:g} s)", elem_id="reference")
                with gr.Row():
                    clone = gr.Button("Use this voice", elem_id="clone")
                    default_voice = gr.Button("Model's own voice", elem_id="default-voice")
                voice_status = gr.Markdown("Voice: the model's own.", elem_id="voice-status")
                mic = gr.Audio(sources=["microphone"], streaming=True, label="Barge-in microphone", elem_id="mic")
                barge_status = gr.Markdown("", elem_id="barge-status")
                clear = gr.Button("New conversation", elem_id="clear")

        def run(text: str, audio: Any, history: list, request: gr.Request) -> Iterator[dict]:
            sid = session_id(request)
            shown = "(spoken question)" + (f" {text}" if text else "") if audio is not None else text
            history = list(history or []) + [{"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
            yield {status: "Generating…", full: None, ttfa: first_audio_label(None)}
            for u in demo.respond(sid, text, audio):
                history[-1] = {"role": "assistant", "content": u.text or "…"}
                out = {chat: history, ttfa: first_audio_label(u.first_audio_s)}
                if u.chunk is not None and streams:
                    out[live] = (u.sample_rate, pcm16(u.chunk))
                if u.done:
                    out.update({status: u.status, message: "",
                                full: None if u.audio is None else (u.sample_rate, pcm16(u.audio))})
                yield out

        def clone_voice(ref: Any, request: gr.Request) -> Iterator[dict]:
            yield {voice_status: demo.set_voice(session_id(request), ref)}

        def own_voice(request: gr.Request) -> str:
            return demo.clear_voice(session_id(request))

        def hear(chunk: Any, request: gr.Request) -> str:
            return demo.hear(session_id(request), chunk)

        def new_chat(request: gr.Request) -> tuple:
            demo.reset(session_id(request))
            return [], "", None

        send.click(guard(run, status), inputs=[message, spoken, chat],
                   outputs=[chat, live, full, ttfa, status, message], concurrency_id="answer")
        message.submit(guard(run, status), inputs=[message, spoken, chat],
                       outputs=[chat, live, full, ttfa, status, message], concurrency_id="answer")
        clone.click(guard(clone_voice, voice_status), inputs=[reference], outputs=[voice_status])
        default_voice.click(own_voice, outputs=[voice_status])
        mic.stream(hear, inputs=[mic], outputs=[barge_status], stream_every=0.25, concurrency_limit=None)
        clear.click(new_chat, outputs=[chat, status, spoken])
    return app
