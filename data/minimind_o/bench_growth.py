"""Cost growth of MiniMind-O training: `python -m data.minimind_o.bench_growth [--mode grid|ddp] [train overrides]`.

grid (default): for every max_len in `--max-len` (256 512 1024 2048) and token budget in `--budgets` (2048 .. 16384
padded positions per batch, `data.max_tokens`), one fresh subprocess (so its peak RSS is that point's own) writes a
synthetic T2A corpus whose rows lay out to 75-100 % of max_len (data/minimind_o/bench_data.py: random Mimi codes),
builds the configured model (default `model=minimind_o_512`, the spec's benchmark size) and data module on it, and
times `--steps` optimizer steps (forward, backward, clip 1.0, AdamW step) after one warm-up step, at `--threads`
threads, fp32. Figures: useful tokens/s (batch `n_tokens`), padded positions/s, peak RSS.

ddp: 2-process DDP scaling on CPU (gloo, `--threads` threads each) of the configured (default tiny) model on the
bundled sample: the same per-rank batches timed with 1 process and with 2; efficiency = steps/s(2) / steps/s(1)
per rank (weak scaling: 1.0 = the second process is free).

Every figure is one JSON line ({"figure", "value", machine, threads, dtype, load}) and one text line.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

GRID_DEFAULTS = ["stage=sft_t2a", "model=minimind_o_512"]
DDP_DEFAULTS = ["stage=sft_t2a"]


def _context(threads: int) -> dict[str, Any]:
    from omni.bench_data import machine

    return {**machine(), "threads": threads, "dtype": "float32"}


def _emit(name: str, value: Any, unit: str, context: dict[str, Any], **extra: Any) -> dict[str, Any]:
    from omni.bench_data import load

    rec = {"figure": name, "value": value, "unit": unit, **extra, **context, "load": load()}
    print(json.dumps(rec))
    print(f"# {name}: {value} {unit} {extra} (load {rec['load']})", flush=True)
    return rec


def _module_and_loader(overrides: list[str], threads: int):
    import hydra
    import torch

    from omni.bench_data import compose
    from omni.train import build_module

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = compose(overrides)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    from omni.memory import configure_memory

    configure_memory(cfg)  # malloc_mmap_threshold_mib=, as under train.py
    module = build_module(cfg, None)
    module.configure_model()  # activation_checkpointing= / compile=, as Lightning does before fit
    model = module.model.train()
    optimizer = module.optimizer_factory(params=[p for p in model.parameters() if p.requires_grad])
    return model, optimizer, dm.train_dataloader()


def _step(model, optimizer, batch) -> None:
    import torch

    loss = model(batch)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def point(max_len: int, budget: int, steps: int, threads: int, overrides: list[str]) -> dict[str, Any]:
    """One grid point in this process: corpus, model, warm-up + `steps` timed steps."""
    import resource

    from data.minimind_o.bench_data import bench_rows
    from data.minimind_o.schema import WRITE_SCHEMA
    from data.prepare import ShardWriter

    from omni.bench_data import compose

    spk_dim = int(compose(overrides).data.spk_dim)  # the model's speaker-embedding width (rows must match it)
    tmp = tempfile.mkdtemp(prefix="omni_growth_")
    n_rows = max(16, (steps + 2) * budget // max(1, int(0.75 * max_len)) + 8)
    # laid-out length ~ frames + 30 positions with the tiny tokenizer (bench_data.py); rows over max_len are cut
    hi = max(8, max_len - 30)
    lo = max(4, int(0.75 * max_len) - 30)
    with ShardWriter(os.path.join(tmp, "train"), shard_rows=100_000, row_group_rows=256, schema=WRITE_SCHEMA) as w:
        for row in bench_rows(n_rows, lo, hi, spk_dim=spk_dim):
            w.add(row)
    model, optimizer, loader = _module_and_loader(
        [*overrides, f"data.train={tmp}/train", "data.val=null", "data.test=null", f"data.max_len={max_len}",
         f"data.max_tokens={budget}", "data.max_batch_size=null", "data.num_workers=0"], threads)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) > steps:
            break
    _step(model, optimizer, batches[0])
    t0 = time.perf_counter()
    for batch in batches[1:]:
        _step(model, optimizer, batch)
    seconds = time.perf_counter() - t0
    useful = sum(int(b["n_tokens"]) for b in batches[1:])
    padded = sum(int(b["input_ids"].shape[0] * b["input_ids"].shape[-1]) for b in batches[1:])
    return {"max_len": max_len, "budget": budget, "steps": len(batches) - 1, "seconds": round(seconds, 2),
            "useful_tokens_per_s": round(useful / seconds, 1), "padded_tokens_per_s": round(padded / seconds, 1),
            "rows_per_batch": round(sum(len(b["ids"]) for b in batches[1:]) / max(1, len(batches) - 1), 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1),
            "params": sum(p.numel() for p in model.parameters())}


def grid(args: argparse.Namespace, overrides: list[str]) -> list[dict[str, Any]]:
    context, out = _context(args.threads), []
    for max_len in args.max_len:
        for budget in args.budgets:
            if budget < max_len:
                continue
            cmd = [sys.executable, "-m", "data.minimind_o.bench_growth", "--point", str(max_len), str(budget),
                   "--steps", str(args.steps), "--threads", str(args.threads), *overrides]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"grid point max_len={max_len} budget={budget} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            out.append(_emit("growth", res.pop("useful_tokens_per_s"), "useful tok/s", context, **res))
    return out


def _ddp_worker(rank: int, world: int, port: int, overrides: list[str], threads: int, steps: int, queue) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, optimizer, loader = _module_and_loader(overrides, threads)
    # heads a batch does not use (e.g. the Talker on text-only rows) get no gradient: DDP must be told
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    batches = [b for _, b in zip(range(steps + 1), loader)]  # the same per-rank batches for every world size
    _step(ddp, optimizer, batches[0])
    dist.barrier()
    t0 = time.perf_counter()
    for batch in batches[1:]:
        _step(ddp, optimizer, batch)
    dist.barrier()
    if rank == 0:
        queue.put(time.perf_counter() - t0)
    dist.destroy_process_group()


def ddp(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    import socket

    import torch.multiprocessing as mp

    context, seconds = _context(args.threads), {}
    for world in (1, 2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_ddp_worker, args=(r, world, port, overrides, args.threads, args.steps, queue))
                 for r in range(world)]
        for p in procs:
            p.start()
        while True:  # a worker that fails never reports: stop on its exit code, never wait forever
            try:
                seconds[world] = queue.get(timeout=5)
                break
            except Exception:  # queue.Empty
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:
                    for p in procs:
                        p.kill()
                    raise RuntimeError(f"DDP worker exited with {failed} (world {world}); see its traceback above")
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"DDP worker exited with {p.exitcode} (world {world})")
    eff = seconds[1] / seconds[2]
    return _emit("ddp_scaling_efficiency", round(eff, 3), "x", context, processes=2, backend="gloo",
                 steps=args.steps, step_s_1proc=round(seconds[1] / args.steps, 3),
                 step_s_2proc=round(seconds[2] / args.steps, 3), speedup=round(2 * eff, 3))


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m data.minimind_o.bench_growth", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("grid", "ddp"), default="grid")
    p.add_argument("--max-len", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--budgets", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    p.add_argument("--steps", type=int, default=2, help="timed optimizer steps per point (after one warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--point", type=int, nargs=2, default=None, help=argparse.SUPPRESS)  # one grid point (internal)
    from omni.bench_data import parse_with_overrides

    return parse_with_overrides(p, argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(argv)
    if args.point:
        print(json.dumps(point(*args.point, args.steps, args.threads, [*GRID_DEFAULTS, *overrides])))
    elif args.mode == "grid":
        grid(args, overrides)
    else:
        ddp(args, [*DDP_DEFAULTS, *overrides])
    return 0


if __name__ == "__main__":
    sys.exit(main())
