"""Web demo of a checkpoint: `python eval.py mode=demo ckpt=<checkpoint> [demo.port=7860] [demo.host=127.0.0.1]`.

The shared part (this module) serves a Gradio page from local files only, checks what the page sends and turns
every failure into a message in the page; the page itself comes from the checkpoint's family, whose `build(ctx)`
(found through `omni.families.DEMOS`, imported lazily) returns a `gr.Blocks`. Nothing here names a family.

Offline: Gradio's analytics / version check and share links are off, Hugging Face hub access is off, server-side
rendering (Node) is off, and the page uses system fonts only, so neither the server nor the browser asks
anything of the internet (the browser test records every request the page makes).

Input checks (`read_audio`): no audio, a file soundfile cannot decode (wrong format), shorter than
`demo.min_seconds`, longer than `demo.max_seconds` (or the family's encoder window), only silence (the loudest
20 ms window under `demo.silence_dbfs` dBFS RMS) each raise `DemoInputError`, whose text the page shows;
`guard` shows any other exception as one line (type and message) with the traceback in the server log only.
"""
from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Environment that keeps Gradio (and everything it imports) off the network; set before gradio is imported.
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",  # no telemetry, no version check (api.gradio.app)
    "GRADIO_SHARE": "False",              # no share tunnel
    "GRADIO_SSR_MODE": "False",           # no Node server-side rendering
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SILENCE_WINDOW_S = 0.02  # windows of the energy check


def offline_environment() -> None:
    """Set OFFLINE_ENV and keep loopback requests (Gradio's start-up probe) away from any proxy."""
    os.environ.update(OFFLINE_ENV)
    for key in ("NO_PROXY", "no_proxy"):
        present = [h for h in os.environ.get(key, "").split(",") if h]
        os.environ[key] = ",".join(present + [h for h in LOCAL_HOSTS if h not in present])


class DemoInputError(ValueError):
    """Bad input from the page (no audio, silence, wrong format, too long, ...): the message is shown as is."""


@dataclass
class DemoConfig:
    """`demo:` of conf/eval.yaml."""

    host: str = "127.0.0.1"      # bind address (loopback: only this machine can open the page)
    port: int = 7860
    max_seconds: float = 30.0    # longest recording accepted (a family's encoder window may lower it)
    min_seconds: float = 0.1     # shortest
    silence_dbfs: float = -50.0  # a recording whose loudest 20 ms window is quieter is "only silence"
    title: str | None = None     # page title; null: the family's

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"demo.port = {self.port!r}: must be in [0, 65535]")
        if not 0 < float(self.min_seconds) < float(self.max_seconds):
            raise ValueError(f"demo.min_seconds = {self.min_seconds!r} and demo.max_seconds = {self.max_seconds!r}: "
                             "need 0 < min_seconds < max_seconds")
        if not self.host:
            raise ValueError("demo.host is empty: e.g. demo.host=127.0.0.1")

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any] | None) -> DemoConfig:
        node = dict(node or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(node) - set(valid))
        if unknown:
            raise ValueError(f"demo.{unknown[0]} is not a demo setting; valid: {valid}")
        return cls(**node)


@dataclass
class DemoContext:
    """What a family's `build(ctx)` receives: the model and its tokenizer, the demo settings and the eval
    config's generation settings (`sampling`, `codec`, `stream_stride`, `speech.speaker`, `session`)."""

    model: Any
    tokenizer: Any
    demo: DemoConfig = field(default_factory=DemoConfig)
    sampling: dict[str, Any] = field(default_factory=dict)
    codec: dict[str, Any] = field(default_factory=dict)      # path / arch / seed; null entries: the family's
    stride: int = 4                                          # codec frames per streamed audio chunk
    speaker_path: str | None = None                          # speaker encoder folder (null: resemblyzer)
    session: dict[str, Any] = field(default_factory=dict)    # streaming-session sampling
    ckpt: str = ""

    def codec_options(self, default_arch: str) -> dict[str, Any]:
        """{codec_path, codec_arch, codec_seed} with the family's architecture where `codec.arch` is null."""
        return {"codec_path": self.codec.get("path"), "codec_arch": self.codec.get("arch") or default_arch,
                "codec_seed": int(self.codec.get("seed") or 0)}


# ------------------------------------------------------------------------------------------------ input checks
def loudest_dbfs(wav: np.ndarray, sr: int, window_s: float = SILENCE_WINDOW_S) -> float:
    """RMS level (dBFS, full scale = 1.0) of the loudest non-overlapping `window_s` window (the last may be
    partial); -inf for digital silence."""
    wav = np.asarray(wav, dtype=np.float64).reshape(-1)
    n = max(1, int(round(window_s * sr)))
    if wav.size == 0:
        return float("-inf")
    pad = (-wav.size) % n
    windows = np.pad(wav, (0, pad)).reshape(-1, n)
    counts = np.full(windows.shape[0], n, dtype=np.float64)
    counts[-1] = n - pad
    rms = np.sqrt((windows ** 2).sum(axis=1) / counts).max()
    return 20.0 * math.log10(rms) if rms > 0 else float("-inf")


