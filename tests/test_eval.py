"""eval.py on a checkpoint of the tiny model: text metrics per length bucket, the generated speech scored by the
offline scorers, metrics.json + transcripts.jsonl + report.md + PNG plots."""
import json

import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from omni.evaluate import evaluate
from omni.train import build_module
from tests.conftest import compose_cfg
from tests.test_train import compose_eval


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint exactly as train.py writes it (weights under `model.`, the run config as plain data), untrained."""
    folder = tmp_path_factory.mktemp("ckpt")
    cfg = compose_cfg(["model.cfg.whisper.max_source_positions=150"], folder)
    torch.manual_seed(0)
    module = build_module(cfg, init_from=None)
    path = folder / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
                "omni_config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return path


def test_eval_writes_metrics_report_and_plots(tmp_path, tiny_ckpt):
    cfg = compose_eval(tmp_path, f"ckpt={tiny_ckpt}", "tasks=[asr,a1a2]", "max_examples=2",
                       "sampling.max_new_tokens=14", "codec.arch=tiny")
    report = evaluate(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["tasks"]["asr"]["n"] == 2 and saved["tasks"]["asr"]["buckets"]["short"]["n"] == 2
    speech = saved["tasks"]["a1a2"]["speech"]
    for key in ("asr_cer_text", "asr_cer_ref", "sim", "sim_seen", "sim/assistant", "mos", "mos_sig", "n_no_audio"):
        assert key in speech, sorted(speech)
    assert speech["n_no_audio"] == 0 and 1.0 <= speech["mos"] <= 5.0
    assert saved["scorers"] == {"asr": "pocketsphinx", "speaker": "resemblyzer", "predictor": "dnsmos"}
    rows = [json.loads(x) for x in (tmp_path / "transcripts.jsonl").read_text().splitlines()]
    spoken = [r for r in rows if r["task"] == "a1a2"]
    assert len(spoken) == 2 and len(rows) == 4
    for row in spoken:
        assert {"asr_text", "asr_cer_ref", "similarity", "mos", "voice", "seen"} <= set(row)
        info = sf.info(row["wav"])
        assert info.samplerate == 24000 and info.frames == row["n_frames"] * 2048
    md = (tmp_path / "report.md").read_text()
    assert "| asr | 2 |" in md and "## Generated speech" in md and "| a1a2 | assistant |" in md
    for png in ("cer_by_length", "similarity_per_speaker", "mos_histogram"):
        data = (tmp_path / "plots" / f"{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
        assert f"plots/{png}.png" in md
    assert set(report["tasks"]["a1a2"]["speech"]) == set(speech)
    json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN


def test_eval_scorers_are_optional_and_checked_first(tmp_path, tiny_ckpt):
    cfg = compose_eval(tmp_path, f"ckpt={tiny_ckpt}", "tasks=[a1a2]", "max_examples=1", "sampling.max_new_tokens=10",
                       "codec.arch=tiny", "speech.speaker=null", "speech.quality=null", "report=false")
    speech = evaluate(cfg)["tasks"]["a1a2"]["speech"]
    assert "asr_cer_ref" in speech and "sim" not in speech and "mos" not in speech
    assert not (tmp_path / "report.md").exists()
    bad = compose_eval(tmp_path, f"ckpt={tiny_ckpt}", f"speech.asr.path={tmp_path / 'no-such-model'}")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        evaluate(bad)
