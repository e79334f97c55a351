"""Checkpoints are data, never code: reading with `torch.load(weights_only=True)` or safetensors (local files
only), the stored run config checked against the families' allow-list (omni.families.STORED_TARGETS), atomic
writes next to the checkpoint (`atomic_save`) and the newest complete checkpoint of a run folder (`ckpt_path=last`)."""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as data (truncated, corrupt, pickled objects, not local)."""


def local_checkpoint_path(path: str | Path, what: str = "checkpoint") -> Path:
    """A local file path; URLs (`http://`, `s3://`, ...) are refused: nothing is downloaded or unpickled from them."""
    text = str(path)
    if "://" in text:
        raise CheckpointError(f"{what}={text}: a URL is refused; download the file and pass its local path "
                              "(it is then read weights-only)")
    return Path(text)


def load_torch_file(path: str | Path, map_location="cpu", what: str = "checkpoint") -> dict:
    """`torch.load(weights_only=True)` of a local file; any failure names the file (and says why in words)."""
    path = local_checkpoint_path(path, what)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # weights-only refused a global: pickled code / objects
        raise CheckpointError(f"{what} {path}: holds pickled objects other than tensors and plain containers; "
                              f"refused (weights-only load: {str(e).splitlines()[0][:300]})") from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{what} {path} ({path.stat().st_size} bytes) is truncated or corrupt: "
                              f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}") from e


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning `.ckpt` / torch file (weights only) or a `.safetensors` file into a dict. A stored run
    config (`omni_config`) is checked against the families' allow-list (nothing is built from it here)."""
    path = local_checkpoint_path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {"state_dict": load_file(str(path))}
    ckpt = load_torch_file(path)
    check_checkpoint_config(ckpt, path)
    return ckpt


def check_checkpoint_config(ckpt: object, path: str | Path) -> None:
    """A checkpoint's stored run config (if any) names only the project's classes (omni.families)."""
    if isinstance(ckpt, dict) and ckpt.get("omni_config") is not None:
        from omni.families import check_stored_run_config

        check_stored_run_config(ckpt["omni_config"], path)


def atomic_save(obj: object, path: str | Path) -> Path:
    """torch.save to a temporary file in the checkpoint's own folder (never $TMPDIR), flushed and fsync'd, then
    renamed over `path`: a kill at any moment leaves either the previous file or the new one, complete. A temporary
    file left by an earlier kill (`.NAME.*.tmp`) is removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as a plain open() would create it (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


_UMASK = os.umask(0)
os.umask(_UMASK)


def is_complete_checkpoint(path: str | Path) -> bool:
    """A torch zip file whose central directory and every member's CRC check out (cheap: no unpickling)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None and any(n.endswith("data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def find_last_checkpoint(folder: str | Path) -> Path:
    """`ckpt_path=last`: the newest (by modification time) complete `*.ckpt` in `folder`; incomplete ones are
    skipped with a warning naming them, temporary files of an interrupted write (`.*.tmp`) are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"ckpt_path=last: no checkpoint folder {folder}")
    candidates = sorted((p for p in folder.glob("*.ckpt") if not p.name.startswith(".") and p.is_file()),
                        key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"), reverse=True)
    broken = []
    for path in candidates:
        if is_complete_checkpoint(path):
            if broken:
                log.warning("ckpt_path=last: skipped incomplete checkpoint(s) %s; resuming from %s", broken, path)
            return path
        broken.append(str(path))
    raise FileNotFoundError(f"ckpt_path=last: no complete checkpoint in {folder}"
                            + (f" (incomplete: {broken})" if broken else ""))


def model_state_dict(ckpt: dict, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The family model's weights from a Lightning checkpoint (keys `model.*`) or a bare state dict."""
    state = ckpt.get("state_dict", ckpt)
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_model_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Initialise `model` from a previous run's checkpoint (stage chaining: `init_from=...`), or from a family's
    released format (a folder or a released weights file): the model's family importer (`omni.families.
    release_importer`) is asked first and takes every format its converter CLI reads, checking what the release
    says about itself (its model_config.yaml / config.json) against the model's config. Anything it does not
    recognise is read as a Lightning checkpoint or a bare state dict of our own names (a LoRA run's checkpoint:
    its adapters are merged into the base weights, omni/lora.py)."""
    from omni.families import release_importer

    path = local_checkpoint_path(path, "init_from")
    if not path.exists():
        raise FileNotFoundError(f"init_from: {path} does not exist")
    importer = release_importer(model)
    if importer is not None and importer(model, path):
        log.info("initialised model from released weights %s", path)
        return
    if path.is_dir():
        raise ValueError(f"init_from={path}: not a checkpoint folder this model's family reads "
                         f"({type(model).__name__})")
    from omni.families import aux_prefixes

    ckpt = read_checkpoint(path)
    state = model_state_dict(ckpt)
    from omni import lora

    if lora.state_has_adapters(state) and not lora.has_lora(model):  # a LoRA run's checkpoint: merged in
        missing, unexpected = lora.load_merged(model, ckpt, state, path, strict=False)
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    # a training-only head of the family (e.g. Mini-Omni's CTC head) may be on either side: starts fresh / dropped
    aux = aux_prefixes(model)
    missing, unexpected = ([k for k in keys if not (aux and k.startswith(aux))] for keys in (missing, unexpected))
    if strict and (missing or unexpected):
        raise RuntimeError(f"{path}: checkpoint does not fit the model; missing={missing[:8]} "
                           f"unexpected={unexpected[:8]}")
    log.info("initialised model from %s (%d tensors)", path, len(state))


def load_for_eval(ckpt_path: str | Path):
    """-> (model in eval mode, run config dict) from a checkpoint written by train.py: the model is rebuilt from
    the checkpoint's own stored config (allow-listed classes only, omni.families), then its weights loaded (a LoRA
    run's adapters merged into the base weights: the model returned is a plain one, omni/lora.py)."""
    from omni.families import model_from_stored_config

    ckpt = read_checkpoint(ckpt_path)
    run_cfg = ckpt.get("omni_config")
    if not run_cfg:
        raise ValueError(f"{ckpt_path}: no `omni_config` in this checkpoint; was it written by train.py?")
    model = model_from_stored_config(run_cfg, ckpt_path)
    state = model_state_dict(ckpt)
    from omni import lora

    if lora.state_has_adapters(state):  # a LoRA run: adapters merged into the base weights (omni/lora.py)
        lora.load_merged(model, ckpt, state, ckpt_path)
    else:
        model.load_state_dict(state)
    return model.eval(), run_cfg
