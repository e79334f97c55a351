"""SLURM through Hydra's submitit launcher (conf/hydra/launcher/slurm.yaml + trainer=ddp) and a 2-job multirun
through the submitit local launcher. No cluster here: a stub `sbatch` / `srun` on PATH receives the submission
file submitit writes, and Lightning's SLURMEnvironment checks the sizes SLURM would export from it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from omni.config import register_resolvers, validate_config
from tests.conftest import CONF, ROOT

torch.set_num_threads(1)


def compose_with_hydra(overrides: list[str]):
    """conf/train.yaml with its hydra node (the launcher config), HydraConfig set as in a run."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def stub_slurm(tmp_path: Path, monkeypatch) -> Path:
    """`srun` (submitit checks it exists) and `sbatch` (copies the submission file, answers like SLURM)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    for name in ("srun", "sbatch"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "submitted.sh"


def submit(cfg, monkeypatch) -> None:
    """The launcher Hydra builds from cfg.hydra.launcher, launching one sweep point (results are not awaited)."""
    import submitit

    monkeypatch.setattr(submitit.core.core.Job, "results", lambda self: ["not awaited"])
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    launcher.launch([["stage.lr=1e-3"]], initial_job_idx=0)


def sbatch_options(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", text, re.M))


# hand table: launcher overrides -> the sbatch options SLURM gets and the sizes Lightning must be given
CASES = [
    ([], {"nodes": "2", "ntasks-per-node": "8", "gpus-per-node": "8", "cpus-per-task": "8", "time": "1440"},
     {"devices": 8, "num_nodes": 2}),
    (["hydra.launcher.nodes=4", "hydra.launcher.gpus_per_node=4", "hydra.launcher.timeout_min=30",
      "hydra.launcher.partition=gpu"],
     {"nodes": "4", "ntasks-per-node": "4", "gpus-per-node": "4", "time": "30", "partition": "gpu"},
     {"devices": 4, "num_nodes": 4}),
]


@pytest.mark.filterwarnings("ignore:The `srun` command is available")  # the stub srun on PATH, not used here
@pytest.mark.parametrize("overrides,sbatch,trainer", CASES)
def test_slurm_launcher_submits_what_lightning_expects(tmp_path, monkeypatch, overrides, sbatch, trainer):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    submitted = stub_slurm(tmp_path, monkeypatch)
    cfg = compose_with_hydra(["hydra/launcher=slurm", "trainer=ddp", "hydra.mode=MULTIRUN",
                              f"hydra.sweep.dir={tmp_path / 'sweep'}", f"paths.output_dir={tmp_path}", *overrides])
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert {"devices": cfg.trainer.devices, "num_nodes": cfg.trainer.num_nodes} == trainer
    validate_config(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))  # the typed check at start
    submit(cfg, monkeypatch)
    text = submitted.read_text()
    options = sbatch_options(text)
    assert {k: options.get(k) for k in sbatch} == sbatch, text
    assert re.search(r"^srun .*submitit\.core\._submit", text, re.M), text  # processes started by srun
    # what SLURM exports from those options, checked by the environment Lightning picks on a SLURM node
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", options["ntasks-per-node"])
    monkeypatch.setenv("SLURM_NNODES", options["nodes"])
    monkeypatch.delenv("SLURM_JOB_NAME", raising=False)
    SLURMEnvironment().validate_settings(num_devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes)
    # negative control: the one-device trainer (trainer=default) under the same launcher is what Lightning refuses
    plain = compose_with_hydra(["hydra/launcher=slurm", "trainer=default", "hydra.mode=MULTIRUN", *overrides])
    with pytest.raises(ValueError, match="ntasks-per-node"):
        SLURMEnvironment().validate_settings(num_devices=plain.trainer.devices, num_nodes=plain.trainer.get("num_nodes", 1))


def test_ddp_sizes_without_slurm_and_single_run_refused():
    for launcher in ("basic", "submitit_local"):
        cfg = compose_with_hydra([f"hydra/launcher={launcher}", "trainer=ddp"])
        assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (2, 1), launcher  # Lightning spawns 2 local ranks
    cfg = compose_with_hydra(["hydra/launcher=slurm", "trainer=ddp"])  # no -m: nothing would be submitted
    with pytest.raises(Exception, match=r"hydra.launcher.tasks_per_node=8 is read in a single run.*add -m"):
        _ = cfg.trainer.devices


@pytest.mark.slow
def test_submitit_local_multirun_two_jobs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", "stage.lr=1e-3,2e-3",
                          "debug=fast", "logger=csv", "data.max_tokens=1200", "test=false",
                          "callbacks.text_metrics=null", f"hydra.sweep.dir={tmp_path}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in res.stdout + res.stderr
    logs = sorted(tmp_path.glob(".submitit/*/*_log.out"))
    assert len(logs) == 2 and all("Job completed successfully" in p.read_text() for p in logs), logs
    for job, lr in (("0", 1e-3), ("1", 2e-3)):
        ckpt = torch.load(tmp_path / job / "checkpoints" / "multimodal" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 3  # debug=fast: limit_train_batches=3, one epoch
        groups = ckpt["optimizer_states"][0]["param_groups"]
        assert {g["initial_lr"] for g in groups} == {lr}, (job, groups)  # each job got its own sweep value
        assert (tmp_path / job / "csv" / "version_0" / "metrics.csv").exists()
