"""`trainer.precision=auto`: bf16 mixed precision where the hardware has fast bf16 units, fp32 elsewhere.

Decided once at start from the accelerator the run will use (never assumed from the machine kind):
- CUDA: `torch.cuda.is_bf16_supported()` and compute capability >= 8.0 (Ampere and later have bf16 tensor cores;
  older GPUs emulate bf16 and are slower than fp32).
- CPU: an x86 flag for native bf16 arithmetic in /proc/cpuinfo (`avx512_bf16`: AVX-512 BF16 dot products,
  `amx_bf16`: AMX tiles) and a oneDNN build of torch that uses them. Without them torch's bf16 matmul is emulated:
  measured 0.26 GFLOP/s against 77 GFLOP/s in fp32 on a CPU without AVX-512, and bf16 autocast ran ~20x slower
  than fp32 there (issue 17). With avx512_bf16 (AMD EPYC, 1 thread) a 2048^3 bf16 matmul ran 4.4x the fp32 one.
Any explicit Lightning value (`32-true`, `bf16-mixed`, `16-mixed`, ...) is passed through unchanged.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
FAST_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names (Linux x86)
MIN_CUDA_CAPABILITY = (8, 0)
ENV_AUTO = "OMNI_AUTO_PRECISION"  # if set, what `auto` resolves to (tests pin 32-true: same results on every machine)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags listed in /proc/cpuinfo (or in `cpuinfo`, its text); empty where it does not exist."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        try:
            cpuinfo = path.read_text(errors="ignore")
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's processor string)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="ignore")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    import platform

    return platform.processor() or platform.machine()


def _onednn_bf16() -> bool:
    """torch's own check that its oneDNN build can run bf16 on this CPU (False when unknown)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_decision(flags: set[str], onednn_bf16: bool = True) -> tuple[bool, str]:
    """(fast bf16?, reason) from the CPU flags and whether torch's oneDNN build supports bf16 here."""
    have = [f for f in FAST_CPU_BF16_FLAGS if f in flags]
    if not have:
        return False, f"CPU has no native bf16 units (none of {', '.join(FAST_CPU_BF16_FLAGS)} in /proc/cpuinfo)"
    if not onednn_bf16:
        return False, f"CPU lists {', '.join(have)} but torch's oneDNN build cannot use bf16 here"
    return True, f"CPU has native bf16 units ({', '.join(have)})"


def cuda_bf16_decision(supported: bool, capability: tuple[int, int]) -> tuple[bool, str]:
    """(fast bf16?, reason) from torch.cuda.is_bf16_supported() and the device's compute capability."""
    cc = f"compute capability {capability[0]}.{capability[1]}"
    if not supported:
        return False, f"GPU ({cc}) does not support bf16"
    if tuple(capability) < MIN_CUDA_CAPABILITY:
        need = ".".join(map(str, MIN_CUDA_CAPABILITY))
        return False, f"GPU {cc} < {need}: bf16 is emulated there (no bf16 tensor cores)"
    return True, f"GPU {cc} has bf16 tensor cores"


def uses_cuda(accelerator: str | None) -> bool:
    """Whether Lightning's `accelerator` value will place the run on a CUDA GPU."""
    accelerator = str(accelerator or AUTO).lower()
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == AUTO and torch.cuda.is_available()


def choose_precision(accelerator: str | None = AUTO, *, flags: set[str] | None = None,
                     onednn_bf16: bool | None = None) -> tuple[str, str]:
    """(Lightning precision, reason) for `trainer.precision=auto` on this machine and accelerator."""
    if uses_cuda(accelerator):
        if not torch.cuda.is_available():
            return "32-true", "no CUDA device visible"
        fast, why = cuda_bf16_decision(torch.cuda.is_bf16_supported(), torch.cuda.get_device_capability())
    elif str(accelerator or AUTO).lower() in (AUTO, "cpu"):
        fast, why = cpu_bf16_decision(cpu_flags() if flags is None else flags,
                                      _onednn_bf16() if onednn_bf16 is None else onednn_bf16)
    else:
        return "32-true", f"accelerator={accelerator}: no bf16 capability check for it"
    return ("bf16-mixed" if fast else "32-true"), why


def resolve_precision(value, accelerator: str | None = AUTO) -> tuple[str | int, str]:
    """`auto` -> the chosen precision and why; any other value is returned as given ("set explicitly")."""
    if value is None or str(value).lower() == AUTO:
        pinned = os.environ.get(ENV_AUTO)
        if pinned:  # the test suite pins it: results must not depend on the machine's CPU flags
            return pinned, f"{ENV_AUTO}={pinned}"
        return choose_precision(accelerator)
    return value, "set explicitly"


def resolve_trainer_precision(cfg) -> str | int:
    """Replace `trainer.precision=auto` in the composed config by the chosen value (so the checkpoint's run config
    records what ran), print and log the decision. Returns the precision in use."""
    from omegaconf import open_dict

    trainer = cfg.get("trainer")
    if trainer is None:
        return "32-true"
    requested = trainer.get("precision", AUTO)
    value, why = resolve_precision(requested, trainer.get("accelerator", AUTO))
    with open_dict(cfg):
        cfg.trainer.precision = value
    message = f"precision: {value} (trainer.precision={requested}: {why})"
    log.info(message)
    print(message)
    return value


def matmul_dtype(precision) -> torch.dtype:
    """The dtype a Lightning precision setting runs the matmuls in (what a peak must be measured in)."""
    text = str(precision)
    if text.startswith("bf16"):
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    if text.startswith("64"):
        return torch.float64
    return torch.float32
