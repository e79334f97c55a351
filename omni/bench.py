"""Training-throughput benchmark: `python -m omni.bench [any train.py overrides] bench.steps=20`.

Prints useful (non-padding) training tokens/s, peak memory, and achieved FLOP/s as a fraction of a matmul peak
measured on the same machine in the same dtype. FLOPs are counted by torch's FlopCounterMode on a real step.
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from omni.config import configure_environment, register_resolvers

register_resolvers()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n matmul (the machine's practical dense peak for this dtype)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
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
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process peak RSS)


def run_benchmark(cfg: DictConfig) -> dict:
    from omni.train import build_module

    configure_environment()
    b = cfg.bench
    device = torch.device(b.device if b.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[b.dtype]
    torch.manual_seed(cfg.seed)
    module = build_module(cfg, cfg.get("init_from"))
    model = module.model.to(device)
    model.train()
    optimizer = module.optimizer_factory(params=[p for p in model.parameters() if p.requires_grad])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(batch)
        if len(batches) >= b.steps + b.warmup:
            break
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(batch: dict) -> None:
        with autocast:
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[: b.warmup]:
        step(to_device(batch, device))
    flop_batch = to_device(batches[b.warmup], device)
    with FlopCounterMode(display=False) as counter:
        step(flop_batch)
    flops_per_token = counter.get_total_flops() / flop_batch["n_tokens"]
    timed = [to_device(x, device) for x in batches[b.warmup:]]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    for batch in timed:
        step(batch)
    _sync(device)
    elapsed = time.perf_counter() - t0
    tokens = sum(x["n_tokens"] for x in timed)
    padded = sum(x["input_ids"].shape[0] * x["input_ids"].shape[-1] for x in timed)
    peak = matmul_peak(device, dtype, b.matmul_n)
    achieved = flops_per_token * tokens / elapsed
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "model": (cfg.model.cfg.get("backbone") or cfg.model.cfg.get("thinker") or {}).get("hidden_size"),
        "stage": cfg.stage.name, "dtype": b.dtype,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": module.param_counts["trainable"],  # the stage's patterns (+ LoRA adapters, lora=)
        "lora_params": module.param_counts.get("lora", 0),
        "batch_items": round(sum(len(x["ids"]) for x in timed) / len(timed), 2),
        "max_seq_len": max(int(x["input_ids"].shape[-1]) for x in timed),
        "steps": len(timed), "tokens": tokens, "padding_fraction": round(1 - tokens / max(padded, 1), 4),
        "tokens_per_s": round(tokens / elapsed, 1), "step_s": round(elapsed / len(timed), 4),
        "peak_memory_gib": round(peak_memory_gib(device), 3),
        "flops_per_token": round(flops_per_token), "achieved_tflops": round(achieved / 1e12, 4),
        "matmul_peak_tflops": round(peak / 1e12, 4), "fraction_of_matmul_peak": round(achieved / peak, 4),
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    report = run_benchmark(cfg)
    for key, value in report.items():
        print(f"{key:>24}: {value}")
    if cfg.bench.out:
        Path(cfg.bench.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
