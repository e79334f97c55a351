"""Scale of the data path: `python -m omni.bench_data [--rows 1000000] [train.py overrides, e.g. stage=sft_t2a]`.

Writes a synthetic corpus into a temporary folder: the configured train split's `--distinct` smallest rows (by
their Arrow size; the family's own schema, so the family's own index reads them) tiled to `--rows` rows with unique
ids, `--shard-rows` rows per shard, `--group-rows` per row group (parquet dictionary encoding keeps the repeated
values small on disk). Then, through the configured DataModule (the family's real index, dataset, collator,
token-budget sampler):

- index build time (target <= 30 s at 1,000,000 rows) and the RSS it leaves; where the family's data config has
  `index_cache`, the build is cold (a fresh cache folder under the corpus) and a second build, reading that cache,
  is timed as `index_build_warm_s`;
- loader samples/s alone (the train loader, `--batches` batches) with RSS every `--rss-every` batches (flat =
  the corpus streams through a bounded cache);
- the steps' consumption: samples/s of real optimizer steps of the configured (tiny) model on those batches, and
  the headroom = loader samples/s / steps' samples/s (target >= 20x). Both also give `cpu_ms_per_row`, this
  process's CPU time per row (comparable across machine loads; with workers > 0 the loader's work runs in them).

Each figure is printed as one JSON line ({"figure": ..., "value": ..., machine, threads, load}) and as text. The
family comes from the overrides (a stage selects its family's tiny model and data); nothing here names one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CONF = Path(__file__).resolve().parents[1] / "conf"


def anon_rss_mib() -> float | None:
    """The anonymous part of the RSS (MiB): heap and tensors, without file-backed pages such as a memory-mapped
    arrow file's (which the kernel can drop); None where /proc/self/status has no RssAnon."""
    from omni.memory import proc_status_kib

    kib = proc_status_kib("RssAnon")
    return None if kib is None else kib / 2**10


