"""Stage-first command line: `python train.py stage=<X>` runs every stage of conf/stage/ with its family's tiny model
and bundled sample (an explicit model= / data= still wins); a model, data or stage of another family fails at
start in one line naming each one's family and the matching choices."""
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from omni.config import FamilyMismatchError
from omni.train import train
from tests.conftest import CONF, ROOT, compose_cfg

STAGES = sorted(p.stem for p in (CONF / "stage").glob("*.yaml"))

# hand-drawn: the CPU default of each stage = its family's tiny model and bundled sample (README tables)
DEFAULTS = {
    "alignment": ("mini_omni_tiny", "sample"),
    "adapter": ("mini_omni_tiny", "sample"),
    "multimodal": ("mini_omni_tiny", "sample"),
    "vision_alignment": ("mini_omni2_tiny", "sample_vision"),
    "sft_t2a": ("minimind_o_tiny", "minimind_sample"),
    "sft_a2a": ("minimind_o_tiny", "minimind_sample"),
    "sft_i2t": ("minimind_o_tiny", "minimind_sample"),
    "streaming": ("mini_omni3_tiny", "streaming_sample"),
}


def choices(compose, *overrides) -> tuple[str, str, str]:
    compose(*overrides)
    c = HydraConfig.get().runtime.choices
    return c["model"], c["data"], c["stage"]


def test_every_stage_has_a_hand_drawn_default():
    assert sorted(DEFAULTS) == STAGES  # a new stage file must say here what it runs with


@pytest.mark.parametrize("stage", STAGES)
def test_stage_selects_its_family_tiny_model_and_sample(compose, stage):
    assert choices(compose, f"stage={stage}") == (*DEFAULTS[stage], stage)


def test_no_arguments_is_the_tiny_mini_omni(compose):
    assert choices(compose) == ("mini_omni_tiny", "sample", "multimodal")


@pytest.mark.parametrize("overrides,expected", [
    (["stage=sft_t2a", "model=minimind_o"], ("minimind_o", "minimind_sample", "sft_t2a")),
    (["model=minimind_o", "stage=sft_t2a"], ("minimind_o", "minimind_sample", "sft_t2a")),
    (["stage=sft_a2a", "data=minimind_parquet"], ("minimind_o_tiny", "minimind_parquet", "sft_a2a")),
    (["stage=streaming", "model=mini_omni3"], ("mini_omni3", "streaming_sample", "streaming")),
    (["experiment=minimind_curriculum", "model=minimind_o_512"], ("minimind_o_512", "minimind_sample", "sft_t2a")),
])
def test_explicit_choices_win_over_the_stage_defaults(compose, overrides, expected):
    assert choices(compose, *overrides) == expected


MINI_OMNI_MODELS = "mini_omni, mini_omni2, mini_omni2_tiny, mini_omni_small, mini_omni_tiny"
MINIMIND_MODELS = "minimind_o, minimind_o_512, minimind_o_tiny"


@pytest.mark.parametrize("overrides,expected", [
    # before: InterpolationKeyError about model.cfg.whisper.num_mel_bins deep in the data config
    (["model=minimind_o_tiny", "stage=adapter"],
     f"stage=adapter is Mini-Omni / Mini-Omni2 but model=minimind_o_tiny is MiniMind-O; Mini-Omni / Mini-Omni2 "
     f"models: {MINI_OMNI_MODELS}; or a MiniMind-O stage: sft_a2a, sft_i2t, sft_t2a"),
    (["stage=sft_t2a", "model=mini_omni_tiny"],
     f"stage=sft_t2a is MiniMind-O but model=mini_omni_tiny is Mini-Omni / Mini-Omni2; MiniMind-O models: "
     f"{MINIMIND_MODELS}; or a Mini-Omni / Mini-Omni2 stage: adapter, alignment, multimodal, vision_alignment"),
    (["stage=sft_t2a", "data=sample"],
     "stage=sft_t2a is MiniMind-O but data=sample is Mini-Omni / Mini-Omni2; MiniMind-O data: hf_minimind, minimind_parquet, "
     "minimind_sample; or a Mini-Omni / Mini-Omni2 stage: adapter, alignment, multimodal, vision_alignment"),
    (["stage=streaming", "model=mini_omni_tiny", "data=minimind_sample"],
     "stage=streaming is Mini-Omni3 but model=mini_omni_tiny is Mini-Omni / Mini-Omni2 and data=minimind_sample is "
     "MiniMind-O; Mini-Omni3 models: mini_omni3, mini_omni3_tiny; Mini-Omni3 data: streaming_sample; "
     "or a Mini-Omni / Mini-Omni2 stage: adapter, alignment, multimodal, vision_alignment; "
     "or a MiniMind-O stage: sft_a2a, sft_i2t, sft_t2a"),
    (["experiment=minimind_curriculum", "model=mini_omni_tiny"],
     f"stage=sft_t2a is MiniMind-O but model=mini_omni_tiny is Mini-Omni / Mini-Omni2; MiniMind-O models: "
     f"{MINIMIND_MODELS}; or a Mini-Omni / Mini-Omni2 stage: adapter, alignment, multimodal, vision_alignment"),
])
def test_mixed_families_fail_at_start_in_one_line(tmp_path, overrides, expected):
    cfg = compose_cfg(overrides, tmp_path)
    with pytest.raises(FamilyMismatchError) as err:
        train(cfg)
    assert str(err.value) == expected
    assert not any(tmp_path.iterdir()), "failed before writing anything"


def test_mixed_families_from_the_command_line():
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "model=minimind_o_tiny", "stage=adapter"],
                         capture_output=True, text=True, cwd=tempfile.mkdtemp(), timeout=120)
    assert res.returncode != 0
    assert "FamilyMismatchError: stage=adapter is Mini-Omni / Mini-Omni2 but model=minimind_o_tiny is MiniMind-O" \
        in res.stderr
    assert "num_mel_bins" not in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_trains_out_of_the_box(tmp_path, stage):
    """`python train.py stage=<stage> debug=fast`, in-process: fit, validation (text metrics with the family's
    default tasks), test; a last checkpoint of the stage."""
    metrics = train(compose_cfg([f"stage={stage}", "debug=fast"], tmp_path))
    assert Path(metrics["last_checkpoint"]).is_file()
    assert Path(metrics["last_checkpoint"]).parent.name == stage
    assert any(k.startswith("val/") for k in metrics) and any(k.startswith("test/") for k in metrics), metrics
    # text metrics with the family's default tasks (`callbacks.text_metrics.tasks: null`); before, Mini-Omni's
    # asr / a1t2 made every MiniMind-O stage fail after its first epoch. Mini-Omni3 scores its decisions itself.
    assert ("val/cer" in metrics) == (stage != "streaming"), sorted(metrics)
