"""Web demo without a server: the shared input checks (messages for no audio, silence, wrong format, too long /
too short; the energy threshold against hand-computed levels), the family registry, and each family's handler
called directly on a tiny model (Mini-Omni: training's features + streamed speech; MiniMind-O: text / voice chat,
voice cloning >= 1.8 s, barge-in; Mini-Omni3: a scripted session's timeline against a hand-drawn table).
The page itself is tested in a real browser in tests/test_demo_browser.py."""
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from omni.config import load_group_config
from omni.demo import DemoConfig, DemoContext, DemoInputError, SpokenAnswer, guard, loudest_dbfs, read_audio
from tests.conftest import CONF, ROOT

torch.set_num_threads(1)
CFG = DemoConfig()


def sine(amplitude: float, seconds: float, sr: int = 16000, hz: float = 500.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write(tmp_path, name: str, wav: np.ndarray, sr: int = 16000) -> str:
    path = str(tmp_path / name)
    sf.write(path, wav, sr, subtype="FLOAT")
    return path


def synth(tmp_path, text: str, voice: str = "en-us+m3") -> str:
    from data.mini_omni.make_sample import Voice as TTSVoice, synthesize

    path = os.path.join(str(tmp_path), f"{abs(hash((text, voice)))}.wav")
    synthesize(TTSVoice("espeak-ng", voice), text, path)
    return path


# ------------------------------------------------------------------------------------------------ input checks
def test_loudest_window_level_by_hand():
    # a 500 Hz sine fills each 20 ms window (320 samples at 16 kHz) with whole periods: RMS = A / sqrt(2)
    assert loudest_dbfs(sine(0.5, 1.0), 16000) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=1e-3)
    # one loud window among zeros: the loudest window counts, not the average over the clip
    wav = np.zeros(16000, np.float32)
    wav[640:960] = 0.1  # exactly window 2 -> RMS 0.1 = -20 dBFS (averaged over 1 s it would be -34 dBFS)
    assert loudest_dbfs(wav, 16000) == pytest.approx(-20.0, abs=1e-4)
    wav = np.zeros(16000 + 100, np.float32)
    wav[-100:] = 0.5  # a partial last window: RMS over its own 100 samples (0.5 = -6.02 dBFS), not over 320
    assert loudest_dbfs(wav, 16000) == pytest.approx(20 * math.log10(0.5), abs=1e-3)
    assert loudest_dbfs(np.zeros(800, np.float32), 16000) == float("-inf")


def test_silence_threshold(tmp_path):
    # -50 dBFS threshold: A = 0.01 -> -43.0 dBFS is speech-level enough; A = 0.002 -> -57.0 dBFS is silence
    out = read_audio(write(tmp_path, "quiet.wav", sine(0.01, 1.0)), 16000, CFG)
    assert out.shape == (16000,)
    with pytest.raises(DemoInputError, match=r"only silence \(its loudest 20 ms is -57 dBFS, under -50 dBFS\)"):
        read_audio(write(tmp_path, "silent.wav", sine(0.002, 1.0)), 16000, CFG)
    with pytest.raises(DemoInputError, match="only silence .* -inf dBFS"):
        read_audio((16000, np.zeros(16000, np.int16)), 16000, CFG)


def test_input_messages(tmp_path):
    with pytest.raises(DemoInputError, match="No question audio: record one with the microphone or upload"):
        read_audio(None, 16000, CFG)
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    with pytest.raises(DemoInputError, match=r"Cannot read the question audio 'notes.wav': .*WAV, FLAC or OGG"):
        read_audio(str(bad), 16000, CFG)
    long = write(tmp_path, "long.wav", sine(0.1, 31.0, sr=8000), sr=8000)
    with pytest.raises(DemoInputError, match=r"is 31.0 s long; this demo takes at most 30 s\. Trim it"):
        read_audio(long, 16000, CFG)
    with pytest.raises(DemoInputError, match=r"at most 3 s \(the encoder window is 3 s\)"):
        read_audio(write(tmp_path, "4s.wav", sine(0.1, 4.0)), 16000, CFG, max_seconds=3.0,
                   limit_reason="the encoder window is 3 s")
    with pytest.raises(DemoInputError, match=r"reference voice audio is 1.00 s long; it must last at least 1.8 s"):
        read_audio(write(tmp_path, "1s.wav", sine(0.1, 1.0)), 24000, CFG, what="reference voice", min_seconds=1.8)
    # Gradio's microphone numpy (int16) is scaled by 1/32768 and resampled: 8 kHz -> 16 kHz doubles the length
    out = read_audio((8000, (sine(0.5, 0.5, sr=8000) * 32767).astype(np.int16)), 16000, CFG)
    assert out.shape == (8000,) and 0.45 < np.abs(out).max() < 0.55


