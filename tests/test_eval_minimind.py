"""eval.py on MiniMind-O (Thinker-Talker) checkpoints: the inference helper's prompts equal the interactive
`chat_batch` prompts, sampling maps onto MiniMind-O's, the speech producer's wavs are the generated frames decoded
by Mimi, evaluate() writes per-task CER/WER + speech metrics + report + plots, and a task of another family fails
at start naming this family's tasks. Slow: train.py -> eval.py from the command line."""
import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from callbacks.speech import speech_producer
from callbacks.minimind_o.speech import MiniMindOSpeech
from data.audio import decode_audio
from data.minimind_o.schema import parse_conversation
from omni.evaluate import evaluate, load_for_eval
from omni.families import eval_tasks, load_tokenizer, make_inference
from omni.minimind_o.codec import decode, load_mimi
from omni.minimind_o.generate import SamplingConfig, Voice, chat_batch, playable
from omni.minimind_o.infer import MiniMindOInference, sampling_config
from omni.minimind_o.layout import frames_from_flat
from omni.train import build_module
from tests.conftest import compose_cfg
from tests.test_train import compose_eval, run_cli

MM = ["model=minimind_o_tiny", "data=minimind_sample", "stage=sft_t2a"]
GREEDY = {"temperature": 0.0, "top_k": 1, "max_new_tokens": 14, "seed": 0}
FRAME = 1920  # Mimi samples per frame (24 kHz / 12.5 Hz)


@pytest.fixture(scope="module")
def mm(tmp_path_factory):
    """A MiniMind-O checkpoint as train.py writes it (untrained; init seed 5: its greedy text is not empty),
    the helper and the datamodule rebuilt from it as eval.py does."""
    import hydra

    folder = tmp_path_factory.mktemp("mm")
    cfg = compose_cfg(MM, folder)
    torch.manual_seed(5)
    module = build_module(cfg, init_from=None)
    path = folder / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
                "omni_config": OmegaConf.to_container(cfg, resolve=True)}, path)
    model, run_cfg = load_for_eval(str(path))
    infer = make_inference(model, load_tokenizer(model.cfg.tokenizer_path))
    return {"ckpt": path, "infer": infer, "data": hydra.utils.instantiate(OmegaConf.create(run_cfg["data"]))}


def raw_row(example: dict) -> dict:
    return pq.read_table(example["file"]).slice(int(example["row"]), 1).to_pylist()[0]


def test_examples_carry_reference_question_and_voice(mm):
    t2a = mm["data"].examples("test", "t2a", 4)
    assert [e["id"] for e in t2a] == ["t2a-test-001", "t2a-test-003", "t2a-test-005", "t2a-test-007"]
    assert t2a[0]["question_text"] == "what is one plus two" and t2a[0]["answer_text"] == "three"
    # test rows alternate a seen voice (refs of the train split) and the unseen voice flite:kal16
    assert [e["voice_seen"] for e in t2a] == [True, False, True, False]
    assert t2a[1]["voice"] == t2a[3]["voice"] != t2a[0]["voice"] != t2a[2]["voice"]
    a2a = mm["data"].examples("test", "a2a", 1)[0]
    assert a2a["voice"] == "default" and a2a["voice_seen"]  # no conditioning: the model's own (trained) voice
    assert a2a["question_text"] == parse_conversation(raw_row(a2a)["conversations"])[0]["content"]
    i2t = mm["data"].examples("test", "i2t", 1)[0]
    assert i2t["voice"] is None and "<image>" not in i2t["question_text"] and i2t["question_text"]
    train = [mm["data"].examples("train", "t2a", 6) for _ in range(2)]  # the train split's augmentation is off
    assert mm["data"].datasets["train"].augment is not None
    for a, b in zip(*train):
        assert torch.equal(a["layout"].inputs, b["layout"].inputs) and a["voice_seen"]


def test_eval_prompt_is_the_chat_prompt(mm):
    """The batch built from a dataset example equals `chat_batch` of the row's conversation + voice (+ clip)."""
    infer = mm["infer"]
    encode = lambda s: infer.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    for task in ("t2a", "a2a"):
        ex = mm["data"].examples("test", task, 2)[1]
        rec = raw_row(ex)
        voice = Voice(frames_from_flat(rec["ref_audios"]), torch.tensor(rec["spk_emb"]))
        clips = [decode_audio(b, 16000) for b in rec["question_audios"] or []]
        want = chat_batch(infer.model, encode, parse_conversation(rec["conversations"])[:-1], voice=voice,
                          question_audio=clips)
        got = infer.batch(ex, task)
        assert torch.equal(got["input_ids"], want["input_ids"]), task
        assert torch.equal(got["speaker_emb"], want["speaker_emb"]), task
        if clips:
            assert torch.allclose(got["audio_mels"], want["audio_mels"], atol=1e-5)
            assert torch.equal(got["audio_frames"], want["audio_frames"])
    with pytest.raises(ValueError, match="'i2t' row, not 't2a'"):
        infer.batch(mm["data"].examples("test", "i2t", 1)[0], "t2a")


