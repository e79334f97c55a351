"""`python -m omni.bench` times the real training step: the configured Trainer's fit (loader, clipping, scheduler,
the module's step) with data loading inside the clock; the peak is measured in the run's dtype; JSON lines."""
from __future__ import annotations

import os
import json

import pytest
import torch



def compose_bench(tmp_path, *overrides):
    """conf/bench.yaml composed like `python -m omni.bench ...` (conftest.compose_cfg does conf/train.yaml)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from conftest import CONF
    from omni.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
    return cfg


SLEEP = 0.25  # seconds added to fetching every batch: a clock that excludes loading would not see it


def test_bench_times_the_trainer_step_with_loading_clipping_and_scheduler(tmp_path, monkeypatch):
    import time

    import lightning.pytorch.plugins.precision.precision as lightning_precision
    from hydra.utils import get_class

    from omni import bench

    cfg = compose_bench(tmp_path, "logger=none", "data.max_tokens=1200", "trainer=cpu", "trainer.precision=32-true",
                        "bench.steps=2", "bench.warmup=1", "bench.matmul_n=64")
    calls = {"train": 0, "clip": 0, "sched": 0, "fetch": 0, "peak_dtypes": []}
    module_cls = get_class("omni.stages.module.OmniModule")
    step, clip = module_cls.training_step, lightning_precision.Precision.clip_grad_by_norm
    sched_step = torch.optim.lr_scheduler.LambdaLR.step
    monkeypatch.setattr(module_cls, "training_step",
                        lambda self, *a, **k: (calls.__setitem__("train", calls["train"] + 1), step(self, *a, **k))[1])
    monkeypatch.setattr(lightning_precision.Precision, "clip_grad_by_norm",
                        lambda self, *a, **k: (calls.__setitem__("clip", calls["clip"] + 1), clip(self, *a, **k))[1])
    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step",
                        lambda self, *a, **k: (calls.__setitem__("sched", calls["sched"] + 1),
                                               sched_step(self, *a, **k))[1])
    peak = bench.matmul_peak
    monkeypatch.setattr(bench, "matmul_peak",
                        lambda device, dtype, n, **k: (calls["peak_dtypes"].append(dtype),
                                                       peak(device, dtype, n, **k))[1])
    dm_cls = get_class(cfg.data._target_)
    loader_fn = dm_cls.train_dataloader

    class SlowLoader:  # the real loader, SLEEP seconds slower per batch
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for batch in self.loader:
                time.sleep(SLEEP)
                calls["fetch"] += 1
                yield batch

    monkeypatch.setattr(dm_cls, "train_dataloader", lambda self: SlowLoader(loader_fn(self)))
    report = bench.run_benchmark(cfg)

    assert calls["train"] == 3  # warm-up 1 + timed 2, all through OmniModule.training_step under Trainer.fit
    assert calls["clip"] == 3 and cfg.trainer.gradient_clip_val == 1.0  # Lightning clipped every step
    assert calls["sched"] >= 3  # the warm-up cosine schedule stepped every optimizer step
    assert report["steps"] == 2 and report["step_s"] >= SLEEP  # loading is inside the clock
    assert report["precision"] == "32-true" and report["matmul_dtype"] == "float32"
    assert calls["peak_dtypes"] == [torch.float32, torch.float32]  # measured before and after, in the run's dtype
    assert report["matmul_peak_tflops"] == max(report["matmul_peak_tflops_before_after"])
    # achieved = FLOPs per useful token * useful tokens / s; fraction = achieved / measured peak (hand formula)
    achieved = report["flops_per_token"] * report["tokens_per_s"]
    assert report["achieved_tflops"] == pytest.approx(achieved / 1e12, rel=0.01, abs=1e-4)
    assert report["fraction_of_matmul_peak"] == pytest.approx(achieved / (report["matmul_peak_tflops"] * 1e12),
                                                              rel=0.02)
    assert 0 < report["fraction_of_matmul_peak"] < 1
    assert report["gradient_clip_val"] == 1.0 and report["scheduler"] == "omni.optim.warmup_cosine"

    lines = [json.loads(x) for x in bench.json_lines(report)]
    assert {x["figure"] for x in lines} >= {"tokens_per_s", "fraction_of_matmul_peak", "peak_memory_gib"}
    for line in lines:
        assert {"machine", "cores", "threads", "precision", "matmul_dtype", "load_average_before_after"} <= set(line)
        assert line["threads"] == torch.get_num_threads() and line["precision"] == "32-true"


def test_bench_bf16_measures_the_bf16_peak_and_old_dtype_key_fails(tmp_path, monkeypatch):
    from omni import bench

    seen = []
    monkeypatch.setattr(bench, "matmul_peak", lambda device, dtype, n, **k: seen.append(dtype) or 1e12)

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr("omni.train.build_module", stop)
    cfg = compose_bench(tmp_path, "trainer=cpu", "trainer.precision=bf16-mixed", "bench.matmul_n=64")
    with pytest.raises(Stop):
        bench.run_benchmark(cfg)
    assert seen == [torch.bfloat16, torch.float32]  # the divisor is the bf16 peak; fp32's is reported beside it
    with pytest.raises(ValueError, match="bench.dtype=bf16 is gone.*trainer.precision"):
        bench.run_benchmark(compose_bench(tmp_path, "bench.dtype=bf16"))


def test_step_flags_read_in_one_copy():
    """OmniModule._flags: [loss finite], text targets > 0, audio targets > 0 (hand table), from one stacked copy."""
    from omni.stages.module import OmniModule

    out = {"loss": torch.tensor(float("nan")), "n_text_targets": torch.tensor(0), "n_audio_targets": torch.tensor(5)}
    assert OmniModule._flags(out, finite=True) == [False, False, True]
    out = {"loss": torch.tensor(2.0), "n_text_targets": 3, "n_audio_targets": torch.zeros((), dtype=torch.long)}
    assert OmniModule._flags(out, finite=True) == [True, True, False]
    assert OmniModule._flags(out) == [True, False]


def test_compile_option_wraps_the_family_forward_keeping_names(compose, monkeypatch):
    """compile=true: configure_model routes the family model's forward through torch.compile (stubbed here: the
    real compile takes minutes on this CPU); parameter names (checkpoint keys) are unchanged; default off."""
    from omni.train import build_module

    assert compose().compile is False
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append((fn, kw)) or fn)
    module = build_module(compose("compile=true"), None)
    names = [n for n, _ in module.named_parameters()]
    module.configure_model()
    module.configure_model()  # idempotent (Lightning may call it again)
    assert len(compiled) == 1 and compiled[0][1] == {"dynamic": True}
    assert compiled[0][0].__self__ is module.model  # the family model's own forward, not the LightningModule's
    assert [n for n, _ in module.named_parameters()] == names
    plain = build_module(compose(), None)
    plain.configure_model()
    assert len(compiled) == 1


@pytest.mark.parametrize("precision,clip,fused", [("32-true", 1.0, True), ("bf16-true", 1.0, True),
                                                   ("bf16-mixed", 1.0, False), ("bf16-mixed", None, True),
                                                   ("16-mixed", 1.0, False)])
def test_fused_adamw_default_except_where_lightning_refuses_it(compose, precision, clip, fused):
    """conf/train.yaml's AdamW is fused; Lightning's mixed-precision plugin refuses clipping with a fused optimizer,
    so under *-mixed with clipping the module builds it unfused (table drawn from Lightning's amp.clip_gradients)."""
    from types import SimpleNamespace

    from omni.train import build_module

    cfg = compose()
    assert cfg.optimizer.fused is True
    module = build_module(cfg, None)
    module._trainer = SimpleNamespace(precision=precision, gradient_clip_val=clip, estimated_stepping_batches=10)
    optimizer = module.configure_optimizers()["optimizer"]
    assert bool(optimizer.defaults["fused"]) is fused


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_peak_memory_counts_from_the_reset():
    """The bench's peak RSS is the run's own: a 256 MiB tensor freed before the reset is not in it (the control:
    before the reset it is)."""
    from omni.bench import peak_memory_gib, reset_peak_memory

    cpu = torch.device("cpu")
    big = torch.ones(64 * 2**20)  # 256 MiB, its own mmap: returned to the OS when freed
    del big
    before = peak_memory_gib(cpu)
    assert reset_peak_memory(cpu)
    after = peak_memory_gib(cpu)
    assert before - after > 0.2, (before, after)