def test_guard_shows_a_message_never_a_traceback():
    def handler(kind):
        yield {"text": "partial"}
        raise DemoInputError("No question audio.") if kind == "input" else RuntimeError("boom\nline two")

    assert list(guard(handler, "status")("input")) == [{"text": "partial"}, {"status": "⚠️ No question audio."}]
    assert list(guard(handler, "status")("bug"))[-1] == {"status": "❌ Error: RuntimeError: boom"}


def test_demo_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"demo.prot is not a demo setting; valid: \['host', 'port'"):
        DemoConfig.from_mapping({"prot": 1})
    with pytest.raises(ValueError, match=r"demo.port = 70000"):
        DemoConfig.from_mapping({"port": 70000})
    eval_cfg = OmegaConf.load(CONF / "eval.yaml")
    assert DemoConfig.from_mapping(eval_cfg.demo).host == "127.0.0.1"  # loopback by default


def test_registry_imports_each_family_page_lazily():
    from omni.families import demo_module, registry
    from omni.mini_omni3.model import MiniOmni3

    assert {name: f.demo for name, f in registry().items()} == {
        "mini_omni": "omni.mini_omni.demo", "mini_omni3": "omni.mini_omni3.demo", "minimind_o": "omni.minimind_o.demo"}
    fake = MiniOmni3.__new__(MiniOmni3)
    assert demo_module(fake).__name__ == "omni.mini_omni3.demo"
    with pytest.raises(TypeError, match="Linear belongs to no registered family; known: "
                                        "\\['MiniOmni', 'MiniOmni3', 'MiniMindO'\\]"):
        demo_module(torch.nn.Linear(1, 1))
    shared = (ROOT / "omni" / "demo.py").read_text()
    for name in ("mini_omni", "minimind", "MiniOmni", "MiniMind"):
        assert name not in shared, f"the shared demo code names a family ({name})"


def test_spoken_answer_accumulates():
    ans = SpokenAnswer(24000)
    assert ans.add("Hel", None).first_audio_s is None
    u = ans.add("lo", np.ones(10, np.float32))
    assert u.text == "Hello" and u.first_audio_s is not None and u.chunk.shape == (10,)
    ans.add("", np.zeros(5, np.float32))
    final = ans.finish()
    assert final.done and final.audio.shape == (15,) and final.first_audio_s == u.first_audio_s


# ------------------------------------------------------------------------------------------------ Mini-Omni
@pytest.fixture(scope="module")
def mini_omni():
    from transformers import AutoTokenizer

    from omni.mini_omni.demo import MiniOmniDemo
    from omni.mini_omni.model import MiniOmni, MiniOmniConfig

    node = load_group_config(CONF / "model" / "mini_omni_tiny.yaml").cfg
    node.tokenizer_path = str(ROOT / "omni" / "assets" / "tiny_tokenizer")
    raw = OmegaConf.to_container(node, resolve=True)
    raw.pop("_target_"), raw.pop("_convert_")
    raw["whisper"]["max_source_positions"] = 150  # 3 s window
    torch.manual_seed(0)
    model = MiniOmni(MiniOmniConfig(**raw)).eval()
    ctx = DemoContext(model, AutoTokenizer.from_pretrained(raw["tokenizer_path"]),
                      sampling={"temperature": 0.0, "top_k": 1, "max_new_tokens": 24, "seed": 0},
                      codec={"arch": "tiny"}, stride=2)
    return MiniOmniDemo(ctx)


