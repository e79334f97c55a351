"""Shared fixtures: hermetic environment, composed Hydra configs, tiny models from the shipped tiny config."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMNI_AUTO_PRECISION", "32-true")  # trainer.precision=auto: same on every machine
if "OMNI_INDEX_CACHE" not in os.environ:  # the data index cache (data.index_cache): this test session's own folder
    import tempfile

    os.environ["OMNI_INDEX_CACHE"] = tempfile.mkdtemp(prefix="omni-index-cache-")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_cfg(overrides: list[str], out_dir: Path):
    """Compose conf/train.yaml like `python train.py ...` would, with outputs under `out_dir`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from omni.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real @hydra.main run, where the hydra node is not part of cfg
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir)
    return cfg


@pytest.fixture
def compose(tmp_path):
    return lambda *overrides: compose_cfg(list(overrides), tmp_path)


@pytest.fixture(scope="session")
def tiny_model_cfg():
    """The shipped tiny model config (conf/model/mini_omni_tiny.yaml) as a MiniOmniConfig, smaller window."""
    from omegaconf import OmegaConf

    from omni.config import load_group_config, register_resolvers
    from omni.mini_omni.model import MiniOmniConfig

    register_resolvers()
    node = load_group_config(CONF / "model" / "mini_omni_tiny.yaml").cfg
    raw = OmegaConf.to_container(node, resolve=True)
    raw.pop("_target_"), raw.pop("_convert_")
    raw["whisper"]["max_source_positions"] = 50  # 1 s window keeps unit tests fast
    return MiniOmniConfig(**raw)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_cfg):
    from omni.mini_omni.model import MiniOmni

    torch.manual_seed(0)
    return MiniOmni(tiny_model_cfg).eval()
