"""Training-throughput benchmark: `python -m omni.bench [any train.py overrides] bench.steps=20`.

It times the real training step: the configured Lightning Trainer (`trainer.precision`, `auto` included; gradient
clipping; the LR scheduler; the module's non-finite guards and logging calls) fits the configured model and data
module through its real loader. A callback notes the wall clock at the end of every optimizer step; after
`bench.warmup` steps, the next `bench.steps` are timed end to end, so loading and collating each batch, forward,
backward, clipping, the optimizer and the scheduler are all inside the clock. Loggers, checkpoints, validation and
the progress bar are off (they are not the step).

Figures (text and one JSON line each, with machine, threads, precision, matmul dtype and the load average):
- useful tokens/s = non-padding target-bearing tokens of the timed batches (`batch["n_tokens"]`) / timed seconds;
- FLOPs per useful token = FLOPs torch's FlopCounterMode counts in one forward + backward of a real batch of the
  same loader (matmuls and attention; padded positions included, as they are computed) / that batch's useful tokens
  (the optimizer's elementwise work is not counted: FlopCounterMode counts no elementwise op);
- achieved FLOP/s = FLOPs per useful token * useful tokens/s;
- peak = the best FLOP/s of an `bench.matmul_n`^3 matmul measured on this machine, in the dtype the run's matmuls
  use (bf16 under bf16-mixed), at the run's thread count, before and after the run (the larger is the divisor);
  fraction of peak = achieved / peak. Never a constant: a divisor from another dtype or machine gave 910 % once.
- peak memory = the peak RSS of the process during `Trainer.fit` (CPU; VmHWM reset after the FLOP count, which
  is not training; `peak_memory_scope: process` where Linux's /proc cannot reset it) or peak allocated CUDA memory.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, open_dict
from torch.utils.flop_counter import FlopCounterMode

from omni.config import configure_environment, register_resolvers

register_resolvers()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n matmul (the machine's practical dense peak for this dtype at the current threads)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak RSS since `reset_peak_memory` (VmHWM; ru_maxrss, the
    whole process's peak, where /proc cannot reset it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    from omni.memory import proc_status_kib

    kib = proc_status_kib("VmHWM")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 2**20  # KiB -> GiB


def reset_peak_memory(device: torch.device) -> bool:
    """Start the peak-memory count here (the FLOP-counting pass before the run is not training): CUDA's peak
    stats, or Linux's VmHWM (writing 5 to /proc/self/clear_refs). False where the peak cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine() -> dict:
    """What the figures were measured on: CPU model, logical cores, GPU, threads and the load average now."""
    from omni.precision import cpu_model

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def count_flops(model: torch.nn.Module, batch: dict, dtype: torch.dtype, device: torch.device) -> float:
    """FLOPs of one forward + backward of `batch` (FlopCounterMode: matmuls and attention); grads are dropped."""
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype in (torch.bfloat16, torch.float16))
    with FlopCounterMode(display=False) as counter:
        with autocast:
            loss = model(to_device(batch, device))["loss"]
        if loss.requires_grad:
            loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


class StepTimer:
    """Lightning callback: wall clock at the end of each training batch; `warmup` batches untimed, then `steps`
    timed from the end of the last warm-up batch (data loading of the next batch included) to the end of the last."""

    def __new__(cls, *args, **kwargs):  # a Lightning Callback, imported lazily (keeps `import omni.bench` light)
        from lightning.pytorch.callbacks import Callback

        class _StepTimer(Callback):
            def __init__(self, warmup: int, steps: int) -> None:
                self.warmup, self.steps = warmup, steps
                self.done = 0
                self.last: float | None = None
                self.times: list[float] = []
                self.tokens = self.padded = self.items = 0
                self.max_len = 0

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if torch.cuda.is_available() and pl_module.device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                self.done += 1
                if self.done > self.warmup:
                    self.times.append(now - self.last)
                    ids = batch["input_ids"]
                    self.tokens += int(batch["n_tokens"])
                    self.padded += int(ids.shape[0]) * int(ids.shape[-1])
                    self.items += len(batch["ids"])
                    self.max_len = max(self.max_len, int(ids.shape[-1]))
                self.last = now
                if self.done >= self.warmup + self.steps:
                    trainer.should_stop = True

        return _StepTimer(*args, **kwargs)


