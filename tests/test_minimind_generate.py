"""MiniMind-O generation: sampling settings, un-delaying against hand-drawn tables, stop handling with a scripted
logits source, KV-cache decoding equal to the teacher-forced forward of the tiny model, incremental Mimi
decoding equal to the one-shot decode, voice cloning prompts from a real synthesized wav, Silero-VAD barge-in."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from omni.config import load_group_config
from omni.minimind_o.codec import decode, encode, load_mimi, sample_rate, samples_per_frame
from omni.minimind_o.generate import (
    FrameAssembler, ModelSource, SamplingConfig, StepLogits, Voice, chat_batch, collect, decode_steps, generate,
    generation_prompt, playable, prompt_batch, sample_logits,
)
from omni.minimind_o.layout import build_layout
from omni.minimind_o.model import MiniMindO, MiniMindOConfig
from omni.minimind_o.playback import MimiStreamDecoder, receptive_frames, stream
from omni.minimind_o.tokens import MiniMindOTokens
from tests.conftest import CONF

torch.set_num_threads(1)
TOK = MiniMindOTokens()
P, S, X = 2049, 2050, 2051  # audio PAD, STOP, SPEAKER (released ids)


def tiny_config() -> MiniMindOConfig:
    node = load_group_config(CONF / "model" / "minimind_o_tiny.yaml").cfg
    node.tokenizer_path = None
    raw = OmegaConf.to_container(node, resolve=True)
    raw.pop("_target_"), raw.pop("_convert_")
    return MiniMindOConfig(**raw)


@pytest.fixture(scope="module")
def tiny() -> MiniMindO:
    torch.manual_seed(0)
    return MiniMindO(tiny_config()).eval()


@pytest.fixture(scope="module")
def tiny_mimi():
    return load_mimi(None, "tiny", seed=0)


# ------------------------------------------------------------------------------------------------ sampling
def test_sampling_defaults_are_the_released_ones_and_bad_values_fail():
    cfg = SamplingConfig()
    assert (cfg.temperature, cfg.top_p, cfg.repetition_penalty) == (0.7, 0.85, 1.0)
    assert (cfg.audio_temperature, cfg.audio_top_k, cfg.audio_penalty, cfg.audio_penalty_window) == (0.2, 50, 1.05, 3)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="frames_until"):
        SamplingConfig(frames_until="never")


def test_sample_logits_penalty_top_k_top_p_and_seed():
    logits = torch.tensor([2.0, 1.9, -1.0, 0.5])
    assert sample_logits(logits, 0.0) == 0
    assert sample_logits(logits, 0.0, penalty=1.2, penalize=[0]) == 1  # 2.0 / 1.2 < 1.9
    assert sample_logits(logits, 0.0, banned=[0, 1]) == 3
    draws = {sample_logits(logits, 5.0, top_k=2, generator=torch.Generator().manual_seed(i)) for i in range(40)}
    assert draws == {0, 1}
    draws = {sample_logits(logits, 1.0, top_p=0.3, generator=torch.Generator().manual_seed(i)) for i in range(40)}
    assert draws == {0}  # the top token alone crosses p = 0.3
    a = [sample_logits(logits, 1.0, generator=torch.Generator().manual_seed(7)) for _ in range(5)]
    assert len(set(a)) == 1


# ------------------------------------------------------------------------------------------------ un-delaying
def test_frame_assembler_hand_drawn_table():
    tok = MiniMindOTokens(n_codebooks=3)
    # fed audio rows per step (codebook c starts at step c + 1); a = codebook 0, b = 1, c = 2; frame k = (ak, bk, ck)
    a0, a1, a2, b0, b1, b2, c0, c1, c2 = 10, 11, 12, 20, 21, 22, 30, 31, 32
    table = [  # step: (c0 row, c1 row, c2 row) -> frames completed
        ((P, P, P), []),
        ((a0, P, P), []),
        ((a1, b0, P), []),
        ((a2, b1, c0), [(a0, b0, c0)]),
        ((S, b2, c1), [(a1, b1, c1)]),
        ((P, S, c2), [(a2, b2, c2)]),
        ((P, P, S), []),  # frame 3 = (S, S, S): every codebook stopped -> nothing more
    ]
    asm = FrameAssembler(tok)
    for fed, want in table:
        assert [tuple(f.tolist()) for f in asm.push(fed)] == want
    assert asm.ended


def test_frame_assembler_policies_when_codebooks_stop_at_different_frames():
    tok = MiniMindOTokens(n_codebooks=2)
    # codebook 0: a0 a1 STOP; codebook 1: b0 b1 b2 b3 STOP -> frames (a0,b0) (a1,b1) (S,b2) (P,b3)
    columns = [(P, P), (1, P), (2, 5), (S, 6), (P, 7), (P, 8), (P, S)]
    for policy, want in (("all_stop", [(1, 5), (2, 6), (S, 7), (P, 8)]), ("first_stop", [(1, 5), (2, 6)])):
        asm = FrameAssembler(tok, policy)
        got = [tuple(f.tolist()) for col in columns for f in asm.push(col)]
        assert got == want, policy
    assert playable(torch.tensor([[S, 7], [P, 8], [2048, 2111]]), tok).tolist() == [[0, 7], [0, 8], [0, 0]]


def test_frame_assembler_inverts_the_training_layout():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2048, (5, 8), generator=g)
    lay = build_layout(TOK, [1, 40, 41], [50, 51, 2, 7], codes)
    asm = FrameAssembler(TOK)
    frames = [f for col in lay.inputs[:8, lay.start:].t().tolist() + [[S] * 8] for f in asm.push(col)]
    assert torch.equal(torch.stack(frames), codes)


# ------------------------------------------------------------------------------------------------ stop handling
class ScriptedSource:
    """One-hot logits from a script: text ids per step, and per codebook the codes of its frames (then whatever id
    ends it). Records the columns fed back."""

    def __init__(self, tok: MiniMindOTokens, text: list[int], audio: list[list[int]]) -> None:
        self.tok, self.text, self.audio = tok, text, audio
        self.fed: list[list[int]] = []

    def _logits(self) -> StepLogits:
        j = len(self.fed)
        text = torch.full((self.tok.text_vocab,), -10.0)
        text[self.text[min(j, len(self.text) - 1)]] = 10.0

        def audio(c: int) -> torch.Tensor:
            k = j - c - 1  # frame index of codebook c at step j
            assert 0 <= k < len(self.audio[c]), f"codebook {c} asked at step {j} (frame {k})"
            out = torch.full((self.tok.audio_vocab,), -10.0)
            out[self.audio[c][k]] = 10.0
            return out
        return StepLogits(text=text, audio=audio)

    def prefill(self, batch):
        return self._logits()

    def step(self, column):
        self.fed.append(column.tolist())
        return self._logits()


def scripted_batch(tok: MiniMindOTokens) -> dict:
    return {"input_ids": generation_prompt(tok, [1, 40, 41, 2, 1, 42]).unsqueeze(0)}


def test_stop_handling_with_scripted_logits():
    tok = MiniMindOTokens(n_codebooks=3, text_vocab=64)
    # codebook 0 stops with STOP after 2 frames, codebook 1 with 2048 after 3, codebook 2 with 2111 after 3
    audio = [[100, 101, S], [200, 201, 202, 2048], [300, 301, 302, 2111]]
    src = ScriptedSource(tok, text=[50, 51, tok.im_end, 63], audio=audio)
    gen = collect(decode_steps(src, tok, scripted_batch(tok), SamplingConfig.greedy(), newline=[7]), tok)
    assert gen.text_ids == [50, 51, tok.im_end] and not gen.interrupted
    # text row fed: answer, <|im_end|>, the forced newline, then pad; STOP fed once per codebook, PAD after
    assert gen.columns.tolist() == [
        [P, 100, 101, S, P, P, P],
        [P, P, 200, 201, 202, S, P],
        [P, P, P, 300, 301, 302, S],
        [50, 51, tok.im_end, 7, 0, 0, 0],
    ]
    assert src.fed == gen.columns.t().tolist()[:-1]  # the last column is never fed
    # frames until all three codebooks stopped; specials become 0 only for Mimi
    assert gen.frames.tolist() == [[100, 200, 300], [101, 201, 301], [S, 202, 302]]
    assert playable(gen.frames, tok).tolist()[-1] == [0, 202, 302]
    first = collect(decode_steps(ScriptedSource(tok, [50, 51, tok.im_end], audio), tok, scripted_batch(tok),
                                 SamplingConfig.greedy(frames_until="first_stop")), tok)
    assert first.frames.tolist() == [[100, 200, 300], [101, 201, 301]]


def test_text_only_and_max_new_tokens_and_interrupt():
    tok = MiniMindOTokens(n_codebooks=3, text_vocab=64)
    audio = [[100] * 50, [200] * 50, [300] * 50]
    src = ScriptedSource(tok, [50, 51, tok.im_end], audio)
    text_only = collect(decode_steps(src, tok, scripted_batch(tok), SamplingConfig.greedy(speech=False)), tok)
    assert text_only.columns.shape[1] == 3 and (text_only.columns[:3] == P).all() and len(text_only.frames) == 0
    capped = collect(decode_steps(ScriptedSource(tok, [50], audio), tok, scripted_batch(tok),
                                  SamplingConfig.greedy(max_new_tokens=6)), tok)
    assert capped.columns.shape[1] == 6 and len(capped.frames) == 3  # frames 0..2 complete at steps 3..5
    calls = []
    stop_after_4 = lambda: calls.append(1) or len(calls) >= 4  # noqa: E731
    src = ScriptedSource(tok, [50], audio)
    cut = collect(decode_steps(src, tok, scripted_batch(tok), SamplingConfig.greedy(), interrupt=stop_after_4), tok)
    assert cut.interrupted and cut.columns.shape[1] == 4 and len(src.fed) == 3


# ------------------------------------------------------------------------------------------------ tiny model
class Nudged:
    """The tiny model's source, with scripted nudges (big logit bonuses) so that a short run goes through
    `<|im_end|>`, the forced newline and pad, and STOP / PAD on every codebook."""

    def __init__(self, model: MiniMindO, nudges: dict[tuple[int, int], int]) -> None:
        self.inner, self.nudges, self.j = ModelSource(model), nudges, 0
        self.states: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _wrap(self, out: StepLogits) -> StepLogits:
        j, nudges = self.j, self.nudges
        self.states.append((self.inner.h[0].clone(), self.inner.g[0].clone()))
        text = out.text.clone()
        if (j, 8) in nudges:
            text[nudges[(j, 8)]] += 1e4

        def audio(c: int) -> torch.Tensor:
            a = out.audio(c).clone()
            if (j, c) in nudges:
                a[nudges[(j, c)]] += 1e4
            return a
        return StepLogits(text, audio)

    def prefill(self, batch):
        return self._wrap(self.inner.prefill(batch))

    def step(self, column):
        self.j += 1
        return self._wrap(self.inner.step(column))


def test_kv_cache_decoding_equals_teacher_forced_forward(tiny):
    tok = tiny.tokens
    g = torch.Generator().manual_seed(1)
    voice = Voice(torch.randint(0, 2048, (4, 8), generator=g), torch.randn(tiny.cfg.spk_dim, generator=g))
    batch = prompt_batch(tiny, [1, 60, 61, 62, 2, 7, 1, 63, 64, 7], voice)
    nudges = {(5, 8): tok.im_end, **{(c + 5, c): S for c in range(8)}}  # text ends at step 5, audio frame 4
    src = Nudged(tiny, nudges)
    gen = collect(decode_steps(src, tok, batch, SamplingConfig.greedy(max_new_tokens=40), newline=[7]), tok)
    J = gen.columns.shape[1]
    assert J == 13 and gen.text_ids[-1] == tok.im_end and gen.frames.shape == (4, 8)
    assert gen.columns[8, 5:8].tolist() == [tok.im_end, 7, 0] and gen.columns[:8, -1].tolist() == [P] * 7 + [S]
    full = torch.cat([batch["input_ids"][0], gen.columns[:, :-1]], dim=1).unsqueeze(0)  # (1, 9, P + J - 1)
    with torch.no_grad():
        h, gt = tiny.hidden({"input_ids": full, "speaker_emb": batch["speaker_emb"]})
    s = batch["input_ids"].shape[-1]
    assert len(src.states) == J
    checked = 0
    for j, step in enumerate(gen.steps):
        pos = s - 1 + j
        torch.testing.assert_close(src.states[j][0], h[0, pos], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(src.states[j][1], gt[0, pos], atol=1e-4, rtol=1e-4)
        for row, sampled in enumerate(step.sampled):
            if sampled is None or (j, row) in nudges:
                continue
            logits = tiny.text_logits(h[0, pos]) if row == 8 else tiny.audio_logits(gt[0, pos], row)
            banned = [tok.audio_pad, tok.image_pad] if row == 8 else []
            logits[banned] = float("-inf")
            assert int(logits.argmax()) == sampled, (j, row)
            checked += 1
    assert checked == 5 + 4 * 8  # 5 free text tokens, frames 0..3 of each codebook


def test_generation_prompt_places_reference_and_speaker_like_training():
    g = torch.Generator().manual_seed(2)
    ref = torch.randint(0, 2048, (3, 8), generator=g)
    prompt = [1, 40, 41, 42, 2, 7, 1, 43]
    cols = generation_prompt(TOK, prompt, ref, speaker=True)  # (9, 8)
    assert cols[8].tolist() == prompt
    assert (cols[:8, :4] == P).all() and (cols[:8, 4] == X).all() and torch.equal(cols[:8, 5:].t(), ref)
    assert (generation_prompt(TOK, prompt, None, speaker=True)[:8, -1] == X).all()
    long_ref = torch.randint(0, 2048, (20, 8), generator=g)  # longer than the prompt: cut from the left
    cols = generation_prompt(TOK, prompt, long_ref, speaker=True)
    assert (cols[:8, 0] == X).all() and torch.equal(cols[:8, 1:].t(), long_ref[-7:])


def test_generate_is_seeded(tiny):
    batch = prompt_batch(tiny, [1, 60, 61, 2, 7, 1, 63])
    a = generate(tiny, batch, SamplingConfig(max_new_tokens=12, seed=3))
    b = generate(tiny, batch, SamplingConfig(max_new_tokens=12, seed=3))
    assert torch.equal(a.columns, b.columns) and a.columns.shape[1] == 12


# ------------------------------------------------------------------------------------------------ playback
def test_incremental_mimi_decode_equals_one_shot(tiny_mimi):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 2048, (23, 8), generator=g)
    ref = decode(tiny_mimi, frames)
    dec = MimiStreamDecoder(tiny_mimi)
    assert dec.context == receptive_frames(tiny_mimi.config) == 4
    chunks = [dec.push(frames[i:j]) for i, j in ((0, 4), (4, 5), (5, 11), (11, 15), (15, 23))]
    assert [len(c) for c in chunks] == [n * 1920 for n in (4, 1, 6, 4, 8)]
    out = np.concatenate(chunks)
    assert out.shape == ref.shape == (23 * samples_per_frame(tiny_mimi),) and sample_rate(tiny_mimi) == 24000
    np.testing.assert_allclose(out, ref, atol=1e-4 * float(np.abs(ref).max()))
    short = MimiStreamDecoder(tiny_mimi, context=1)  # too little context: audibly different at chunk edges
    bad = np.concatenate([short.push(frames[i:i + 4]) for i in range(0, 23, 4)])
    assert np.abs(bad - ref).max() > 1e-2 * float(np.abs(ref).max())
    with pytest.raises(ValueError, match="playable"):
        dec.push(torch.full((1, 8), S))


def test_stream_events_text_then_audio_chunks(tiny, tiny_mimi):
    tok = tiny.tokens
    batch = prompt_batch(tiny, [1, 60, 61, 2, 7, 1, 63])
    events = list(stream(tiny, batch, SamplingConfig(max_new_tokens=19, seed=0), mimi=tiny_mimi,
                         decode_text=lambda ids: " ".join(map(str, ids)), chunk_frames=4))
    assert events[-1].done and not events[-1].interrupted and all(not e.done for e in events[:-1])
    chunks = [e for e in events if e.frames is not None]
    assert [len(e.frames) for e in chunks] == [4, 4, 3]  # 19 steps -> frames 0..10 (frame k done at step k + 8)
    assert all(len(e.audio) == len(e.frames) * 1920 for e in chunks)
    text_ids = [i for e in events for i in e.text_ids]
    assert len(text_ids) == 19 and " ".join(e.text for e in events if e.text).split() == [str(i) for i in text_ids]
    first_audio = next(i for i, e in enumerate(events) if e.audio is not None)
    assert sum(len(e.text_ids) for e in events[: first_audio + 1]) == 12  # 4 frames ready after step 11
    gen = generate(tiny, batch, SamplingConfig(max_new_tokens=19, seed=0))
    assert torch.equal(torch.cat([e.frames for e in chunks]), gen.frames)
    wav = np.concatenate([e.audio for e in chunks])
    np.testing.assert_allclose(wav, decode(tiny_mimi, playable(gen.frames, tok)), atol=1e-3)


def test_stream_stops_when_the_interrupt_event_is_set(tiny):
    import threading

    batch = prompt_batch(tiny, [1, 60, 61, 2, 7, 1, 63])
    stop = threading.Event()
    events = []
    for event in stream(tiny, batch, SamplingConfig(max_new_tokens=100, seed=0), interrupt=stop):
        events.append(event)
        if len(events) == 3:
            stop.set()  # e.g. set by a capture thread's BargeIn
    assert events[-1].done and events[-1].interrupted
    assert sum(len(e.text_ids) for e in events) == 4  # checked after each step: one more step ran


# ------------------------------------------------------------------------------------------------ real speech
def synth(tmp_path, text: str, voice: str = "en-us+m3") -> str:
    from data.mini_omni.make_sample import Voice as TTSVoice, synthesize

    path = os.path.join(str(tmp_path), f"{abs(hash((text, voice)))}.wav")
    synthesize(TTSVoice("espeak-ng", voice), text, path)
    return path


def read16k(path: str) -> np.ndarray:
    from data.audio import decode_audio

    with open(path, "rb") as f:
        return decode_audio(f.read(), 16000)


def dominant_hz(wav: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[spec.argmax()])


def test_speed_up_methods_keep_or_shift_the_pitch():
    from omni.minimind_o.voice import speed_up

    sr = 24000
    tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(3 * sr) / sr)).astype(np.float32)
    stretched, resampled = speed_up(tone, sr, 1.5, "stretch"), speed_up(tone, sr, 1.5, "resample")
    assert len(stretched) == 2 * sr and abs(len(resampled) - 2 * sr) <= 1
    assert abs(dominant_hz(stretched, sr) - 200) < 3 and abs(dominant_hz(resampled, sr) - 300) < 3
    with pytest.raises(ValueError, match="valid choices"):
        speed_up(tone, sr, 1.5, "warp")


def test_voice_cloning_prompt_from_a_real_recording(tiny, tiny_mimi, tmp_path):
    from data.audio import read_audio_bytes, resample
    from omni.minimind_o.voice import load_reference, reference_voice, speaker_encoder, speed_up

    path = synth(tmp_path, "This is my voice, please speak like me.")
    encoder = speaker_encoder()  # resemblyzer GE2E, 256-d = the tiny config's spk_dim
    voice = load_reference(path, tiny_mimi, encoder, spk_dim=tiny.cfg.spk_dim)
    with open(path, "rb") as f:
        wav, sr = read_audio_bytes(f.read())
    n24 = len(resample(wav, sr, 24000))
    fast = speed_up(resample(wav, sr, 24000), 24000)  # 1.5x faster, same pitch
    assert len(fast) == round(n24 / 1.5) and voice.ref_codes.shape == (-(-len(fast) // 1920), 8)
    assert torch.equal(voice.ref_codes, encode(tiny_mimi, fast))
    assert voice.speaker_emb.shape == (256,) and abs(float(voice.speaker_emb.norm()) - 1) < 1e-4
    R = voice.ref_codes.shape[0]
    prompt = [1, *range(40, 40 + R + 6), 2, 7, 1, 60, 7]
    batch = prompt_batch(tiny, prompt, voice)
    cols, s = batch["input_ids"][0], len(prompt)
    assert torch.equal(cols[:8, s - R:].t(), voice.ref_codes)  # right-aligned, ends at s - 1, no delay
    assert (cols[:8, s - R - 1] == X).all() and (cols[:8, : s - R - 1] == P).all()
    assert torch.equal(batch["speaker_emb"][0], voice.speaker_emb)
    src = ModelSource(tiny)  # the embedding reaches the Talker (through spk_proj at the SPEAKER position)
    g_voice = src.prefill(batch).audio(0)
    g_other = src.prefill({**batch, "speaker_emb": -batch["speaker_emb"]}).audio(0)
    assert not torch.allclose(g_voice, g_other)
    gen = generate(tiny, batch, SamplingConfig(max_new_tokens=10, seed=0))
    assert gen.columns.shape == (9, 10)
    with pytest.raises(ValueError, match="spk_dim=192"):
        load_reference(path, tiny_mimi, encoder, spk_dim=192)
    with pytest.raises(ValueError, match=">= 1.8 s"):
        reference_voice(wav[: int(1.7 * sr)], sr, tiny_mimi)
    long = reference_voice(np.tile(wav, 12), sr, tiny_mimi, max_frames=40)  # ~26 s -> cut to 40 frames
    assert long.ref_codes.shape == (40, 8) and long.speaker_emb is None


def mic(stream_16k: np.ndarray, chunk: int = 1600):
    """A fake microphone: the next 100 ms of a 16 kHz stream per call (None when exhausted)."""
    pos = [0]

    def read():
        out = stream_16k[pos[0]: pos[0] + chunk] if pos[0] < len(stream_16k) else None
        pos[0] += chunk
        return out
    return read


def test_vad_turn_start_and_end_on_real_speech(tmp_path):
    from omni.minimind_o.barge_in import TurnDetector

    speech = read16k(synth(tmp_path, "Hello there, what is the weather like today?"))
    silence = np.zeros(16000, dtype=np.float32)
    audio = np.concatenate([silence, speech, silence, silence])
    det = TurnDetector()
    read, events = mic(audio), []
    while (chunk := read()) is not None:
        events += det.push(chunk)
    assert [e.kind for e in events] == ["start", "end"]
    onset, offset = 1.0 + 0.05, 1.0 + len(speech) / 16000 - 0.05  # the synthesizer pads 50 ms
    assert onset + 0.128 <= events[0].time <= onset + 0.128 + 0.3
    assert offset + 0.8 <= events[1].time <= offset + 0.8 + 0.4
    assert abs(len(events[1].audio) / 16000 - len(speech) / 16000) < 0.6
    det.reset()
    noise = np.random.default_rng(0).normal(0, 0.003, 3 * 16000).astype(np.float32)
    assert det.push(noise) == []


def test_barge_in_interrupts_generation(tiny, tmp_path):
    from omni.minimind_o.barge_in import BargeIn

    speech = read16k(synth(tmp_path, "Wait, stop please."))
    batch = prompt_batch(tiny, [1, 60, 61, 2, 7, 1, 63])
    barge = BargeIn()
    quiet = np.zeros(16000 * 4, dtype=np.float32)
    with barge.generating():  # the user stays silent: the answer runs to max_new_tokens
        gen = generate(tiny, batch, SamplingConfig(max_new_tokens=30, seed=0), interrupt=barge.poll(mic(quiet)))
    assert not gen.interrupted and gen.columns.shape[1] == 30
    talk = np.concatenate([np.zeros(8000, dtype=np.float32), speech, quiet])
    t0 = barge.detector.consumed / 16000  # stream time already fed
    with barge.generating() as interrupt:
        gen = generate(tiny, batch, SamplingConfig(max_new_tokens=200, seed=0), interrupt=barge.poll(mic(talk)))
    assert gen.interrupted and interrupt.is_set()
    start = next(e for e in barge.events if e.kind == "start")
    # one 100 ms chunk is fed per step: the step whose chunk completed the 128 ms of speech is the last
    assert gen.columns.shape[1] == int(np.ceil((start.time - t0) / 0.1 - 1e-9)) < 20


@pytest.mark.slow
def test_time_stretch_equals_librosa_time_stretch():
    import librosa

    from omni.minimind_o.voice import time_stretch

    rng = np.random.default_rng(0)
    wav = (0.3 * np.sin(np.arange(40000) * 0.05) + rng.normal(0, 0.02, 40000)).astype(np.float32)
    np.testing.assert_allclose(time_stretch(wav, 1.5), librosa.effects.time_stretch(wav, rate=1.5), atol=1e-4)


def test_chat_prompt_equals_the_training_prompt_of_sample_rows(tiny):
    """Generation prompts (chat_batch) are the first s columns + features of the training examples the
    datamodule builds from the bundled sample: T2A with reference codes and speaker, A2A, I2T."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from data.audio import decode_audio
    from data.minimind_o.dataset import MiniMindODataset, MiniMindOIndex, RowReader
    from data.minimind_o.schema import parse_conversation
    from omni.minimind_o.layout import frames_from_flat

    cfg = tiny.cfg
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tk = AutoTokenizer.from_pretrained(os.path.join(root, "omni", "minimind_o", "assets", "tiny_tokenizer"))
    encode = lambda s: list(tk.encode(s, add_special_tokens=False))  # noqa: E731
    path = os.path.join(root, "data", "sample_minimind", "val", "shard-00000.parquet")
    reader = RowReader(cfg.tokens, tk, cfg.audio_encoder, cfg.vision_encoder, cfg.spk_dim, 1024)
    dataset = MiniMindODataset(MiniMindOIndex([path], reader))
    done = set()
    for rec in pq.read_table(path).to_pylist():
        example = dataset.example(rec)
        task, lay = example["task"], example["layout"]
        if task in done or (task == "t2a" and not (rec.get("ref_audios") and rec.get("spk_emb"))):
            continue
        done.add(task)
        voice = Voice(frames_from_flat(rec["ref_audios"]) if rec.get("ref_audios") else None,
                      torch.tensor(rec["spk_emb"]) if rec.get("spk_emb") else None)
        clips = [decode_audio(b, 16000) for b in rec.get("question_audios") or []]
        image = rec["image_bytes"] if isinstance(rec.get("image_bytes"), bytes) else None
        batch = chat_batch(tiny, encode, parse_conversation(rec["conversations"])[:-1], voice, clips, image)
        assert torch.equal(batch["input_ids"][0], lay.inputs[:, : lay.start]), task
        if task == "t2a":
            assert (batch["input_ids"][0, :8] == X).any() and torch.equal(batch["speaker_emb"][0],
                                                                         example["speaker_emb"])
        if task == "a2a":
            torch.testing.assert_close(batch["audio_mels"], torch.stack(example["audio_mels"]))
            assert batch["audio_frames"].tolist() == list(example["audio_frames"])
        if task == "i2t":
            torch.testing.assert_close(batch["pixel_values"], torch.stack(example["pixel_values"]))
    assert done == {"t2a", "a2a", "i2t"}
    with pytest.raises(ValueError, match="question audio 0"):
        chat_batch(tiny, encode, [{"role": "user", "content": ""}], question_audio=[np.zeros(16000 * 6)])


@pytest.mark.slow
def test_incremental_decode_equals_one_shot_on_the_released_mimi_architecture():
    mimi = load_mimi(None, "mimi", seed=0)  # the real architecture (seeded random weights; no hub here)
    frames = torch.randint(0, 2048, (30, 8), generator=torch.Generator().manual_seed(1))
    ref = decode(mimi, frames)
    dec = MimiStreamDecoder(mimi)
    assert dec.context == 4
    out = np.concatenate([dec.push(frames[i:i + 3]) for i in range(0, 30, 3)])
    np.testing.assert_allclose(out, ref, atol=1e-4 * float(np.abs(ref).max()))
