"""Process bodies for tests that spawn torch.distributed (gloo) workers: kept in a module of their own so the
spawned processes import only what they use (not the test module's Lightning imports)."""
from __future__ import annotations


def text_error_rates_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import json

    import torch
    import torch.distributed as dist

    from callbacks.metrics import TextErrorRates

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rates = TextErrorRates(["", "_only_rank1"])
        if rank == 0:
            rates.update("", ["abcd"], ["abxd"])
        else:
            rates.update("", ["a b c d", ""], ["a x c", "x"])
            rates.update("_only_rank1", ["one"], ["two"])
        out = rates.compute()
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump({"synced": out}, f)
    finally:
        dist.destroy_process_group()


def decision_metrics_worker(rank: int, world: int, init_file: str, out_dir: str, counts: list) -> None:
    """Rank r adds `counts[r]` (a decision-counts dict) to a DecisionMetrics and writes the synced scores."""
    import json

    import torch
    import torch.distributed as dist

    from omni.mini_omni3.metrics import DecisionMetrics

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metric = DecisionMetrics()
        metric.update({"decision_counts": counts[rank]})
        out = {k: float(v) for k, v in metric.compute().items()}
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()