def run_benchmark(cfg: DictConfig) -> dict:
    from omni.precision import matmul_dtype, resolve_trainer_precision
    from omni.train import build_module

    configure_environment()
    b = cfg.bench
    if b.get("dtype"):
        raise ValueError(f"bench.dtype={b.dtype} is gone: the benchmark runs trainer.precision (auto, 32-true, "
                         f"bf16-mixed, ...); use trainer.precision=bf16-mixed instead")
    with open_dict(cfg):
        if b.device != "auto":
            cfg.trainer.accelerator = {"cuda": "gpu"}.get(b.device, b.device)
        precision = resolve_trainer_precision(cfg)
    device = torch.device("cuda" if str(cfg.trainer.accelerator) in ("gpu", "cuda") or (
        str(cfg.trainer.accelerator) == "auto" and torch.cuda.is_available()) else "cpu")
    dtype = matmul_dtype(precision)
    from omni.memory import configure_memory

    configure_memory(cfg)
    load_before = load_average()
    peak_before = matmul_peak(device, dtype, b.matmul_n)
    fp32_peak = peak_before if dtype == torch.float32 else matmul_peak(device, torch.float32, b.matmul_n)

    torch.manual_seed(cfg.seed)
    module = build_module(cfg, cfg.get("init_from"))
    # FLOPs of one real batch of the same loader (a separate data module instance: the fit's loader is untouched)
    counting = hydra.utils.instantiate(cfg.data)
    counting.setup("fit")
    flop_batch = next(b_ for b_ in counting.train_dataloader() if b_["ids"])
    model = module.model.to(device).train()
    flops_per_token = count_flops(model, flop_batch, dtype, device) / int(flop_batch["n_tokens"])
    del counting, flop_batch

    timer = StepTimer(b.warmup, b.steps)
    datamodule = hydra.utils.instantiate(cfg.data)
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=[timer], logger=False, max_steps=b.warmup + b.steps, max_epochs=-1,
        limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_train_batches=None)
    peak_reset = reset_peak_memory(device)  # the peak of the run itself, not of the FLOP count above
    trainer.fit(module, datamodule=datamodule)
    if len(timer.times) < b.steps:
        raise RuntimeError(f"bench: only {len(timer.times)} of bench.steps={b.steps} timed steps ran "
                           f"(the data gave {timer.done} batches in all: lower bench.steps / bench.warmup)")
    elapsed = sum(timer.times)
    peak_after = matmul_peak(device, dtype, b.matmul_n)
    peak = max(peak_before, peak_after)
    achieved = flops_per_token * timer.tokens / elapsed
    info = machine()
    return {
        "machine": info.get("gpu") or info["cpu"], "cores": info["cores"], "threads": info["threads"],
        "device": device.type,
        "model": (cfg.model.cfg.get("backbone") or cfg.model.cfg.get("thinker") or {}).get("hidden_size"),
        "stage": cfg.stage.name, "precision": str(precision), "matmul_dtype": str(dtype).removeprefix("torch."),
        "params": sum(p.numel() for p in module.model.parameters()),
        "trainable_params": module.param_counts["trainable"],  # the stage's patterns (+ LoRA adapters, lora=)
        "lora_params": module.param_counts.get("lora", 0),
        "gradient_clip_val": cfg.trainer.get("gradient_clip_val"),
        "activation_checkpointing": bool(cfg.get("activation_checkpointing")),
        "malloc_mmap_threshold_mib": cfg.get("malloc_mmap_threshold_mib"),
        "scheduler": (cfg.get("scheduler") or {}).get("_target_"),
        "batch_items": round(timer.items / len(timer.times), 2), "max_seq_len": timer.max_len,
        "steps": len(timer.times), "tokens": timer.tokens,
        "padding_fraction": round(1 - timer.tokens / max(timer.padded, 1), 4),
        "tokens_per_s": round(timer.tokens / elapsed, 1), "step_s": round(elapsed / len(timer.times), 4),
        "step_s_median": round(statistics.median(timer.times), 4),
        "peak_memory_gib": round(peak_memory_gib(device), 3),
        "peak_memory_scope": "fit" if peak_reset else "process",
        "flops_per_token": round(flops_per_token), "achieved_tflops": round(achieved / 1e12, 4),
        "matmul_peak_tflops": round(peak / 1e12, 4),
        "matmul_peak_tflops_before_after": [round(peak_before / 1e12, 4), round(peak_after / 1e12, 4)],
        "fp32_matmul_peak_tflops": round(max(fp32_peak, peak if dtype == torch.float32 else 0) / 1e12, 4),
        "fraction_of_matmul_peak": round(achieved / peak, 4),
        "load_average_before_after": [load_before, load_average()],
    }


CONTEXT_KEYS = ("machine", "cores", "threads", "device", "precision", "matmul_dtype", "load_average_before_after")


def json_lines(report: dict) -> list[str]:
    """One JSON object per figure, each carrying the context it was measured in (machine, threads, dtype, load)."""
    context = {k: report[k] for k in CONTEXT_KEYS if k in report}
    return [json.dumps({"figure": k, "value": v, **context}) for k, v in report.items() if k not in CONTEXT_KEYS]


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    report = run_benchmark(cfg)
    for key, value in report.items():
        print(f"{key:>26}: {value}")
    for line in json_lines(report):
        print(line)
    if cfg.bench.out:
        Path(cfg.bench.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