def test_sampling_maps_onto_thinker_and_talker():
    greedy = sampling_config(GREEDY, speech=True)
    assert (greedy.temperature, greedy.audio_temperature, greedy.top_p, greedy.audio_top_p) == (0.0, 0.0, 1.0, 1.0)
    assert (greedy.repetition_penalty, greedy.audio_penalty, greedy.max_new_tokens, greedy.seed) == (1.0, 1.0, 14, 0)
    from omni.mini_omni.generate import SamplingConfig as MiniOmniSampling  # what the text-metrics callback passes

    warm = sampling_config(MiniOmniSampling(temperature=0.8, top_k=5, max_new_tokens=9), speech=False)
    assert (warm.temperature, warm.top_k, warm.audio_temperature, warm.audio_top_k, warm.speech) == \
        (0.8, 5, 0.8, 5, False)
    assert sampling_config({**GREEDY, "audio_temperature": 0.2}, True).audio_temperature == 0.2
    own = SamplingConfig(temperature=0.3)
    assert sampling_config(own, speech=False) == SamplingConfig(temperature=0.3, speech=False)
    with pytest.raises(ValueError, match=r"\['beam'\] are not MiniMind-O sampling settings; valid: \["):
        sampling_config({"beam": 4}, True)


def test_producer_wavs_are_the_generated_frames_decoded(mm):
    infer = mm["infer"]
    producer = speech_producer(infer, codec_arch="tiny", stride=3)
    assert isinstance(producer, MiniMindOSpeech)
    examples = mm["data"].examples("test", "t2a", 2)
    samples = list(producer.speech_samples(examples, "t2a", GREEDY))
    mimi = load_mimi(None, "tiny", seed=0)
    for ex, s in zip(examples, samples):
        ans = infer.answer(ex, "t2a", GREEDY, speech=True)
        assert s.text == ans.text != "" and s.reference_text == ex["answer_text"]
        assert s.extra["n_frames"] == ans.frames.shape[0] > 0 and s.sample_rate == 24000
        assert s.audio.shape[0] == s.extra["n_frames"] * FRAME
        np.testing.assert_allclose(s.audio, decode(mimi, playable(ans.frames, infer.tok)), atol=2e-4)
        assert (s.speaker, s.seen, s.prompt) == (ex["voice"], ex["voice_seen"], ex["question_text"])
        assert s.reference_audio.shape[0] % FRAME == 0 and s.reference_sample_rate == 24000
    with pytest.raises(ValueError, match=r"speaks in tasks \['a2a', 't2a'\], not 'i2t'"):
        list(producer.speech_samples([], "i2t", GREEDY))
    with pytest.raises(ValueError, match=r"codec.arch='snac_24khz' is not a Mimi architecture; valid: \['mimi'"):
        MiniMindOSpeech(infer, codec_arch="snac_24khz")


