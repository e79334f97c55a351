"""Issue 13 part B: nothing non-finite trains, sweeps see failures as failures, config / output mistakes fail at
start naming the key. Runs go through the user's entry point: `python train.py ...` (subprocess) or the same
Hydra composition in-process (tests.conftest.compose_cfg -> omni.train.train), tiny model, `debug=fast`."""
from __future__ import annotations

import logging
import math
import re

import pytest
import torch
from lightning import Callback

from omni.train import metric_value, train
from tests.conftest import compose_cfg
from tests.test_train import run_cli

torch.set_num_threads(1)
FAST = ["debug=fast", "logger=csv", "data.max_tokens=1200", "test=false", "callbacks.text_metrics=null",
        "scheduler=null"]  # constant LR: every applied step moves the weights
RECORD: dict[str, dict] = {}  # what the Poison callback saw, by run name


def record(run: str) -> dict:
    """RECORD of the module Hydra imported the callback from (pytest may import this file under another name)."""
    import importlib

    return importlib.import_module("tests.test_faults_training").RECORD[run]


class Poison(Callback):
    """Test helper, added with `+callbacks.poison._target_=tests.test_faults_training.Poison`.

    `loss_batches`: global batch numbers (epoch * batches_per_epoch + batch_idx) whose loss gets `+ nan` (loss not
    finite, gradients finite: only the loss check can catch it). `grad_steps`: optimizer steps whose first gradient
    gets a nan after backward (loss finite: only the gradient check can catch it). Records, per optimizer step,
    whether the trainable weights changed, and the row ids of every batch."""

    def __init__(self, run: str, loss_batches: list[int] = (), grad_steps: list[int] = ()) -> None:
        self.loss_batches, self.grad_steps = set(loss_batches), set(grad_steps)
        self.rec = RECORD.setdefault(run, {"changed": {}, "ids": {}})
        self.before: dict[int, torch.Tensor] = {}

    def _weights(self, pl_module) -> torch.Tensor:
        return torch.cat([p.detach().float().flatten().clone() for p in pl_module.model.parameters()
                          if p.requires_grad])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        n = trainer.current_epoch * trainer.num_training_batches + batch_idx
        self.rec["ids"][n] = [str(i) for i in batch["ids"]]
        self.before.setdefault(trainer.global_step, self._weights(pl_module))
        if n in self.loss_batches:
            model, forward = pl_module.model, pl_module.model.forward

            def poisoned(*args, **kwargs):
                out = forward(*args, **kwargs)
                return {**out, "loss": out["loss"] + float("nan")}

            model.forward = poisoned

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.model.__dict__.pop("forward", None)
        done = trainer.global_step - 1  # the optimizer step this batch closed (if it closed one)
        if done in self.before and done not in self.rec["changed"]:
            self.rec["changed"][done] = not torch.equal(self.before.pop(done), self._weights(pl_module))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step in self.grad_steps:
            next(p for p in pl_module.model.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


def poison(run: str, loss_batches=(), grad_steps=()) -> list[str]:
    return ["+callbacks.poison._target_=tests.test_faults_training.Poison", f"+callbacks.poison.run={run}",
            f"+callbacks.poison.loss_batches={list(loss_batches)}", f"+callbacks.poison.grad_steps={list(grad_steps)}"]


def adam_steps(ckpt_path) -> float:
    """Most updates AdamW made to any parameter (a parameter without a gradient in a batch is not updated)."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return max(float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values())


def all_finite(ckpt_path) -> bool:
    sd = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in sd.values() if v.is_floating_point())


# -- non-finite loss / gradient: the step is skipped and counted ---------------------------------------------------
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_nonfinite_loss_step_is_skipped_not_applied(tmp_path, precision, caplog):
    run = f"loss-{precision}"
    cfg = compose_cfg(FAST + [f"trainer.precision={precision}"] + poison(run, loss_batches=[1]), tmp_path)
    with caplog.at_level(logging.WARNING, logger="omni.stages.module"):
        metrics = train(cfg)
    # 3 optimizer steps (limit_train_batches=3, no accumulation); step 1's loss is nan (its gradients are finite,
    # so applying them would move the weights): only steps 0 and 2 change the weights
    assert record(run)["changed"] == {0: True, 1: False, 2: True}
    assert adam_steps(metrics["last_checkpoint"]) == 2.0  # AdamW counted 3 - 1 skipped updates
    assert metrics["train/skipped_nonfinite"] == 1.0
    assert math.isfinite(metrics["train/loss"])  # the skipped batch's nan is not averaged into the epoch loss
    ckpt = torch.load(metrics["last_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["omni_nonfinite"] == {"consecutive": 0, "skipped": 1}
    [warning] = [r.getMessage() for r in caplog.records if "optimizer step skipped" in r.getMessage()]
    assert warning.startswith("non-finite loss at step 1 (epoch 0), batch row ids ")
    assert str(record(run)["ids"][1]) in warning


def test_nonfinite_gradient_skips_the_whole_accumulation_window(tmp_path, caplog):
    run = "grad-accumulate"
    cfg = compose_cfg(FAST + ["trainer.limit_train_batches=4", "trainer.accumulate_grad_batches=2",
                              "trainer.gradient_clip_val=1.0"] + poison(run, grad_steps=[0]), tmp_path)
    with caplog.at_level(logging.WARNING, logger="omni.stages.module"):
        metrics = train(cfg)
    # 4 batches / 2 per step = 2 optimizer steps; step 0 (batches 0 and 1) has a nan gradient element
    assert record(run)["changed"] == {0: False, 1: True}
    assert adam_steps(metrics["last_checkpoint"]) == 1.0
    assert all_finite(metrics["last_checkpoint"])
    [warning] = [r.getMessage() for r in caplog.records if "optimizer step skipped" in r.getMessage()]
    assert warning.startswith("non-finite gradient at step 0 (epoch 0), batch row ids ")
    assert str(record(run)["ids"][0] + record(run)["ids"][1]) in warning  # both micro-batches of the window


def test_update_that_overflows_the_weights_stops_before_any_checkpoint(tmp_path):
    """Finite gradients, but AdamW's decoupled decay multiplies the weights by 1 - lr * wd = 1 - 1e-3 * 1e45 (-inf in
    float32) at step 0: the run stops naming step 0 and its rows; no checkpoint is written."""
    from omni.stages.module import NonFiniteTrainingError

    with pytest.raises(NonFiniteTrainingError, match=r"non-finite weights after the optimizer update at step 0 "
                                                     r"\(epoch 0\), batch row ids \['train-"):
        train(compose_cfg(FAST + ["stage.lr=1e-3", "optimizer.weight_decay=1e45"], tmp_path))
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_skip_counters_survive_resume_exactly(tmp_path):
    """Steps 2 and 3 are non-finite, 3 batches per epoch: an epoch boundary (checkpoint, resume) falls between
    them. Resumed == uninterrupted (weights bit-identical, counters equal); with max_nonfinite_steps=2 the
    resumed run stops at step 3 only if the consecutive count of step 2 came back from the checkpoint."""
    two = FAST + ["trainer.max_epochs=2", "callbacks.model_checkpoint.monitor=null"]
    straight = train(compose_cfg(two + poison("straight", grad_steps=[2, 3]), tmp_path / "straight"))
    first = train(compose_cfg(FAST + poison("first", grad_steps=[2, 3]), tmp_path / "first"))
    ckpt = torch.load(first["last_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["omni_nonfinite"] == {"consecutive": 1, "skipped": 1} and ckpt["global_step"] == 3
    resumed = train(compose_cfg(two + poison("resumed", grad_steps=[2, 3]) + [f"ckpt_path={first['last_checkpoint']}"],
                                tmp_path / "resumed"))
    a = torch.load(straight["last_checkpoint"], map_location="cpu", weights_only=True)
    b = torch.load(resumed["last_checkpoint"], map_location="cpu", weights_only=True)
    assert a["omni_nonfinite"] == b["omni_nonfinite"] == {"consecutive": 0, "skipped": 2}
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    from omni.stages.module import NonFiniteTrainingError

    with pytest.raises(NonFiniteTrainingError, match=r"non-finite gradient at step 3 \(epoch 1\), batch row ids"):
        train(compose_cfg(two + poison("stop", grad_steps=[2, 3]) + ["max_nonfinite_steps=2",
                                                                      f"ckpt_path={first['last_checkpoint']}"],
                          tmp_path / "stop"))


@pytest.mark.slow
def test_exploding_run_stops_naming_step_and_rows_with_finite_checkpoints(tmp_path):
    res = run_cli("train.py", *FAST[:-1], "stage.lr=1e9", "max_nonfinite_steps=3", "trainer.max_epochs=3",
                  "callbacks.model_checkpoint.monitor=null", "callbacks.model_checkpoint.save_top_k=-1",
                  f"hydra.run.dir={tmp_path}")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert re.search(r"NonFiniteTrainingError: non-finite (loss|gradient) at step \d+ \(epoch \d\), batch row ids "
                     r"\['train-[^']+'", out), out[-3000:]
    assert "3 consecutive optimizer steps skipped (max_nonfinite_steps=3)" in out
    assert "optimizer step skipped (1 consecutive" in out
    ckpts = sorted((tmp_path / "checkpoints" / "multimodal").glob("*.ckpt"))
    assert ckpts, "an epoch ended before the stop: its checkpoint should be there"
    assert all(all_finite(p) for p in ckpts)


# -- sweeps: a non-finite metric is a failure; no validation is no metric ------------------------------------------
def test_metric_value_nonfinite_missing_and_absent_split():
    from omni.train import NonFiniteMetricError

    assert metric_value({"val/loss": 2.5, "train/loss": 3.0}, "val/loss") == 2.5
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(NonFiniteMetricError, match="optimized_metric 'val/loss' is"):
            metric_value({"val/loss": bad}, "val/loss")
    assert metric_value({"train/loss": 3.0}, "val/loss") is None  # validation never ran
    with pytest.raises(KeyError, match="'val/los' was not logged"):  # validation ran: a typo stays an error
        metric_value({"val/loss": 2.5}, "val/los")


@pytest.mark.slow
def test_run_without_validation_finishes_without_metric(tmp_path):
    res = run_cli("train.py", *FAST, "trainer.limit_val_batches=0", f"hydra.run.dir={tmp_path}")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "optimized_metric 'val/loss': no metric was produced" in out


@pytest.mark.slow
def test_optuna_trial_that_diverges_is_failed_not_a_value(tmp_path):
    """Trials draw stage.lr from {1e9, 1e-3}: every 1e9 trial fails (stopped, FAIL in the study), the sweep goes on
    and its best value is a finite one from a 1e-3 trial."""
    import yaml

    res = run_cli("train.py", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
                  "hydra.sweeper.sampler.n_startup_trials=3", "hydra.sweeper.sampler.seed=0",
                  'hydra.sweeper.params={stage.lr:"choice(1e9,1e-3)",data.max_tokens:"choice(1200)"}',
                  "max_nonfinite_steps=1", *FAST[:-1],
                  f"hydra.sweep.dir={tmp_path}", timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    lrs = [float(next(o for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
                      if o.startswith("stage.lr=")).split("=")[1])
           for job in sorted(p for p in tmp_path.iterdir() if p.name.isdigit())]
    assert sorted(set(lrs)) == [1e-3, 1e9], lrs  # both kinds of trial ran (else pick another sampler seed)
    assert out.count("Failed experiment") == out.count("Failed experiment: non-finite ") == lrs.count(1e9)
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert math.isfinite(float(results["best_value"])) and float(results["best_params"]["stage.lr"]) == 1e-3


# -- config / output mistakes fail at start ------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("data.max_tokens=abc", "data.max_tokens: expected int, got 'abc' (str)"),
    ("trainer.max_epochs=many", "trainer.max_epochs: expected Optional[int], got 'many' (str)"),
    ("stage.lr=fast", "stage.lr: expected float, got 'fast' (str)"),
    ("model.cfg.tokens.text_vocab=big", "model.cfg.tokens.text_vocab: expected int, got 'big' (str)"),
    ("max_nonfinite_steps=1.5", "max_nonfinite_steps: expected int, got 1.5 (float)"),
    ("test=maybe", "test: expected bool, got 'maybe' (str)"),
])
def test_wrong_config_type_fails_at_start_naming_the_key(tmp_path, override, message):
    from omni.config import ConfigTypeError

    with pytest.raises(ConfigTypeError) as err:
        train(compose_cfg(FAST + [override], tmp_path))
    assert message in str(err.value)
    assert not (tmp_path / "checkpoints").exists()  # nothing ran


def test_shipped_configs_pass_the_type_check():
    """Negative control of the schema: every shipped group option composes to a config the check accepts."""
    from omni.config import validate_config

    for overrides in ([], ["experiment=curriculum"], ["model=minimind_o_tiny", "data=minimind_sample"],
                      ["model=mini_omni3_tiny", "data=streaming_sample", "stage=streaming"],
                      ["callbacks=speech_eval", "logger=many", "trainer=ddp"], ["hparams_search=optuna"]):
        validate_config(compose_cfg(["debug=fast", *overrides], "/nonexistent-not-written"))


@pytest.mark.slow
def test_logger_none_trains(tmp_path):
    res = run_cli("train.py", *[o for o in FAST if not o.startswith("logger=")], "logger=none",
                  f"hydra.run.dir={tmp_path}")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert (tmp_path / "checkpoints" / "multimodal" / "last.ckpt").exists()


def test_unwritable_output_dir_fails_at_start_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # works as root too, unlike chmod
    cfg = compose_cfg(FAST + ["logger=none"], tmp_path)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.paths.output_dir = str(blocker / "out")
    with pytest.raises(PermissionError, match=re.escape(f"paths.output_dir={blocker / 'out'}: the run could not "
                                                        "write there")):
        train(cfg)
