"""End to end on the bundled sample: overfitting, train -> checkpoint -> eval, resume, and (slow) DDP,
multirun, optuna, curriculum, wheel contents."""
import json
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import soundfile as sf
import torch
from omegaconf import open_dict

from omni.train import build_module, train
from tests.conftest import ROOT, compose_cfg

torch.set_num_threads(1)
FAST = ["debug=fast", "logger=csv", "data.max_tokens=1200"]


def test_loss_falls_when_overfitting_one_batch(compose):
    cfg = compose("stage=multimodal", "data.max_tokens=800", "data.max_len=512")
    module = build_module(cfg, init_from=None)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=3e-3)
    module.model.train()
    losses = []
    for _ in range(40):
        out = module.model(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out["loss"]))
    assert set(batch["tasks"]) - {"asr", "a1t2"}, "batch should mix audio-out tasks too"
    assert losses[-1] < 0.3 * losses[0], losses


def test_train_checkpoint_eval_round_trip(tmp_path):
    cfg = compose_cfg(["debug=fast", "data.max_tokens=1200", "logger=many"], tmp_path / "train")
    metrics = train(cfg)
    assert list((tmp_path / "train" / "wandb").glob("offline-run-*/run-*.wandb")), "no offline wandb run written"
    for key in ("train/loss", "val/loss", "val/cer", "val/wer", "test/loss"):
        assert key in metrics and metrics[key] == metrics[key], key
    last = Path(metrics["last_checkpoint"])
    assert last.exists()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # no pickled code inside
    assert ckpt["omni_stage"] == "multimodal" and "omni_config" in ckpt
    assert (tmp_path / "train" / "csv").exists()

    from omni.evaluate import evaluate

    eval_cfg = compose_eval(tmp_path / "eval", f"ckpt={last}", "max_examples=2", "sampling.max_new_tokens=16")
    report = evaluate(eval_cfg)
    assert set(report["tasks"]) == {"asr", "a1t2", "a1a2"}
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["tasks"]["asr"]["n"] == 2
    rows = [json.loads(x) for x in (tmp_path / "eval" / "transcripts.jsonl").read_text().splitlines()]
    spoken = [r for r in rows if r.get("wav")]
    assert spoken, "A1A2 answers should be streamed to wav files"
    for row in spoken:
        info = sf.info(row["wav"])
        assert info.samplerate == 24000 and info.frames == row["n_frames"] * 2048 and row["first_chunk_s"] > 0

    from omni.mini_omni.convert import import_litgpt, main as convert_main

    convert_main(["ckpt-to-litgpt", str(last), str(tmp_path / "lit")])
    from omni.evaluate import load_for_eval

    _, state = import_litgpt(tmp_path / "lit", base=load_for_eval(str(last))[0].cfg)
    ours = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(state["audio_adapter.proj.weight"], ours["model.audio_adapter.proj.weight"])


def compose_eval(out_dir, *overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.out_dir = str(out_dir)
    return cfg


def test_resume_restores_optimizer_scheduler_and_steps(tmp_path):
    cfg = compose_cfg(FAST + ["test=false", "callbacks.text_metrics=null"], tmp_path / "a")
    first = train(cfg)
    ckpt = torch.load(first["last_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["optimizer_states"][0]["state"]
    cfg2 = compose_cfg(FAST + ["test=false", "callbacks.text_metrics=null", "trainer.max_epochs=2",
                               f"ckpt_path={first['last_checkpoint']}"], tmp_path / "b")
    second = train(cfg2)
    resumed = torch.load(second["last_checkpoint"], map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 6 and resumed["epoch"] == 1
    steps = [s["step"] for s in resumed["optimizer_states"][0]["state"].values()]
    assert max(float(s) for s in steps) == 6  # AdamW moments continued from step 3 (fresh: <= 3)
    assert resumed["lr_schedulers"][0]["last_epoch"] == 6


def run_cli(*args, timeout=300):
    env = {"HF_HUB_OFFLINE": "1", "OMNI_AUTO_PRECISION": "32-true", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "TOKENIZERS_PARALLELISM": "false", "HOME": str(Path.home())}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=env)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    res = run_cli("train.py", "trainer=ddp", "trainer.accelerator=cpu", *FAST, "test=false",
                  f"hydra.run.dir={tmp_path}", f"paths.output_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in res.stderr + res.stdout
    assert (tmp_path / "checkpoints" / "multimodal" / "last.ckpt").exists()


@pytest.mark.slow
def test_multirun_two_jobs(tmp_path):
    res = run_cli("train.py", "-m", "stage.lr=1e-3,2e-3", *FAST, "test=false", "callbacks.text_metrics=null",
                  f"hydra.sweep.dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "multimodal" / "last.ckpt").exists()


@pytest.mark.slow
def test_optuna_sweep(tmp_path):
    res = run_cli("train.py", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                  "hydra.sweeper.sampler.n_startup_trials=1", *FAST, "test=false", "callbacks.text_metrics=null",
                  f"hydra.sweep.dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "best_value" in (tmp_path / "optimization_results.yaml").read_text()


@pytest.mark.slow
def test_curriculum_chains_three_stages(tmp_path):
    cfg = compose_cfg(["experiment=curriculum", *FAST, "test=false", "callbacks.text_metrics=null"], tmp_path)
    metrics = train(cfg)
    for stage in ("alignment", "adapter", "multimodal"):
        assert (tmp_path / "checkpoints" / stage / "last.ckpt").exists()
    assert metrics["last_checkpoint"].endswith("multimodal/last.ckpt")
    a = torch.load(tmp_path / "checkpoints" / "alignment" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "checkpoints" / "adapter" / "last.ckpt", weights_only=True)["state_dict"]
    key = "model.audio_adapter.proj.weight"  # trained in stage 1, frozen in stage 2: carried over unchanged
    assert torch.equal(a[key], b[key])


@pytest.mark.slow
def test_wheel_ships_all_packages_and_sample(tmp_path):
    res = run_cli("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT))
    assert res.returncode == 0, res.stderr[-2000:]
    import zipfile

    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    for required in ("omni/mini_omni/model.py", "data/mini_omni/datamodule.py", "callbacks/text_metrics.py",
                     "omni/assets/tiny_tokenizer/tokenizer.json", "data/sample/train/shard-00000.parquet"):
        assert required in names, required