def test_eval_writes_metrics_wavs_report_and_plots(tmp_path, mm):
    cfg = compose_eval(tmp_path, f"ckpt={mm['ckpt']}", "tasks=[t2a,a2a,i2t]", "max_examples=2",
                       "sampling.max_new_tokens=14", "codec.arch=tiny")
    report = evaluate(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    for task in ("t2a", "a2a", "i2t"):
        res = saved["tasks"][task]
        assert res["n"] == 2 and 0 <= res["cer"] and 0 <= res["wer"] and res["buckets"]["short"]["n"] == 2, task
    assert "speech" not in saved["tasks"]["i2t"]
    for task in ("t2a", "a2a"):
        speech = saved["tasks"][task]["speech"]
        for key in ("asr_cer_text", "asr_cer_ref", "asr_wer_ref", "sim", "sim_seen", "mos", "mos_sig", "n_no_audio"):
            assert key in speech, (task, sorted(speech))
        assert speech["n_no_audio"] == 0 and 1.0 <= speech["mos"] <= 5.0 and -1 <= speech["sim"] <= 1
    assert "sim_unseen" in saved["tasks"]["t2a"]["speech"]  # the second t2a test row clones an unseen voice
    rows = [json.loads(x) for x in (tmp_path / "transcripts.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows] == ["t2a"] * 2 + ["a2a"] * 2 + ["i2t"] * 2
    t2a = mm["data"].examples("test", "t2a", 2)
    assert [r["voice"] for r in rows[:2]] == [e["voice"] for e in t2a]
    assert [r["seen"] for r in rows[:2]] == [True, False]
    for row in rows[:4]:
        assert {"asr_text", "asr_cer_ref", "similarity", "mos", "voice", "seen", "prompt", "wav"} <= set(row)
        info = sf.info(row["wav"])
        assert info.samplerate == 24000 and info.frames == row["n_frames"] * FRAME > 0
    assert all("wav" not in r and r["reference"] for r in rows[4:])
    md = (tmp_path / "report.md").read_text()
    assert "| t2a | 2 |" in md and "| i2t | 2 |" in md and "## Generated speech" in md
    assert f"| t2a | {t2a[1]['voice']} |" in md
    for png in ("cer_by_length", "similarity_per_speaker", "mos_histogram"):
        data = (tmp_path / "plots" / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    assert set(report["tasks"]) == {"t2a", "a2a", "i2t"}


def test_tasks_of_another_family_fail_at_start_naming_this_familys(tmp_path, mm, tiny_model):
    cfg = compose_eval(tmp_path, f"ckpt={mm['ckpt']}")  # eval.yaml's default tasks are Mini-Omni's
    with pytest.raises(ValueError, match=r"\['asr', 'a1t2', 'a1a2'\] are not tasks of this MiniMindO checkpoint; "
                                         r"valid: \['a2a', 'i2t', 't2a'\]"):
        evaluate(cfg)
    assert not (tmp_path / "metrics.json").exists()
    assert eval_tasks(mm["infer"]) == {"t2a": True, "a2a": True, "i2t": False}
    mini_omni = make_inference(tiny_model, load_tokenizer(tiny_model.cfg.tokenizer_path))
    assert eval_tasks(mini_omni) == {"asr": False, "a1t2": False, "a1a2": True, "t1t2": False, "t1a2": True}
    assert isinstance(mm["infer"], MiniMindOInference)


def test_codec_default_is_the_familys(tmp_path, mm, tiny_model):
    """eval.yaml's codec.arch is null: evaluate() leaves it out and each producer takes its family's codec."""
    assert compose_eval(tmp_path, "ckpt=x").codec.arch is None
    assert speech_producer(mm["infer"], codec_path=None, codec_seed=0).codec_arch == "mimi"
    mini_omni = make_inference(tiny_model, load_tokenizer(tiny_model.cfg.tokenizer_path))
    assert speech_producer(mini_omni, codec_path=None, codec_seed=0).codec_arch == "snac_24khz"


@pytest.mark.slow
def test_train_then_eval_from_the_command_line(tmp_path):
    """train.py (4 T2A epochs as in minimind_curriculum; text metrics on t2a through the MiniMind-O helper) ->
    eval.py on its last checkpoint, from the command line."""
    run = tmp_path / "train"
    res = run_cli("train.py", *MM, "trainer.max_epochs=4", "data.max_tokens=2048", "stage.lr=3e-3", "logger=csv",
                  "test=false", "callbacks.text_metrics.tasks=[t2a]", "callbacks.text_metrics.max_examples=2",
                  f"hydra.run.dir={run}", f"paths.output_dir={run}", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    logged = [r for path in (run / "csv").glob("version_*/metrics.csv") for r in csv.DictReader(open(path))]
    assert sum(bool(r.get("val/cer_t2a")) for r in logged) == 4
    ckpt = run / "checkpoints" / "sft_t2a" / "last.ckpt"
    out = tmp_path / "eval"
    res = run_cli("eval.py", f"ckpt={ckpt}", "tasks=[t2a,a2a,i2t]", "max_examples=3", "sampling.max_new_tokens=48",
                  "codec.arch=tiny", f"hydra.run.dir={out}", f"paths.output_dir={out}", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "[eval] t2a: CER" in res.stdout and "[eval] i2t: CER" in res.stdout
    saved = json.loads((out / "metrics.json").read_text())
    assert {t: saved["tasks"][t]["n"] for t in ("t2a", "a2a", "i2t")} == {"t2a": 3, "a2a": 3, "i2t": 3}
    speech = saved["tasks"]["t2a"]["speech"]
    assert speech["n_no_audio"] == 0 and {"asr_cer_ref", "sim", "sim_seen", "sim_unseen", "mos"} <= set(speech)
    assert "asr_cer_ref" in saved["tasks"]["a2a"]["speech"]
    rows = [json.loads(x) for x in (out / "transcripts.jsonl").read_text().splitlines()]
    for row in (r for r in rows if r.get("wav")):
        assert sf.info(row["wav"]).samplerate == 24000 and sf.info(row["wav"]).frames == row["n_frames"] * FRAME
    assert len(list((out / "wav").glob("*.wav"))) >= 3
    assert (out / "report.md").exists() and len(list((out / "plots").glob("*.png"))) == 3
