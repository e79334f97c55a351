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
    user_data = OmegaConf.to_container(cfg.data)["train"] == "${omni.required:}"
    if user_data:  # recipes for external data name their paths on the command line
        cfg = compose(f"experiment={experiment}", "data.train=/your/train", "data.val=/your/val")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    stages = list(cfg.curriculum.values()) if cfg.get("curriculum") else [cfg.stage]
    if cfg.data._target_ == "data.mini_omni.datamodule.MiniOmniDataModule":
        from data.mini_omni.schema import TASK_REQUIREMENTS

        for stage in stages:
            assert set(stage.tasks) <= set(TASK_REQUIREMENTS)
    if not user_data:
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


@pytest.mark.parametrize("overrides,key", [
    (["data=parquet"], "data.train"),
    (["data=parquet", "data.train=/my/train"], "data.val"),
    # minimind_parquet inherits minimind_sample: with `???` (its old value) OmegaConf kept the bundled sample's
    # path and the run silently trained on it
    (["stage=sft_t2a", "data=minimind_parquet"], "data.train"),
])
def test_parquet_data_needs_its_paths(compose, overrides, key):
    from omni.config import validate_config

    cfg = compose(*overrides)
    with pytest.raises(Exception, match=rf"{key} is required: set it on the command line"):
        validate_config(cfg)
    assert "sample" not in str(OmegaConf.to_container(cfg.data)[key.split(".")[1]])  # not the inherited path


def test_parquet_inherits_sample(compose):
    """conf/data/parquet.yaml is sample.yaml with the user's paths (and 4 loader workers): nothing else differs."""
    sample = OmegaConf.to_container(compose("data=sample").data, resolve=True)
    parquet = OmegaConf.to_container(compose("data=parquet", "data.train=/t", "data.val=/v").data, resolve=True)
    differ = {k for k in sample.keys() | parquet.keys() if sample.get(k) != parquet.get(k)}
    assert differ == {"train", "val", "test", "num_workers"}
    assert (parquet["train"], parquet["val"], parquet["test"], parquet["num_workers"]) == ("/t", "/v", None, 4)