def rss_mib() -> float:
    """Current resident set size of this process (MiB), from /proc (ru_maxrss is the peak, not the curve)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"machine": f"{cpu}, {os.cpu_count()} cpus", "threads": torch.get_num_threads()}


def load() -> str:
    return "%.2f %.2f %.2f" % os.getloadavg()


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from omni.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations resolve as under train.py
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def smallest_rows(datamodule: Any, distinct: int) -> pa.Table:
    """The `distinct` smallest rows (Arrow bytes) of the datamodule's train split among those its index keeps for
    the configured tasks (so the tiled corpus serves the stage), in file order."""
    index = datamodule.indexes["train"]
    eligible = np.unique(np.concatenate([index.rows_for(t) for t, w in datamodule.tasks.items() if float(w) > 0]))
    picked = []
    for i in eligible.tolist():
        path, _, _, row = index.location(i)
        picked.append((path, row))
    tables = {f: pq.read_table(f) for f in sorted({p for p, _ in picked})}
    rows = [tables[p].slice(r, 1) for p, r in picked]
    sizes = np.array([t.get_total_buffer_size() for t in rows])
    keep = np.sort(np.argsort(sizes, kind="stable")[: max(1, distinct)])
    return pa.concat_tables([rows[k] for k in keep.tolist()], promote_options="default").combine_chunks()


def write_corpus(rows: pa.Table, out: str, n_rows: int, shard_rows: int, group_rows: int) -> dict[str, Any]:
    """`n_rows` rows tiled from `rows` into out/shard-*.parquet; a unique `id` when the schema has one."""
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    n_shards = -(-n_rows // shard_rows)
    has_id = "id" in rows.column_names
    for s in range(n_shards):
        start, stop = s * shard_rows, min(n_rows, (s + 1) * shard_rows)
        shard = rows.take(pa.array(np.arange(start, stop) % rows.num_rows))
        if has_id:
            ids = pa.array([f"bench-{i:08d}" for i in range(start, stop)], type=rows.schema.field("id").type)
            shard = shard.set_column(shard.column_names.index("id"), "id", ids)
        # zstd finds the tiled rows' repeats inside a page (nested list columns get no dictionary encoding)
        pq.write_table(shard, os.path.join(out, f"shard-{s:05d}.parquet"), row_group_size=group_rows,
                       compression="zstd")
    size = sum(f.stat().st_size for f in Path(out).glob("*.parquet"))
    return {"rows": n_rows, "shards": n_shards, "rows_per_group": group_rows, "distinct_rows": rows.num_rows,
            "disk_mib": round(size / 2**20, 1), "write_s": round(time.perf_counter() - t0, 2)}


class Report:
    def __init__(self, context: dict[str, Any], stream=None) -> None:
        # sys.stdout looked up now, not when this module was imported (a captured / replaced stdout is closed later)
        self.context, self.stream, self.figures = context, stream or sys.stdout, {}

    def figure(self, name: str, value: Any, unit: str = "", **extra: Any) -> None:
        rec = {"figure": name, "value": value, "unit": unit, **extra, **self.context, "load": load()}
        self.figures[name] = value
        print(json.dumps(rec), file=self.stream)
        print(f"# {name:>26}: {value} {unit}".rstrip() + (f"  {extra}" if extra else "") + f"  (load {rec['load']})",
              file=self.stream)
        self.stream.flush()


def run(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    import hydra
    import torch
    from omegaconf import open_dict

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = compose(overrides)
    report = Report({**machine(), "stage": str(cfg.stage.name), "data": str(cfg.data._target_).rpartition(".")[2],
                     "source": args.source})
    tmp = args.out or tempfile.mkdtemp(prefix="omni_bench_data_")
    cache = "index_cache" in cfg.data  # a family with an on-disk index cache: a fresh one here (cold, then warm)
    if cache:
        shutil.rmtree(os.path.join(tmp, "index_cache"), ignore_errors=True)
        with open_dict(cfg):
            cfg.data.index_cache = os.path.join(tmp, "index_cache")
    try:
        source = hydra.utils.instantiate(cfg.data)
        source.setup("fit")
        corpus = write_corpus(smallest_rows(source, args.distinct), os.path.join(tmp, "train"),
                              args.rows, args.shard_rows, args.group_rows)
        del source
        report.figure("corpus", corpus)
        with open_dict(cfg):
            cfg.data.train, cfg.data.val, cfg.data.test = os.path.join(tmp, "train"), None, None
            cfg.data.num_workers = args.workers
            if args.source != "parquet":  # the same shards through Hugging Face `datasets` (data/hf.py)
                # its prepared arrow copy goes under the corpus folder (removed with it), not ~/.cache
                import datasets.config

                os.environ["HF_DATASETS_CACHE"] = os.path.join(tmp, "hf_datasets_cache")
                datasets.config.HF_DATASETS_CACHE = Path(os.environ["HF_DATASETS_CACHE"])  # read at call time
                cfg.data.source = "hf"
                cfg.data.hf = {**(cfg.data.get("hf") or {}), "path": cfg.data.train, "name": None,
                               "split": "train", "val_split": None, "test_split": None, "schema": "auto",
                               "streaming": args.source == "hf-stream", "revision": None}
                for key, default in (("group_rows", args.group_rows), ("chunk_rows", 1000),
                                     ("shuffle_buffer", 1000)):
                    cfg.data.hf.setdefault(key, default)
                cfg.data.train = None
        datamodule = hydra.utils.instantiate(cfg.data)
        rss0 = rss_mib()
        t0, c0 = time.perf_counter(), time.process_time()
        datamodule.setup("fit")
        build_s, build_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        index = datamodule.indexes["train"]
        # cpu_s: this process's CPU time (all its threads); wall > cpu when other processes share the cores
        report.figure("index_build_s", round(build_s, 2), "s", rows_kept=len(index), cpu_s=round(build_cpu_s, 2),
                      rows_per_s=round(len(index) / build_s), target_s=30)
        report.figure("index_rss_mib", round(rss_mib() - rss0, 1), "MiB", rss_total_mib=round(rss_mib(), 1))
        if cache or args.source == "hf":  # the rerun's build: the index cache / `datasets`' prepared arrow files
            t0, c0 = time.perf_counter(), time.process_time()
            hydra.utils.instantiate(cfg.data).setup("fit")
            report.figure("index_build_warm_s", round(time.perf_counter() - t0, 2), "s",
                          cpu_s=round(time.process_time() - c0, 2), target_s=30)

        loader = datamodule.train_dataloader()
        if args.source == "hf-stream":  # a stream has no length: the batches asked for (the whole epoch: -)
            n_batches = args.batches or sys.maxsize
        else:
            n_batches = min(args.batches, len(loader)) if args.batches else len(loader)
        curve, rows, tokens, padded = [], 0, 0, 0
        it = iter(loader)
        t0, c0 = time.perf_counter(), time.process_time()
        for k in range(n_batches):
            batch = next(it, None)
            if batch is None:  # a stream's end
                break
            rows += len(batch["ids"])
            tokens += int(batch["n_tokens"])
            padded += int(batch["input_ids"].shape[0] * batch["input_ids"].shape[-1])
            if k % args.rss_every == 0 or k == n_batches - 1:
                anon = anon_rss_mib()
                curve.append([k, round(rss_mib(), 1), None if anon is None else round(anon, 1)])
        loader_s, loader_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        loader_rate = rows / loader_s
        report.figure("loader_samples_per_s", round(loader_rate, 1), "rows/s", batches=n_batches, rows=rows,
                      tokens_per_s=round(tokens / loader_s), padding_fraction=round(1 - tokens / max(padded, 1), 4),
                      workers=args.workers, cpu_ms_per_row=round(loader_cpu_s / max(rows, 1) * 1e3, 3))
        report.figure("rss_curve_mib", curve, "MiB", every=args.rss_every, columns=["batch", "rss", "anon_rss"],
                      growth_mib=round(curve[-1][1] - curve[0][1], 1) if curve else 0.0,
                      anon_growth_mib=round(curve[-1][2] - curve[0][2], 1) if curve and curve[0][2] else None)
        del it

        from omni.train import build_module

        module = build_module(cfg, None)
        model = module.model.train()
        optimizer = module.optimizer_factory(params=[p for p in model.parameters() if p.requires_grad])
        step_batches = []
        for batch in loader:
            step_batches.append(batch)
            if len(step_batches) > args.steps:
                break

        def step(batch: dict) -> None:
            loss = model(batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step(step_batches[0])  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in step_batches[1:]:
            step(batch)
        step_s, step_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        step_rows = sum(len(b["ids"]) for b in step_batches[1:])
        step_rate = step_rows / step_s
        report.figure("step_samples_per_s", round(step_rate, 1), "rows/s", steps=len(step_batches) - 1,
                      params=sum(p.numel() for p in model.parameters()),
                      cpu_ms_per_row=round(step_cpu_s / max(step_rows, 1) * 1e3, 3))
        report.figure("loader_headroom", round(loader_rate / step_rate, 1), "x", target=20)
        report.figure("peak_rss_mib", round(_peak_rss_mib(), 1), "MiB")
        return report.figures
    finally:
        if not args.out and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m omni.bench_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--shard-rows", type=int, default=10_000)
    p.add_argument("--group-rows", type=int, default=1_000)
    p.add_argument("--distinct", type=int, default=16, help="distinct source rows tiled (the smallest of the split)")
    p.add_argument("--batches", type=int, default=300, help="loader batches timed (0: the whole epoch)")
    p.add_argument("--rss-every", type=int, default=25)
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps of the configured model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (data.num_workers)")
    p.add_argument("--source", choices=("parquet", "hf", "hf-stream"), default="parquet",
                   help="read the shards as parquet, or through Hugging Face datasets (map-style / streaming)")
    p.add_argument("--out", default=None, help="corpus folder (kept); default: a temporary folder, removed")
    p.add_argument("--keep", action="store_true", help="keep the temporary corpus")
    return parse_with_overrides(p, argv)


def parse_with_overrides(p: argparse.ArgumentParser, argv: list[str] | None
                         ) -> tuple[argparse.Namespace, list[str]]:
    """A benchmark's own options, and the train.py `key=value` overrides that follow them (offline settings set)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        p.error(f"unknown option(s) {bad}; train.py overrides are key=value")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(argv)
    run(args, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
