"""`trainer.precision=auto`: bf16-mixed where the hardware has fast bf16 units, 32-true elsewhere (omni/precision.py),
decided at start from CPU flags / the CUDA capability; explicit values pass through; bf16 training tracks fp32."""
from __future__ import annotations

import pytest
import torch

from omni import precision as P

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_bf16 avx512_vnni
processor\t: 1
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_bf16 avx512_vnni
"""


def test_cpu_flags_and_model_parsed_from_cpuinfo_text():
    assert P.cpu_flags(CPUINFO) == {"fpu", "sse", "sse2", "avx", "avx2", "fma", "avx512f", "avx512_bf16",
                                    "avx512_vnni"}
    assert P.cpu_model(CPUINFO) == "AMD EPYC 9B45"
    assert P.cpu_flags("") == set()


# hand-drawn table: (flags, torch's oneDNN can run bf16, expected precision)
CPU_TABLE = [
    ({"avx", "avx2", "fma"}, True, "32-true"),                     # no AVX-512 at all (issue 17's machine)
    ({"avx2", "avx512f", "avx512_vnni"}, True, "32-true"),         # AVX-512 without BF16: bf16 is emulated
    ({"avx2", "avx512f", "avx512_bf16"}, True, "bf16-mixed"),      # AVX-512 BF16 dot products
    ({"avx2", "amx_tile", "amx_bf16"}, True, "bf16-mixed"),        # AMX tiles
    ({"avx2", "avx512f", "avx512_bf16"}, False, "32-true"),        # flags, but a torch build that cannot use them
]


@pytest.mark.parametrize("flags,onednn,expected", CPU_TABLE)
def test_cpu_decision_from_faked_flags(flags, onednn, expected):
    precision, why = P.choose_precision("cpu", flags=flags, onednn_bf16=onednn)
    assert precision == expected, why
    assert why  # the reason is printed / logged at start


# (is_bf16_supported, compute capability, fast?)
CUDA_TABLE = [(True, (8, 0), True), (True, (9, 0), True), (True, (7, 5), False), (False, (9, 0), False),
              (True, (6, 1), False)]


@pytest.mark.parametrize("supported,capability,fast", CUDA_TABLE)
def test_cuda_decision(supported, capability, fast):
    assert P.cuda_bf16_decision(supported, capability)[0] is fast


def test_explicit_values_pass_through_and_env_pin(monkeypatch):
    monkeypatch.delenv(P.ENV_AUTO, raising=False)
    for value in ("32-true", "bf16-mixed", "16-mixed", 32):
        assert P.resolve_precision(value, "cpu") == (value, "set explicitly")
    monkeypatch.setattr(P, "cpu_flags", lambda cpuinfo=None: {"avx512_bf16"})
    monkeypatch.setattr(P, "_onednn_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu")[0] == "bf16-mixed"
    monkeypatch.setattr(P, "cpu_flags", lambda cpuinfo=None: {"avx2"})
    assert P.resolve_precision("auto", "cpu")[0] == "32-true"
    monkeypatch.setenv(P.ENV_AUTO, "32-true")
    monkeypatch.setattr(P, "cpu_flags", lambda cpuinfo=None: {"avx512_bf16"})
    assert P.resolve_precision("auto", "cpu") == ("32-true", f"{P.ENV_AUTO}=32-true")


def test_matmul_dtype_of_each_precision():
    table = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
             "32-true": torch.float32, 32: torch.float32, "64-true": torch.float64}
    assert {k: P.matmul_dtype(k) for k in table} == table


def test_trainer_precision_auto_is_the_default_and_resolved_at_start(compose, monkeypatch, capsys):
    from omni.config import ConfigTypeError, validate_config

    cfg = compose("trainer=cpu")
    assert cfg.trainer.precision == "auto"
    validate_config(cfg)  # `auto` is ours: accepted by the typed check
    monkeypatch.delenv(P.ENV_AUTO, raising=False)
    monkeypatch.setattr(P, "cpu_flags", lambda cpuinfo=None: {"avx2", "avx512_bf16"})
    monkeypatch.setattr(P, "_onednn_bf16", lambda: True)
    assert P.resolve_trainer_precision(cfg) == "bf16-mixed"
    assert cfg.trainer.precision == "bf16-mixed"  # the run config (and checkpoint) records what ran
    assert "precision: bf16-mixed (trainer.precision=auto: CPU has native bf16 units (avx512_bf16))" \
        in capsys.readouterr().out
    monkeypatch.setattr(P, "cpu_flags", lambda cpuinfo=None: {"avx2"})
    cfg = compose("trainer=cpu")
    assert P.resolve_trainer_precision(cfg) == "32-true"
    explicit = compose("trainer=cpu", "trainer.precision=bf16-mixed")
    assert P.resolve_trainer_precision(explicit) == "bf16-mixed"  # honoured on a CPU without bf16 units
    with pytest.raises(ConfigTypeError, match="trainer.precision.*'bf17-mixed'"):
        validate_config(compose("trainer.precision=bf17-mixed"))


def _losses(cfg, precision: str, steps: int) -> list[float]:
    import hydra
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from omni.train import build_module

    class Record(Callback):
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    L.seed_everything(0, workers=True)
    module = build_module(cfg, None)
    record = Record()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=steps, max_epochs=-1,
                        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[record])
    trainer.fit(module, datamodule=hydra.utils.instantiate(cfg.data))
    return record.losses


STEPS = 8
TOLERANCE = 0.01  # relative, per step. bf16 keeps 8 significant bits (0.4 % per rounding of a matmul input); the
# loss is summed over ~1000 targets in fp32, so rounding errors average out (measured here: <= 0.04 % per step)


def test_bf16_mixed_training_tracks_fp32(compose):
    """The tiny Mini-Omni (conf/model/mini_omni_tiny.yaml) trains 8 steps (same seed, data, lr, clipping) in 32-true
    and in bf16-mixed: every step's loss agrees within 1 % (relative). Controls: the two runs differ (bf16 really
    ran), and over the same steps the fp32 loss falls by more than 3x the tolerance, so a bf16 run that did not learn
    would be outside it."""
    cfg = compose("stage=multimodal", "data.max_tokens=1200", "stage.lr=3e-3", "logger=none")
    fp32 = _losses(cfg, "32-true", STEPS)
    bf16 = _losses(cfg, "bf16-mixed", STEPS)
    assert len(fp32) == len(bf16) == STEPS
    for step, (a, b) in enumerate(zip(fp32, bf16)):
        assert abs(a - b) <= TOLERANCE * a, f"step {step}: fp32 {a:.4f} vs bf16 {b:.4f}"
    assert fp32 != bf16  # control: autocast changed the arithmetic (a silently fp32 "bf16" run would be equal)
    assert fp32[0] - fp32[-1] > 3 * TOLERANCE * fp32[0], fp32  # control: training moved the loss
