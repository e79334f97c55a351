"""One LightningModule for every stage of a family: the stage config says what trains and on which tasks.

Steps read like prose: the family model computes its losses from a collated batch; this module logs them,
freezes by the stage's patterns, builds the optimizer from Hydra partials and records the run config in the
checkpoint as plain data (so checkpoints load with `torch.load(weights_only=True)`).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from lightning import LightningModule
from torch import nn

from omni.checkpoint import load_model_weights
from omni.lora import BASE_FROZEN, apply_lora, trainable_with_lora
from omni.lora import settings as lora_settings
from omni.stages.freeze import apply_trainable, frozen_modules_eval

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class StageConfig:
    """What a stage trains (`trainable` globs over model parameter names) and on which task mix."""

    name: str
    trainable: list[str]
    tasks: dict[str, float]
    optional_trainable: list[str] = field(default_factory=list)  # trained when the model has them (no warning)
    val_tasks: dict[str, float] = field(default_factory=dict)
    lr: float = 1e-3
    description: str = ""
    frozen: list[str] = field(default_factory=list)  # kept frozen even where `trainable` matches (see freeze.py)
    mode: str | None = None                          # picks `trainable` from `modes` (then leave trainable empty)
    modes: dict[str, list[str]] = field(default_factory=dict)
    freeze: str | None = None                        # picks extra `frozen` globs from `freezes`
    freezes: dict[str, list[str]] = field(default_factory=dict)
    family: str | None = None                        # whose tasks these are (omni.config.check_families)

    def __post_init__(self) -> None:
        self.trainable = list(self.trainable)
        self.frozen = list(self.frozen)
        if self.modes:  # a named choice; a wrong name fails at start, listing the valid ones
            if self.trainable:
                raise ValueError(f"stage {self.name!r}: set either `trainable` or `mode`, not both")
            if self.mode not in self.modes:
                raise ValueError(f"stage {self.name!r}: mode={self.mode!r} is not one of {sorted(self.modes)}")
            self.trainable = list(self.modes[self.mode])
        if self.freezes:
            if self.freeze not in self.freezes:
                raise ValueError(f"stage {self.name!r}: freeze={self.freeze!r} is not one of {sorted(self.freezes)}")
            self.frozen += list(self.freezes[self.freeze])
        self.optional_trainable = list(self.optional_trainable)
        self.tasks = dict(self.tasks)
        self.val_tasks = dict(self.val_tasks) or dict(self.tasks)
        if not self.trainable:
            raise ValueError(f"stage {self.name!r}: `trainable` is empty, nothing would train")


def _some(ids: list[str], n: int = 64) -> str:
    """Row ids for a message: all of them up to `n`, then how many more."""
    return str(ids[:n]) + (f" (+{len(ids) - n} more)" if len(ids) > n else "")


class NonFiniteTrainingError(RuntimeError):
    """Training produced non-finite losses / gradients for too many consecutive steps, or non-finite weights."""


class OmniModule(LightningModule):
    def __init__(
        self,
        model: nn.Module,
        stage: StageConfig | dict,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        init_from: str | None = None,
        run_config: dict | None = None,
        max_nonfinite_steps: int = 10,
        lora: Any = None,
        compile: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.compile_model = bool(compile)  # `compile=true`: torch.compile the family model's forward (configure_model)
        self.activation_checkpointing = bool(activation_checkpointing)  # recompute the family's blocks in backward
        if type(max_nonfinite_steps) is not int or max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps={max_nonfinite_steps!r} must be an integer >= 1 (consecutive "
                             f"optimizer steps with a non-finite loss / gradient skipped before the run stops)")
        self.max_nonfinite_steps = max_nonfinite_steps
        self.model = model
        self.stage = stage if isinstance(stage, StageConfig) else StageConfig(**stage)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.run_config = run_config or {}
        self._inference = None
        # non-finite guard: rows of the current accumulation window, whether one of its losses was not finite,
        # consecutive / total skipped optimizer steps (saved in the checkpoint: a resumed run counts on)
        self._window_ids: list[str] = []
        self._window_nonfinite_loss = False
        self._update_ids: list[str] = []
        self.nonfinite = {"consecutive": 0, "skipped": 0}
        if init_from:  # before LoRA: a plain checkpoint loads as is, a LoRA one is merged (omni/lora.py)
            load_model_weights(self.model, init_from)
        # `lora=`: PEFT adapters on the family's LLM / Thinker; they train in addition to the stage's patterns, the
        # base weights they wrap stay frozen unless a `!glob` in stage.frozen keeps them (omni/lora.py)
        self.lora = lora_settings(lora)
        frozen = self.stage.frozen
        if self.lora is not None:
            from omni.families import lora_targets

            apply_lora(self.model, self.lora, lora_targets(self.model))
            frozen = [*frozen, BASE_FROZEN]
        self.param_counts = apply_trainable(self.model, self.stage.trainable, self.stage.optional_trainable, frozen)
        if self.lora is not None:
            self.param_counts = trainable_with_lora(self.model)
        # the family's split-level metric (a torchmetrics Metric, e.g. Mini-Omni3's decision scores), one per split:
        # updated with every step's model output, computed over the whole split and every rank at the epoch's end
        from omni.families import split_metric

        metrics = {f"{split}_metric": split_metric(self.model) for split in SPLITS}
        self.split_metrics = nn.ModuleDict(metrics) if all(m is not None for m in metrics.values()) else None

    # -- steps -------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if not batch["ids"]:
            return None  # every row of this batch was skipped (counted by DataHealthCallback)
        out = self.model(batch)
        self._window_ids.extend(str(i) for i in batch["ids"])
        finite, *present = self._flags(out, finite=True)  # one device -> host copy per step
        if finite:
            self._log_step("train", out, batch, present)
        else:  # still backpropagated (DDP ranks stay in step); the optimizer step is skipped below
            self._window_nonfinite_loss = True
        return self._differentiable(out["loss"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not batch["ids"]:
            return
        out = self.model(batch)
        self._log_step("val", out, batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        if not batch["ids"]:
            return
        out = self.model(batch)
        self._log_step("test", out, batch)

    def configure_model(self) -> None:
        """`compile=true`: the family model's forward runs through torch.compile (dynamic shapes: token-budget batches
        vary in length). `activation_checkpointing=true`: the family's blocks (`Family.wrap_layers`) recompute their
        forward in backward (omni.memory). Both keep the class and parameter names, so checkpoints are unchanged."""
        if self.activation_checkpointing:
            from omni.distributed import decoder_layer_classes
            from omni.memory import checkpoint_blocks

            if not checkpoint_blocks(self.model, decoder_layer_classes()):
                log.warning("activation_checkpointing=true: %s has none of the registered block classes; "
                            "nothing is recomputed", type(self.model).__name__)
        if self.compile_model and not getattr(self.model, "_omni_compiled", False):
            self.model.forward = torch.compile(self.model.forward, dynamic=True)
            self.model._omni_compiled = True

    def on_train_epoch_start(self) -> None:
        frozen_modules_eval(self.model)

    def on_train_epoch_end(self) -> None:
        self._log_split_metric("train")

    def on_validation_epoch_end(self) -> None:
        self._log_split_metric("val")

    def on_test_epoch_end(self) -> None:
        self._log_split_metric("test")

    def on_fit_start(self) -> None:
        counts = {f"params/{k}": v for k, v in self.param_counts.items()}
        for logger in self.loggers:
            logger.log_hyperparams({"stage": self.stage.name, **counts})
        if self.trainer.is_global_zero:
            c = self.param_counts
            print(f"[stage {self.stage.name}] trainable {c['trainable']:,} / {c['total']:,} parameters "
                  f"({100 * c['trainable'] / max(c['total'], 1):.1f}%): {self.stage.trainable}"
                  + (f" + LoRA r={self.lora.r} ({c['lora']:,} adapter parameters; wrapped weights frozen)"
                     if self.lora is not None else ""))

    # -- helpers -----------------------------------------------------------------------------------------------
    @staticmethod
    def _flags(out: dict, finite: bool = False) -> list[bool]:
        """[loss finite (with finite=True)], text targets > 0, audio targets > 0: read in ONE device -> host copy
        (each `int(n)` / `bool(t)` is a sync that stalls a GPU's queue; three per step before)."""
        device = out["loss"].device
        flags = [torch.as_tensor(out[k], device=device).reshape(()) > 0 for k in ("n_text_targets", "n_audio_targets")]
        if finite:
            flags.insert(0, torch.isfinite(out["loss"].detach()).reshape(()))
        return [bool(x) for x in torch.stack(flags).tolist()]

    def _log_step(self, split: str, out: dict, batch: dict, present: list[bool] | None = None) -> None:
        bs = len(batch["ids"])
        on_step = split == "train"
        self.log(f"{split}/loss", out["loss"], prog_bar=True, batch_size=bs, on_step=on_step, on_epoch=True,
                 sync_dist=split != "train")
        present = self._flags(out) if present is None else present
        for name, has in zip(("loss_text", "loss_audio"), present):
            if has:
                self.log(f"{split}/{name}", out[name], batch_size=bs, on_step=on_step, on_epoch=True,
                         sync_dist=split != "train")
        for name, value in out.get("metrics", {}).items():  # family-specific scalars (e.g. an auxiliary loss)
            self.log(f"{split}/{name}", value, batch_size=bs, on_step=on_step, on_epoch=True,
                     sync_dist=split != "train")
        if self.split_metrics is not None:
            self.split_metrics[f"{split}_metric"].update(out)
        if split == "train":
            self.log("train/tokens", float(batch["n_tokens"]), reduce_fx="sum", on_step=False, on_epoch=True,
                     batch_size=bs)

    def _log_split_metric(self, split: str) -> None:
        """Log the split metric's values as `{split}/<name>` and reset it. `compute()` sums the states over every
        rank first (a collective: every rank reaches this hook), so each rank logs the split's value."""
        if self.split_metrics is None:
            return
        metric = self.split_metrics[f"{split}_metric"]
        with warnings.catch_warnings():  # a split (or a rank) without updates computes from zero counts
            warnings.filterwarnings("ignore", message=r".*compute.*called before the ..update")
            values = metric.compute()
        metric.reset()
        for name, value in values.items():
            self.log(f"{split}/{name}", value, on_step=False, on_epoch=True, sync_dist=False)

    def _differentiable(self, loss: torch.Tensor) -> torch.Tensor:
        """A batch whose tasks have no path to a trainable parameter (e.g. TTS while only the audio adapter
        trains) still steps with zero gradients instead of crashing autograd / desynchronising DDP."""
        if loss.requires_grad:
            return loss
        return loss + sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)

    # -- non-finite guard (before gradient clipping and the optimizer update) -------------------------------------
    def on_before_optimizer_step(self, optimizer) -> None:
        """A non-finite loss or gradient is never applied: every gradient is dropped (the optimizer skips
        parameters without one: no update, no weight decay, no moment change), the step is counted, and after
        `max_nonfinite_steps` consecutive ones the run stops naming the step and the batch's row ids."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        bad_loss, ids = self._window_nonfinite_loss, self._window_ids
        self._window_ids, self._window_nonfinite_loss, self._update_ids = [], False, ids
        bad_grad = bool(torch.stack([~torch.isfinite(g).all() for g in grads]).any()) if grads else False
        # one decision for all ranks (a rank's non-finite loss skips every rank's step: the weights stay equal)
        bad = self.trainer.strategy.reduce_boolean_decision(bad_loss or bad_grad, all=False)
        if bad:
            for p in params:
                p.grad = None
            self.nonfinite["consecutive"] += 1
            self.nonfinite["skipped"] += 1
            what = "loss" if bad_loss else "gradient" if bad_grad else "loss or gradient on another rank"
            where = f"step {self.trainer.global_step} (epoch {self.current_epoch}), batch row ids {_some(ids)}"
            if self.nonfinite["consecutive"] >= self.max_nonfinite_steps:
                raise NonFiniteTrainingError(
                    f"non-finite {what} at {where}: {self.nonfinite['consecutive']} consecutive optimizer steps "
                    f"skipped (max_nonfinite_steps={self.max_nonfinite_steps}); stopping. The weights "
                    f"are those of the last finite step (learning rate stage.lr={self.stage.lr} too high?)")
            log.warning("non-finite %s at %s: optimizer step skipped (%d consecutive, %d in total)", what, where,
                        self.nonfinite["consecutive"], self.nonfinite["skipped"])
        elif grads:
            self.nonfinite["consecutive"] = 0
        self.log("train/skipped_nonfinite", float(self.nonfinite["skipped"]), on_step=True, on_epoch=False,
                 batch_size=max(len(ids), 1))

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # global_step counts it only after
        # finite gradients can still overflow the weights (e.g. a huge lr times weight decay): stop before any
        # checkpoint holds them
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if params and not bool(torch.stack([torch.isfinite(p).all() for _, p in params]).all()):
            name = next(n for n, p in params if not bool(torch.isfinite(p).all()))
            raise NonFiniteTrainingError(
                f"non-finite weights after the optimizer update at step {self.trainer.global_step} (epoch "
                f"{epoch}), batch row ids {_some(self._update_ids)}: parameter {name!r} is no longer finite; "
                f"stopping before any checkpoint holds it (learning rate stage.lr={self.stage.lr} too high?)")

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        trainer = self._trainer
        if optimizer.defaults.get("fused") and trainer is not None and str(trainer.precision).endswith("-mixed") \
                and trainer.gradient_clip_val:
            # Lightning's mixed-precision plugin refuses gradient clipping with any fused optimizer (it assumes the
            # kernel unscales fp16 gradients), even for bf16, which has no scaler: build the unfused one instead
            log.info("optimizer.fused=true is not used under precision=%s with gradient clipping (Lightning refuses "
                     "it); the optimizer runs unfused", trainer.precision)
            optimizer = self.optimizer_factory(params=params, fused=False)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def inference(self):
        """The family's inference helper (prompting, decoding, detokenising), built once per module."""
        if self._inference is None:
            from omni.families import load_tokenizer, make_inference

            self._inference = make_inference(self.model, load_tokenizer(self.model.cfg.tokenizer_path))
        return self._inference

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["omni_config"] = self.run_config
        checkpoint["omni_stage"] = self.stage.name
        checkpoint["omni_nonfinite"] = dict(self.nonfinite)
        if self.lora is not None:  # what init_from= / load_for_eval need to rebuild and merge the adapters
            from omni.lora import CHECKPOINT_KEY, checkpoint_entry

            checkpoint[CHECKPOINT_KEY] = checkpoint_entry(self.model)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite = {"consecutive": 0, "skipped": 0, **checkpoint.get("omni_nonfinite", {})}
        # Lightning restores the DataModule (next) from the key of its class name: a checkpoint written under an
        # earlier name of that class (`state_keys_before`) resumes its loader position too
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        key = type(datamodule).__qualname__
        for old in getattr(datamodule, "state_keys_before", ()):
            if key not in checkpoint and old in checkpoint:
                checkpoint[key] = checkpoint[old]
