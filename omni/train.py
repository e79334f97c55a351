"""Library side of `python train.py`: build everything from the composed config, fit, test, return metrics.

A curriculum (`experiment=curriculum`) runs its stages in order; each starts from the previous stage's last
checkpoint. Tests call `train(cfg)` in-process with a composed config.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from omni.config import check_families, configure_environment, validate_config

log = logging.getLogger(__name__)


def instantiate_section(section: DictConfig | None) -> list[Any]:
    """Instantiate every non-null `_target_` entry of a config mapping (callbacks, loggers)."""
    if not section:
        return []
    return [hydra.utils.instantiate(node) for node in section.values() if node is not None and "_target_" in node]


def build_module(cfg: DictConfig, init_from: str | None):
    from omni.stages.module import OmniModule

    model = hydra.utils.instantiate(cfg.model)
    scheduler = hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return OmniModule(
        model=model,
        stage=OmegaConf.to_container(cfg.stage, resolve=True),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=scheduler,
        init_from=init_from,
        run_config=OmegaConf.to_container(cfg, resolve=True),
        max_nonfinite_steps=cfg.get("max_nonfinite_steps", 10),
        lora=OmegaConf.to_container(cfg.lora, resolve=True) if cfg.get("lora") else None,  # conf/lora/
        compile=bool(cfg.get("compile", False)),  # torch.compile the family model's forward
        activation_checkpointing=bool(cfg.get("activation_checkpointing", False)),  # omni.memory
    )


def run_stage(cfg: DictConfig, init_from: str | None, ckpt_path: str | None) -> tuple[dict[str, float], str]:
    """Fit (and test) the stage currently in `cfg.stage`; returns metrics and the path of its last checkpoint."""
    log.info("stage %s: %s", cfg.stage.name, cfg.stage.get("description", ""))
    datamodule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg, init_from)
    callbacks = instantiate_section(cfg.get("callbacks"))
    loggers = instantiate_section(cfg.get("logger"))
    if not loggers:  # `logger=none`: nothing to send learning rates to (Lightning refuses the monitor then)
        from lightning.pytorch.callbacks import LearningRateMonitor

        if any(isinstance(c, LearningRateMonitor) for c in callbacks):
            log.info("no logger: the learning-rate monitor is left out")
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    from omni import checkpoint_io

    checkpoint_io.install(trainer)  # atomic writes next to the checkpoint; weights-only, allow-listed reads
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    last = _last_checkpoint(cfg, trainer)
    if cfg.get("test") and cfg.data.get("test"):
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        for row in trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True):
            metrics.update({k: float(v) for k, v in row.items()})
    _finish_loggers()
    return metrics, last


def _last_checkpoint(cfg: DictConfig, trainer) -> str:
    cb = trainer.checkpoint_callback
    if cb is not None and getattr(cb, "last_model_path", ""):
        return cb.last_model_path
    path = Path(cfg.paths.output_dir) / "checkpoints" / cfg.stage.name / "last.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def _finish_loggers() -> None:
    """Close the wandb run so the next stage / multirun job starts its own."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def train(cfg: DictConfig) -> dict[str, float]:
    """Train the configured stage, or every stage of `cfg.curriculum` in order. Returns the final metrics."""
    import lightning as L

    configure_environment()
    from omni.families import registry

    check_families(cfg, registry())  # a model, data or stage of another family fails here in one line
    from omni.precision import resolve_trainer_precision

    resolve_trainer_precision(cfg)  # trainer.precision=auto -> bf16-mixed where bf16 units exist, else 32-true
    validate_config(cfg)  # wrong types fail here naming the key, not deep inside a run
    check_output_dirs(cfg)  # an unwritable output folder fails here naming it, not after the first epoch
    from omni.memory import configure_memory

    configure_memory(cfg)  # malloc_mmap_threshold_mib; activation checkpointing under FSDP's own policy fails here
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    curriculum = list(cfg.curriculum.keys()) if cfg.get("curriculum") else [None]
    init_from, ckpt_path = cfg.get("init_from"), resolve_ckpt_path(cfg)
    metrics: dict[str, float] = {}
    for name in curriculum:
        if name is not None:
            with open_dict(cfg):
                cfg.stage = cfg.curriculum[name]
        metrics, init_from = run_stage(cfg, init_from, ckpt_path)
        ckpt_path = None  # a resumed curriculum resumes its first stage only
        log.info("stage %s done; last checkpoint %s", cfg.stage.name, init_from)
    metrics["last_checkpoint"] = init_from  # type: ignore[assignment]
    return metrics


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path`: a local checkpoint file (URLs refused; read weights-only), or `last`: the newest complete
    `*.ckpt` of the run folder's `checkpoints/<stage.name>/` (of the first stage in a curriculum), the run folder
    being `resume_dir` if set, else `paths.output_dir`. A file that is truncated or corrupt fails here, naming it."""
    from omni.checkpoint import find_last_checkpoint, is_complete_checkpoint, load_torch_file, local_checkpoint_path

    value = cfg.get("ckpt_path")
    if not value:
        return None
    if str(value) == "last":
        stage = cfg.curriculum[next(iter(cfg.curriculum))] if cfg.get("curriculum") else cfg.stage
        folder = Path(cfg.get("resume_dir") or cfg.paths.output_dir) / "checkpoints" / stage.name
        path = find_last_checkpoint(folder)
        log.info("ckpt_path=last: resuming from %s", path)
        return str(path)
    path = local_checkpoint_path(value, "ckpt_path")
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={value}: no such checkpoint file")
    if not is_complete_checkpoint(path):
        load_torch_file(path, what="ckpt_path")  # raises naming the file and what is wrong with it
    return str(path)


def check_output_dirs(cfg: DictConfig) -> None:
    """Every folder the run will write (paths.output_dir, trainer.default_root_dir, callbacks' / loggers' dirpath,
    out_dir, save_dir and report_path's folder) is created and probed with a temporary file; one that cannot be
    written fails now naming its config key and path."""
    import tempfile

    folders: dict[str, str] = {"paths.output_dir": cfg.paths.output_dir}
    if cfg.get("trainer") and cfg.trainer.get("default_root_dir"):
        folders["trainer.default_root_dir"] = cfg.trainer.default_root_dir
    for group in ("callbacks", "logger"):
        for name, node in (cfg.get(group) or {}).items():
            if not isinstance(node, DictConfig):
                continue
            for key in ("dirpath", "out_dir", "save_dir", "report_path"):
                if node.get(key):
                    folders[f"{group}.{name}.{key}"] = str(Path(node[key]).parent if key == "report_path" else
                                                           node[key])
    for key, folder in folders.items():
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
                pass
        except OSError as e:
            raise PermissionError(f"{key}={folder}: the run could not write there ({e.strerror or e}); "
                                  f"choose a writable folder") from e


class NonFiniteMetricError(ValueError):
    """The optimized metric is nan / inf: a sweeper must record a failed trial, not a value."""


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value a sweeper optimises. A non-finite value raises (the sweeper records a failed trial); a metric of
    a split that never ran (e.g. `trainer.limit_val_batches=0`, data without a val split) gives None with a
    warning; a metric never logged while its split ran (a typo) raises naming the logged ones."""
    import math

    if not name:
        return None
    if name not in metrics:
        split = name.split("/", 1)[0] + "/" if "/" in name else None
        if split and not any(str(k).startswith(split) for k in metrics):
            log.warning("optimized_metric %r: no metric was produced (no %s metric was logged: that split did not "
                        "run); returning none", name, split.rstrip("/"))
            return None
        raise KeyError(f"optimized_metric {name!r} was not logged; logged metrics: {sorted(metrics)}")
    value = float(metrics[name])
    if not math.isfinite(value):
        raise NonFiniteMetricError(f"optimized_metric {name!r} is {value}: the run produced no usable value "
                                   f"(reported as a failed trial, not as a result)")
    return value
