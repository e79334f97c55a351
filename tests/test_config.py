"""Every shipped config composes and instantiates; mistakes fail at start naming the valid choices."""
import subprocess
import sys

import hydra
import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
STAGES = sorted(p.stem for p in (CONF / "stage").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(compose, experiment):
    cfg = compose(f"experiment={experiment}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    stages = list(cfg.curriculum.values()) if cfg.get("curriculum") else [cfg.stage]
    if cfg.data._target_ == "data.datamodule.OmniDataModule":
        from data.schema import TASK_REQUIREMENTS

        for stage in stages:
            assert set(stage.tasks) <= set(TASK_REQUIREMENTS)
    if not OmegaConf.is_missing(cfg.data, "train"):  # recipes for external data name their paths on the CLI
        assert hydra.utils.instantiate(cfg.data) is not None
    for node in cfg.callbacks.values():
        if node is not None:
            hydra.utils.instantiate(node)


@pytest.mark.parametrize("group,option", [("stage", s) for s in STAGES] + [
    ("trainer", t.stem) for t in (CONF / "trainer").glob("*.yaml")] + [
    ("logger", g.stem) for g in (CONF / "logger").glob("*.yaml")] + [
    ("debug", d.stem) for d in (CONF / "debug").glob("*.yaml")] + [
    ("model", m.stem) for m in (CONF / "model").glob("*.yaml")] + [("data", "sample")])
def test_every_group_option_composes(compose, group, option):
    cfg = compose(f"{group}={option}")
    OmegaConf.to_container(cfg.trainer, resolve=True)
    OmegaConf.to_container(cfg.stage, resolve=True)


def run_train(*args):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_misspelled_group_option_names_valid_choices():
    res = run_train("stage=adaptr")
    assert res.returncode != 0
    assert "Available options in 'stage'" in res.stderr and "alignment" in res.stderr and "multimodal" in res.stderr


def test_misspelled_key_fails_at_start():
    res = run_train("stage.lrr=0.1")
    assert res.returncode != 0 and "lrr" in res.stderr


def test_unknown_task_names_valid_tasks(compose):
    cfg = compose("+stage.tasks.a2a=1.0")
    with pytest.raises(Exception, match="a2a.*valid tasks|valid tasks.*a2a") as err:
        hydra.utils.instantiate(cfg.data)
    assert "t1a2" in str(err.value)
