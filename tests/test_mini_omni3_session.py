"""Streaming session: event sequence and KV-cache reuse with a scripted LM; cached decoding == full forward on the
tiny model; replay report (latency, real-time factor)."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from omni.mini_omni3.encoder import LogMel
from omni.mini_omni3.layout import Reply, online_sequence
from omni.mini_omni3.model import MiniOmni3, config_from_yaml
from omni.mini_omni3.replay import replay
from omni.mini_omni3.session import SessionConfig, StreamingSession
from omni.mini_omni3.tokens import MiniOmni3Tokens

ROOT = Path(__file__).resolve().parents[1]
TOK = MiniOmni3Tokens.after_vocab(100)
KS, TB, TE, HAPPY, NORMAL = TOK.keep_silence, TOK.text_begin, TOK.text_end, TOK.happy, TOK.normal
SYS = [5, 6]
D = 8


class ScriptedLM(nn.Module):
    """A fake LM whose next token is scripted: each forward returns a one-hot logit for the next scripted id.
    It records every forward (ids fed, the cache object, how many tokens that cache already held)."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.tokens, self.script = TOK, list(script)
        self.cfg = SimpleNamespace(n_mels=128, system_prompt="unused")
        self.anchor = nn.Parameter(torch.zeros(1))
        self.calls: list[dict] = []
        self._ids = None

    def encode_chunks(self, mels):
        return torch.zeros(mels.shape[0], 10, D)

    def project(self, frames):
        return frames

    def embed(self, ids, frames=None, positions=None):
        self._ids = ids[0].tolist()
        return torch.zeros(1, ids.shape[1], D)

    def hidden(self, embeds, past_key_values=None, use_cache=False):
        held = getattr(past_key_values, "fed", 0)
        self.calls.append({"ids": self._ids, "cache": id(past_key_values), "held": held})
        past_key_values.fed = held + embeds.shape[1]
        return SimpleNamespace(last_hidden_state=torch.zeros(1, embeds.shape[1], D))

    def logits(self, h):
        out = torch.zeros(TOK.vocab_size)
        out[self.script.pop(0)] = 10.0
        return out


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ROOT / "omni" / "assets" / "tiny_tokenizer")


def run(model, cfg, n_chunks, tokenizer=None):
    s = StreamingSession(model, tokenizer, cfg, system_ids=SYS)
    audio = np.zeros(n_chunks * 6400 - 100, dtype=np.float32)  # the last chunk is partial until flush()
    events = list(s.feed(audio[:9000])) + list(s.feed(audio[9000:])) + list(s.flush())
    return s, events


def test_released_sampling_defaults():
    assert (SessionConfig().temperature, SessionConfig().top_k, SessionConfig().max_new_tokens) == (0.3, 3, 4096)


def test_scripted_events_and_cache_reuse(tokenizer):
    script = [KS, TB, HAPPY, 40, 41, TE, 7, TB, NORMAL, 42, TE]  # chunk 2 scripts a non-decision id (7)
    model = ScriptedLM(script)
    s, events = run(model, SessionConfig(temperature=0.0), 4, tokenizer)
    assert [(e.kind, e.chunk) for e in events] == [
        ("silence", 0), ("reply_start", 1), ("text", 1), ("text", 1), ("reply_end", 1), ("silence", 2),
        ("reply_start", 3), ("text", 3), ("reply_end", 3)]
    assert events[4].emotion == "happy" and events[4].text == tokenizer.decode([40, 41])
    assert "".join(e.text for e in events[2:4]) == events[4].text
    assert events[8].emotion == "normal" and events[8].tokens == [42]
    assert not model.script
    # one cache for the whole session; every call feeds only new tokens (the prefix ran once, first)
    assert len({c["cache"] for c in model.calls}) == 1
    held = 0
    for call in model.calls:
        assert call["held"] == held
        held += len(call["ids"])
    assert model.calls[0]["ids"] == [TOK.online, TOK.english, TB, TB, *SYS, TE]
    assert model.calls[2]["ids"][0] == KS and len(model.calls[2]["ids"]) == 13  # KEEP_SILENCE rides with chunk 1
    # the fed sequence is exactly the training layout of the same session
    expected = online_sequence(TOK, SYS, 4, {1: Reply((40, 41), "happy"), 3: Reply((42,), "normal")})
    assert s.history + s.pending == expected.ids
    assert s.frame_positions == expected.audio_positions
    assert s.generated == len(script) and len(s.chunk_seconds) == 4


def test_reply_without_emotion_and_budget():
    model = ScriptedLM([TB, 40, TE, KS])
    s, events = run(model, SessionConfig(temperature=0.0), 2)
    assert [e.kind for e in events] == ["reply_start", "text", "reply_end", "silence"]
    assert events[2].emotion == "normal" and events[2].tokens == [40]
    model = ScriptedLM([KS, TB, 40, 41, 42])
    s, events = run(model, SessionConfig(temperature=0.0, max_new_tokens=4), 3)
    assert [e.kind for e in events] == ["silence", "reply_start", "text", "text", "reply_end", "budget_exhausted"]
    assert s.done and s.chunks_seen == 2  # the third chunk is not processed


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MiniOmni3(config_from_yaml(str(ROOT / "conf" / "model" / "mini_omni3_tiny.yaml"))).eval()


def test_cached_session_equals_full_forward(tiny, tokenizer):
    """Decoding through the cache sees exactly the hidden states of one full forward over the fed sequence."""
    s = StreamingSession(tiny, tokenizer, SessionConfig(temperature=0.0, max_reply_tokens=4))
    seen = []

    def logits(h):  # record (position, hidden); force silence at chunks 0-1 and a reply at chunk 2
        seen.append((len(s.history) - 1, h.clone()))
        out = MiniOmni3.logits(tiny, h)
        if len(seen) <= 3:
            out[tiny.tokens.text_begin if len(seen) == 3 else tiny.tokens.keep_silence] += 100.0
        return out

    tiny.logits = logits
    wav = np.random.default_rng(0).normal(0, 0.1, 5 * 6400).astype(np.float32)
    try:
        events = list(s.feed(wav)) + list(s.flush())
    finally:
        del tiny.logits
    assert [e.kind for e in events[:3]] == ["silence", "silence", "reply_start"] and len(seen) > 5
    n = s.chunks_seen
    with torch.no_grad():  # the session's frames are those of the whole-stream log-mel (training's)
        frames = tiny.encode_chunks(LogMel(128).stream(wav)[:n]).reshape(-1, 64)
        x = tiny.embed(torch.tensor([s.history]), frames, torch.tensor(s.frame_positions))
        h = tiny.hidden(x).last_hidden_state[0]
    for pos, h_cached in seen:
        torch.testing.assert_close(h_cached, h[pos], rtol=1e-4, atol=1e-4)


def test_replay_report(tiny, tokenizer):
    wav = np.random.default_rng(1).normal(0, 0.05, 16000 * 2).astype(np.float32)
    report = replay(tiny, tokenizer, wav, SessionConfig(seed=0, max_reply_tokens=8))
    assert report["n_chunks"] == 5 and report["audio_s"] == 2.0
    assert report["rtf"] > 0 and report["chunk_latency_ms"]["max"] >= report["chunk_latency_ms"]["p50"] > 0
    assert report["sampling"]["temperature"] == 0.3
    assert len(report["replies"]) == len(report["reply_chunks"])