def _pcm_to_float(data: np.ndarray) -> np.ndarray:
    """Gradio's numpy audio (int16 / int32 PCM or float) -> float32 in [-1, 1]."""
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.integer):
        return (data.astype(np.float32) / float(-np.iinfo(data.dtype).min)).astype(np.float32)
    return data.astype(np.float32)


def read_audio(value: Any, sample_rate: int, cfg: DemoConfig, what: str = "question",
               max_seconds: float | None = None, min_seconds: float | None = None,
               limit_reason: str = "") -> np.ndarray:
    """A recording from the page (a file path, or Gradio's (rate, samples) tuple) -> (n,) float32 mono at
    `sample_rate`, or DemoInputError saying what is wrong. `max_seconds` / `min_seconds` tighten the demo's limits
    (`limit_reason` says why, e.g. the encoder window)."""
    from data.audio import AudioDecodeError, read_audio_bytes, resample, to_mono

    if value is None or (isinstance(value, str) and not value.strip()):
        raise DemoInputError(f"No {what} audio: record one with the microphone or upload a file first.")
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise DemoInputError(f"The {what} audio is not a (sample rate, samples) pair.")
        rate, data = int(value[0]), _pcm_to_float(value[1])
        if data.size == 0:
            raise DemoInputError(f"No {what} audio: the recording is empty.")
        wav = to_mono(data)
        if not np.isfinite(wav).all():
            raise DemoInputError(f"The {what} audio holds non-finite (NaN/inf) samples.")
    else:
        path = Path(str(value))
        try:
            wav, rate = read_audio_bytes(path.read_bytes())
        except (AudioDecodeError, OSError) as exc:
            raise DemoInputError(f"Cannot read the {what} audio {path.name!r}: not a recording this demo can decode "
                                 f"(WAV, FLAC or OGG) ({exc}).") from exc
    seconds = wav.shape[0] / float(rate)
    longest = min(cfg.max_seconds, max_seconds) if max_seconds else cfg.max_seconds
    shortest = max(cfg.min_seconds, min_seconds) if min_seconds else cfg.min_seconds
    if seconds > longest:
        why = f" ({limit_reason})" if limit_reason and max_seconds and max_seconds <= cfg.max_seconds else ""
        raise DemoInputError(f"The {what} audio is {seconds:.1f} s long; this demo takes at most {longest:g} s"
                             f"{why}. Trim it and try again.")
    if seconds < shortest:
        why = f" ({limit_reason})" if limit_reason and min_seconds and min_seconds >= cfg.min_seconds else ""
        raise DemoInputError(f"The {what} audio is {seconds:.2f} s long; it must last at least {shortest:g} s{why}.")
    level = loudest_dbfs(wav, rate)
    if level < cfg.silence_dbfs:
        shown = "-inf" if level == float("-inf") else f"{level:.0f}"
        raise DemoInputError(f"The {what} audio holds only silence (its loudest 20 ms is {shown} dBFS, under "
                             f"{cfg.silence_dbfs:g} dBFS): speak closer to the microphone or pick another file.")
    return resample(wav, rate, sample_rate)


def read_image(value: Any, what: str = "image") -> bytes | None:
    """An image from the page (a file path or None) -> its encoded bytes, or None when there is none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    path = Path(str(value))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DemoInputError(f"Cannot read the {what} {path.name!r}: {exc}") from exc
    from PIL import Image, UnidentifiedImageError

    try:
        import io

        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError) as exc:
        raise DemoInputError(f"The {what} {path.name!r} is not an image this demo can decode (PNG, JPEG, ...).") \
            from exc
    return data


# ------------------------------------------------------------------------------------------------ spoken answers
@dataclass
class SpokenUpdate:
    """One update of an answer being generated: the text so far, the newest audio chunk (or None), the time to
    the first audio chunk (s, once known), and on `done` the whole answer's audio."""

    text: str
    chunk: np.ndarray | None
    sample_rate: int
    first_audio_s: float | None
    done: bool = False
    audio: np.ndarray | None = None
    status: str = ""