def test_mini_omni_question_features_equal_training(mini_omni):
    """The demo's example of a recording == data.mini_omni.dataset.OmniDataset's example of the same bytes."""
    from data.mini_omni.dataset import OmniDataset, ParquetIndex
    from data.audio import decode_audio

    shard = ROOT / "data" / "sample" / "test" / "shard-00000.parquet"
    rec = pq.read_table(shard).slice(0, 1).to_pylist()[0]
    ds = OmniDataset(ParquetIndex(str(shard), window_s=3.0, max_audio_frames=150), mini_omni.ctx.tokenizer,
                     mini_omni.model.tokens, n_mels=80, max_source_positions=150)
    mels, n_frames = ds._audio(rec["question_audio"])
    example, task = mini_omni.example(decode_audio(rec["question_audio"], 16000))
    assert task == "a1a2" and example["n_audio_frames"] == n_frames
    assert n_frames == min(150, int(len(decode_audio(rec["question_audio"], 16000)) / 16000 * 1000 // 20) + 1)
    torch.testing.assert_close(example["mels"], mels)


def test_mini_omni_streams_text_and_speech(mini_omni, tmp_path):
    wav = synth(tmp_path, "what is the capital of france")
    updates = list(mini_omni.answer(wav))
    final = updates[-1]
    assert final.done and all(not u.done for u in updates[:-1])
    chunks = [u.chunk for u in updates if u.chunk is not None]
    assert chunks and final.audio is not None
    np.testing.assert_array_equal(final.audio, np.concatenate(chunks))  # the whole answer = the streamed chunks
    assert all(c.shape[0] == 2 * 2048 for c in chunks[:-1])  # stride 2 SNAC frames of 2048 samples (24 kHz)
    assert final.sample_rate == 24000 and final.audio.shape[0] % 2048 == 0
    texts = [u.text for u in updates]
    assert all(a == b[: len(a)] for a, b in zip(texts, texts[1:]))  # the text only grows
    first = next(u for u in updates if u.chunk is not None)
    assert final.first_audio_s == first.first_audio_s > 0
    assert "s of speech" in final.status


def test_mini_omni_rejects_bad_input(mini_omni, tmp_path):
    with pytest.raises(DemoInputError, match=r"at most 3 s \(the audio encoder's window is 3 s\)"):
        list(mini_omni.answer(write(tmp_path, "5s.wav", sine(0.1, 5.0))))
    with pytest.raises(DemoInputError, match="no vision tower"):
        list(mini_omni.answer(write(tmp_path, "ok.wav", sine(0.1, 1.0)), image=str(tmp_path / "x.png")))


# ------------------------------------------------------------------------------------------------ MiniMind-O
@pytest.fixture(scope="module")
def minimind():
    from transformers import AutoTokenizer

    from omni.minimind_o.demo import MiniMindODemo
    from omni.minimind_o.model import MiniMindO, MiniMindOConfig

    node = load_group_config(CONF / "model" / "minimind_o_tiny.yaml").cfg
    node.tokenizer_path = str(ROOT / "omni" / "minimind_o" / "assets" / "tiny_tokenizer")
    raw = OmegaConf.to_container(node, resolve=True)
    raw.pop("_target_"), raw.pop("_convert_")
    torch.manual_seed(5)
    model = MiniMindO(MiniMindOConfig(**raw)).eval()
    ctx = DemoContext(model, AutoTokenizer.from_pretrained(raw["tokenizer_path"]),
                      sampling={"temperature": 0.0, "top_k": 1, "max_new_tokens": 24, "seed": 0},
                      codec={"arch": "tiny"}, stride=2)
    return MiniMindODemo(ctx)


def test_minimind_text_and_voice_chat(minimind, tmp_path):
    updates = list(minimind.respond("t", "what is one plus two"))
    final = updates[-1]
    chunks = [u.chunk for u in updates if u.chunk is not None]
    assert final.done and chunks and final.first_audio_s > 0
    np.testing.assert_array_equal(final.audio, np.concatenate(chunks))
    assert all(c.shape[0] == 2 * 1920 for c in chunks[:-1])  # stride 2 Mimi frames of 1920 samples (24 kHz)
    assert minimind.state("t").messages == [{"role": "user", "content": "what is one plus two"},
                                            {"role": "assistant", "content": final.text}]
    spoken = list(minimind.respond("t", "", synth(tmp_path, "and two plus two")))[-1]  # a spoken second turn
    assert spoken.done and len(minimind.state("t").messages) == 4
    with pytest.raises(DemoInputError, match="Nothing to answer: type a message"):
        list(minimind.respond("t", "  ", None))


def test_minimind_voice_cloning_needs_1_8_s(minimind, tmp_path):
    short = write(tmp_path, "short.wav", sine(0.2, 1.7, sr=24000), sr=24000)
    with pytest.raises(DemoInputError, match=r"reference voice audio is 1.70 s long; it must last at least 1.8 s "
                                             r"\(voice cloning needs a reference of at least 1.8 s\)"):
        minimind.set_voice("v", short)
    assert minimind.state("v").voice is None
    status = minimind.set_voice("v", synth(tmp_path, "this is my voice, please speak like me", "en-us+f2"))
    voice = minimind.state("v").voice
    assert status.startswith("✅ Voice cloned") and voice.ref_codes.shape[1] == 8
    assert voice.speaker_emb is not None and voice.speaker_emb.shape == (256,)  # resemblyzer = tiny spk_dim
    assert list(minimind.respond("v", "hello"))[-1].done
    assert minimind.clear_voice("v") and minimind.state("v").voice is None


def test_minimind_barge_in_stops_the_answer(minimind, tmp_path):
    from data.audio import decode_audio

    speech = decode_audio(open(synth(tmp_path, "wait, stop please"), "rb").read(), 16000)
    quiet = (16000, np.zeros(8000, np.int16))
    gen = minimind.respond("b", "tell me a story")
    first = next(gen)  # generating now
    assert not first.done and minimind.hear("b", quiet) == ""  # silence does not interrupt
    heard = [minimind.hear("b", (16000, (speech[i:i + 4000] * 32767).astype(np.int16)))
             for i in range(0, len(speech), 4000)]
    assert "🎤 Heard you: stopping the answer." in heard
    rest = list(gen)
    assert rest[-1].done and rest[-1].status.startswith("⏹ Stopped: you started speaking")
    # negative control: the same question uninterrupted runs longer
    full = list(minimind.respond("c", "tell me a story"))
    assert len(full) > len(rest) + 1 and "Stopped" not in full[-1].status


# ------------------------------------------------------------------------------------------------ Mini-Omni3
def test_mini_omni3_timeline_of_a_scripted_session(tmp_path):
    """Decisions, replies with emotion and per-chunk latency, against a hand-drawn table."""
    from transformers import AutoTokenizer

    from omni.mini_omni3.demo import COLUMNS, MiniOmni3Demo
    from tests.test_mini_omni3_session import HAPPY, KS, TB, TE, ScriptedLM

    tok = AutoTokenizer.from_pretrained(ROOT / "omni" / "assets" / "tiny_tokenizer")
    model = ScriptedLM([KS, TB, HAPPY, 40, 41, TE, KS, TB, 42, TE])  # chunk 3: a reply without emotion
    model.cfg.system_prompt = "hi"  # ids 71, 72: inside the scripted model's 128-id table
    demo = MiniOmni3Demo(DemoContext(model, tok, session={"temperature": 0.0}))
    wav = sine(0.1, 1.5)  # 24000 samples: 3 whole 0.4 s chunks + a partial one (zero-padded at the end)
    steps, timeline, heard = [], None, None
    for timeline, heard in demo.replay(write(tmp_path, "q.wav", wav)):  # snapshots of the live table
        steps.append([list(r) for r in timeline.rows])
    assert heard.shape == (24000,)
    table = [[r[0], r[1], r[2], r[4], r[5]] for r in timeline.rows]
    assert COLUMNS[:3] == ["chunk", "audio until (s)", "decision"]
    assert table == [
        [0, 0.4, "listening", "", ""],
        [1, 0.8, "replying", "happy", tok.decode([40, 41])],
        [2, 1.2, "listening", "", ""],
        [3, 1.6, "replying", "normal", tok.decode([42])],
    ]
    assert [r[3] for r in timeline.rows] == [round(s * 1000, 1) for s in timeline.session.chunk_seconds]
    assert [(r["chunk"], r["emotion"]) for r in timeline.replies] == [(1, "happy"), (3, "normal")]
    assert "**@0.8 s [happy]**" in timeline.replies_markdown()
    # the reply text grows live: some intermediate step shows the first piece before reply_end
    partial = [rows[1][5] for rows in steps if len(rows) == 2]
    assert tok.decode([40]) in partial


def test_serve_checks_config_then_rebuilds_through_the_allow_list(tmp_path):
    """mode=demo loads checkpoints like eval.py (omni.evaluate.load_for_eval): a stored config naming a class
    outside the allow-list is refused before anything is built or served; demo config mistakes fail first."""
    from omni.demo import serve
    from omni.families import StoredConfigError

    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "omni_config": {"model": {"_target_": "os.system", "command": "echo hi"}}}, ckpt)
    with pytest.raises(ValueError, match="demo.prot is not a demo setting"):
        serve(OmegaConf.create({"ckpt": str(ckpt), "demo": {"prot": 1}}), block=False)
    with pytest.raises(StoredConfigError, match="'os.system' is not one of the project's model classes"):
        serve(OmegaConf.create({"ckpt": str(ckpt), "demo": {"port": 0}}), block=False)