class SpokenAnswer:
    """Accumulates (text piece, audio chunk) events of one answer; time to first audio counted from creation."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.t0 = time.perf_counter()
        self.text, self.chunks, self.first_audio_s = "", [], None

    def add(self, piece: str, chunk: np.ndarray | None) -> SpokenUpdate:
        self.text += piece or ""
        if chunk is not None and len(chunk):
            if self.first_audio_s is None:
                self.first_audio_s = time.perf_counter() - self.t0
            self.chunks.append(np.asarray(chunk, dtype=np.float32).reshape(-1))
        else:
            chunk = None
        return SpokenUpdate(self.text.strip(), chunk, self.sample_rate, self.first_audio_s)

    def finish(self, status: str = "") -> SpokenUpdate:
        audio = np.concatenate(self.chunks) if self.chunks else None
        total = time.perf_counter() - self.t0
        seconds = 0.0 if audio is None else audio.shape[0] / self.sample_rate
        status = status or (f"Done: {seconds:.2f} s of speech in {total:.2f} s" if audio is not None
                            else f"Done in {total:.2f} s (no speech was generated)")
        return SpokenUpdate(self.text.strip(), None, self.sample_rate, self.first_audio_s, True, audio, status)


def first_audio_label(seconds: float | None) -> str:
    return "Time to first audio: —" if seconds is None else f"Time to first audio: {seconds * 1000:.0f} ms"


def pcm16(wav: np.ndarray) -> np.ndarray:
    """float waveform -> int16 PCM (what Gradio plays without renormalising it by its peak)."""
    return (np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


# ------------------------------------------------------------------------------------------------ page helpers
def can_stream_audio() -> bool:
    """Gradio encodes streamed audio with ffmpeg; without it a page shows the whole answer once it is done."""
    import shutil

    return shutil.which("ffmpeg") is not None


def guard(handler: Callable[..., Iterator[Any]], status: Any, on_error: Callable[[str], Any] | None = None
          ) -> Callable[..., Iterator[Any]]:
    """Wrap a Gradio generator handler yielding {component: value} dicts: a DemoInputError shows its message in
    `status`; any other exception shows one line (type: message) there and logs its traceback on the server."""
    import functools

    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            yield from handler(*args, **kwargs)
        except DemoInputError as exc:
            yield {status: on_error(f"⚠️ {exc}") if on_error else f"⚠️ {exc}"}
        except Exception as exc:  # noqa: BLE001 - the page shows a message, never a stack trace
            log.error("demo handler %s failed:\n%s", handler.__name__, traceback.format_exc())
            message = f"❌ Error: {type(exc).__name__}: {exc}".splitlines()[0]
            yield {status: on_error(message) if on_error else message}

    return run


def theme() -> Any:
    """Gradio's default look with system fonts only (no web-font stylesheet to fetch)."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def session_id(request: Any) -> str:
    """The page session a Gradio request belongs to (one browser tab)."""
    return str(getattr(request, "session_hash", None) or "default")


# ------------------------------------------------------------------------------------------------ serving
def build_app(ctx: DemoContext) -> Any:
    """The family's page for `ctx.model` (omni.families.DEMOS)."""
    from omni.families import demo_module

    return demo_module(ctx.model).build(ctx)


def context_from_config(cfg: Any, model: Any, tokenizer: Any) -> DemoContext:
    speech = _plain(cfg.get("speech"))
    return DemoContext(model=model, tokenizer=tokenizer, demo=DemoConfig.from_mapping(_plain(cfg.get("demo"))),
                       sampling=_plain(cfg.get("sampling")), codec=_plain(cfg.get("codec")),
                       stride=int(cfg.get("stream_stride", 4)),
                       speaker_path=(speech.get("speaker") or {}).get("path"),
                       session=_plain(cfg.get("session")), ckpt=str(cfg.get("ckpt")))


def launch(app: Any, demo: DemoConfig, block: bool = True) -> Any:
    """Serve `app` on demo.host:demo.port (queue on: answers stream); block=False returns once it listens."""
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=demo.host, server_port=int(demo.port), share=False, inbrowser=False, show_error=False,
               ssr_mode=False, prevent_thread_lock=not block, quiet=False, footer_links=[], pwa=False,
               mcp_server=False, enable_monitoring=False, theme=theme(), max_file_size="100mb")
    return app


def serve(cfg: Any, block: bool = True) -> Any:
    """eval.py mode=demo: rebuild the checkpoint's model (omni.evaluate.load_for_eval: allow-listed classes,
    weights-only read) and serve its family's page."""
    offline_environment()
    demo = DemoConfig.from_mapping(_plain(cfg.get("demo")))  # config mistakes fail before the model loads
    from omni.checkpoint import load_for_eval
    from omni.families import load_tokenizer

    model, _ = load_for_eval(cfg.ckpt)
    ctx = context_from_config(cfg, model, load_tokenizer(model.cfg.tokenizer_path))
    ctx.demo = demo
    app = build_app(ctx)
    print(f"[demo] {type(model).__name__} from {cfg.ckpt} on http://{demo.host}:{demo.port}")
    return launch(app, demo, block)


def _plain(node: Any) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else dict(node or {})
