"""Hydra/OmegaConf resolvers and run-environment defaults shared by train.py, eval.py and tests."""
from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf


def package_dir(name: str) -> str:
    """Folder of an importable package (finds the bundled sample / assets wherever the project is installed)."""
    module = importlib.import_module(name)
    return str(Path(module.__file__).resolve().parent)


def best_precision() -> str:
    """`${omni.precision:}` (configs stored before `trainer.precision=auto`): what `auto` chooses on this machine
    (omni/precision.py: bf16-mixed where the GPU or CPU has fast bf16 units, else 32-true)."""
    from omni.precision import choose_precision

    return choose_precision()[0]


def wandb_offline() -> bool:
    """wandb logs offline unless the user asked for online mode or has credentials configured."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("online", "run"):
        return False
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path.home() / ".netrc"
    return not (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def required(*, _node_: Any = None) -> Any:
    """`${omni.required:}`: a value the user must give. Unlike `???` it also holds where the config inherits a
    value (`data=parquet` from `sample`: OmegaConf keeps the inherited value when merging `???` over it)."""
    key = _node_._get_full_key(None) if _node_ is not None else "this key"
    raise ValueError(f"{key} is required: set it on the command line ({key}=<your files or folder>)")


SLURM_LAUNCHER = "SlurmLauncher"  # hydra-submitit-launcher's class (hydra/launcher=slurm, conf/hydra/launcher/)
_NO_DEFAULT = object()


def launcher_value(key: str, default: Any = _NO_DEFAULT) -> Any:
    """`${omni.launcher:nodes,1}`: under Hydra's submitit SLURM launcher, that launcher's value (trainer=ddp takes
    devices = tasks_per_node and num_nodes = nodes from hydra/launcher=slurm, as Lightning's SLURMEnvironment
    requires); under any other launcher, `default`. Fails naming the key when a SLURM launcher lacks it or when the
    run is not a multirun (a launcher submits only with -m; without it the cluster's sizes would start here)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():  # a stored config read outside a Hydra run (eval, tests): no launcher
        launcher, target = None, ""
    else:
        hydra_cfg = HydraConfig.get()
        launcher = hydra_cfg.launcher
        target = str(launcher.get("_target_", ""))
    if target.rpartition(".")[2] != SLURM_LAUNCHER:
        if default is _NO_DEFAULT:
            raise ValueError(f"hydra.launcher.{key} is read from a SLURM launcher, but the launcher is {target!r}: "
                             f"use python train.py -m hydra/launcher=slurm ...")
        return default
    value = OmegaConf.select(launcher, key, default=None)
    if value is None:
        raise ValueError(f"hydra.launcher.{key} is not set by the SLURM launcher {target!r}")
    if hydra_cfg.mode != RunMode.MULTIRUN:
        raise ValueError(f"hydra.launcher.{key}={value} is read in a single run (hydra.mode={hydra_cfg.mode}): "
                         f"the launcher submits only a multirun, add -m (python train.py -m hydra/launcher=slurm ...)")
    return value


def load_group_config(path: str | Path) -> Any:
    """A config-group file (e.g. conf/model/mini_omni_tiny.yaml) as Hydra composes it on its own: the configs of
    its defaults list from the same group merged in order (`_self_` where listed, else last), `defaults` dropped;
    `override` entries (other groups) are not part of it. Resolvers are not applied here."""
    path = Path(path)
    node = OmegaConf.load(path)
    defaults = list(node.pop("defaults", None) or [])
    parts = []
    for entry in defaults:
        if entry == "_self_":
            parts.append(node)
        elif isinstance(entry, str):
            parts.append(load_group_config(path.parent / f"{entry.split('@')[0]}.yaml"))
    if "_self_" not in defaults:
        parts.append(node)
    return OmegaConf.merge(*parts)


def register_resolvers() -> None:
    """Idempotent: safe to call from every entry point and test."""
    resolvers = {
        "omni.root": lambda: str(Path(package_dir("omni")).parent),
        "omni.package_dir": package_dir,
        "omni.cwd": lambda: os.getcwd(),
        "omni.precision": best_precision,
        "omni.wandb_offline": wandb_offline,
        "omni.required": required,
        "omni.max": lambda *values: max(values),
        "omni.launcher": launcher_value,
    }
    from omni.families import resolvers as family_resolvers

    resolvers.update(family_resolvers())  # those the families' configs use (Family.resolvers), e.g. omni.image_tokens
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def configure_environment() -> None:
    """Defaults that keep runs quiet and hermetic; an explicit user setting always wins."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")


# -- typed schemas: every value of the composed config is checked at start against the type its consumer declares --
# The consumer of a node with `_target_` is that class / function: its constructor's annotations are the schema
# (a dataclass annotation recurses into its fields). `stage` / `curriculum.*` follow omni.stages.module.StageConfig;
# the top-level keys below are train.yaml's own. Family-agnostic: new families are covered by their annotations.
TOP_LEVEL_TYPES: dict[str, Any] = {
    "task_name": str, "seed": int | None, "init_from": str | None, "ckpt_path": str | None, "test": bool,
    "optimized_metric": str | None, "max_nonfinite_steps": int, "resume_dir": str | None, "compile": bool,
    "activation_checkpointing": bool, "malloc_mmap_threshold_mib": float | None,
}


class ConfigTypeError(TypeError):
    """A config value does not have the type its consumer declares; names the key, the expected type and value."""


def _type_name(tp: Any) -> str:
    import typing

    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "")


def _scalar_check(tp: Any):
    """(accepts(value), expected-name) for a scalar annotation (None, bool, int, float, str, a path), else None."""
    if tp is type(None):
        return (lambda v: v is None), "None"
    if tp is bool:
        return (lambda v: isinstance(v, bool)), "bool"
    if tp is int:
        return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "int"
    if tp is float:
        return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)), "float"
    if tp is str:
        return (lambda v: isinstance(v, str)), "str"
    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        return (lambda v: isinstance(v, (str, os.PathLike))), "a path"
    return None


def _check(value: Any, tp: Any, key: str, errors: list[str]) -> None:
    """Append to `errors` when `value` cannot be a `tp`. Unknown annotations (classes, Any, TypeVars) accept."""
    import dataclasses
    import types
    import typing

    if tp is Any or isinstance(tp, (typing.TypeVar, str)):
        return
    if isinstance(value, dict) and "_target_" in value:
        validate_target_node(value, key, errors)
        return
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        trials: list[list[str]] = []
        for arg in args:
            sub: list[str] = []
            _check(value, arg, key, sub)
            if not sub:
                return
            trials.append(sub)
        # fits no member: the nested errors of the one member that matched the value's shape, else the union
        nested = [t for t in trials if all(not e.startswith(f"{key}: ") for e in t)]
        errors.extend(nested[0] if len(nested) == 1 else
                      [f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"])
        return
    if origin is typing.Literal:
        if value not in args:
            errors.append(f"{key}: expected one of {list(args)}, got {value!r}")
        return
    scalar = _scalar_check(tp)
    if scalar is not None:
        accepts, expected = scalar
        if not accepts(value):
            errors.append(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")
        return
    container = origin or tp
    if container in (list, tuple, typing.Sequence, set, frozenset) or (
            isinstance(container, type) and container.__module__ == "collections.abc"
            and container.__name__ in ("Sequence", "MutableSequence", "Iterable", "Collection")):
        if not isinstance(value, (list, tuple)):
            if not (isinstance(container, type) and container.__name__ == "Iterable" and isinstance(value, str)):
                errors.append(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
            return
        if args and not (len(args) == 2 and args[1] is Ellipsis) and container is tuple:
            if len(args) != len(value):
                errors.append(f"{key}: expected {len(args)} items, got {value!r}")
                return
            for i, (item, arg) in enumerate(zip(value, args)):
                _check(item, arg, f"{key}[{i}]", errors)
        elif args:
            for i, item in enumerate(value):
                _check(item, args[0], f"{key}[{i}]", errors)
        return
    if container in (dict, typing.Mapping) or (
            isinstance(container, type) and container.__module__ == "collections.abc"
            and container.__name__ in ("Mapping", "MutableMapping")):
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
            return
        if len(args) == 2:
            for k, item in value.items():
                _check(item, args[1], f"{key}.{k}", errors)
        return
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        _check_fields(value, _annotations(tp), key, errors)
    # any other class: hydra builds it or the consumer accepts the plain value; nothing to check here


def _annotations(fn: Any) -> dict[str, Any]:
    """Parameter annotations of a class constructor / function ({} when they cannot be resolved)."""
    import inspect
    import typing

    if fn is None:
        return {}
    target = fn.__init__ if isinstance(fn, type) else fn
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # one unresolvable name (e.g. imported only for type checking): resolve the others one by one
        hints = {}
        namespace = getattr(inspect.unwrap(target), "__globals__", {})
        for name, param in params.items():
            ann = param.annotation
            try:
                hints[name] = eval(ann, dict(namespace)) if isinstance(ann, str) else ann  # noqa: S307 - our own source
            except Exception:  # noqa: BLE001 - no schema for this one parameter rather than a false alarm
                continue
    return {name: hints[name] for name in params if name in hints and hints[name] is not inspect.Parameter.empty}


def _check_fields(node: dict, hints: dict[str, Any], key: str, errors: list[str]) -> None:
    for name, value in node.items():
        if isinstance(name, str) and name.startswith("_") and name.endswith("_"):
            continue  # _target_, _partial_, _convert_, _recursive_, _args_
        sub = f"{key}.{name}" if key else str(name)
        if name in hints:
            _check(value, hints[name], sub, errors)
        elif isinstance(value, dict) and "_target_" in value:
            validate_target_node(value, sub, errors)


def validate_target_node(node: dict, key: str, errors: list[str]) -> None:
    """Check a `_target_` node's values against its target's annotations."""
    from hydra.utils import get_object

    try:
        target = get_object(node["_target_"])
    except Exception as e:  # noqa: BLE001 - reported with the key
        errors.append(f"{key}._target_: cannot import {node['_target_']!r} ({e})")
        return
    hints = _annotations(target)
    if isinstance(target, type) and "loading" in hints:  # **loading of the data modules: the shared loader keys
        base = next((c for c in target.__mro__[1:] if "__init__" in vars(c)), None)  # of the base they pass it to
        hints = {**_annotations(getattr(base, "__init__", None)), **hints}
    _check_fields(node, hints, key, errors)


def validate_config(cfg: Any) -> None:
    """Fail at start, naming every key whose value has the wrong type (expected type and value given)."""
    from omegaconf import DictConfig

    from omni.stages.module import StageConfig

    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    errors: list[str] = []
    trainer = raw.get("trainer")
    if isinstance(trainer, dict) and str(trainer.get("precision")).lower() == "auto":  # ours (omni/precision.py):
        raw["trainer"] = {**trainer, "precision": None}  # omni.train resolves it before Lightning sees it
    for name, tp in TOP_LEVEL_TYPES.items():
        if name in raw:
            _check(raw[name], tp, name, errors)
    stage_hints = _annotations(StageConfig)
    if isinstance(raw.get("stage"), dict):
        _check_fields(raw["stage"], stage_hints, "stage", errors)
    for name, stage in (raw.get("curriculum") or {}).items():
        if isinstance(stage, dict):
            _check_fields(stage, stage_hints, f"curriculum.{name}", errors)
    for name, value in raw.items():
        if name in ("stage", "curriculum") or name in TOP_LEVEL_TYPES:
            continue
        if isinstance(value, dict):
            if "_target_" in value:
                validate_target_node(value, name, errors)
            else:  # a group of components (callbacks, logger)
                for sub, node in value.items():
                    if isinstance(node, dict) and "_target_" in node:
                        validate_target_node(node, f"{name}.{sub}", errors)
    if errors:
        raise ConfigTypeError("config values of the wrong type:\n  " + "\n  ".join(errors))


# -- family consistency: a model, data and stage of different families fail at start, in one line ----------------
# Each config's family comes from the configs, never from names written here: a stage names its `family:`
# (inherited through its defaults list); a model's or data module's `_target_` is the class some registered family
# names (its `model` / `datamodule`, `omni.families.registry()`, passed in by omni.train), else the family folder
# it lives in (`omni.<family>.…`, `data.<family>.…`, a family being a model config's folder). An explicit
# `family:` key on a model / data node would win. Unknown targets are not checked.
GROUP_LABELS = {"model": "models", "data": "data", "stage": "stages"}


class FamilyMismatchError(ValueError):
    """The model, data and stage configs belong to different families (names each one and the matching choices)."""


def target_family(target: Any, known: set[str], families: Mapping[str, Any] | None = None) -> str | None:
    """The family of a `_target_`: the registered family naming that class (`families`: name -> Family), else the
    folder it lives in when that is a known family (`omni.minimind_o.model.MiniMindO` -> `minimind_o`), else None."""
    for name, family in (families or {}).items():
        if target in (getattr(family, "model", None), getattr(family, "datamodule", None)) or \
                target in getattr(family, "renamed", {}):
            return name
    parts = str(target or "").split(".")
    return parts[1] if len(parts) > 2 and parts[1] in known else None


def _conf_dir() -> Path | None:
    """The primary config folder of this run (Hydra's), else the checkout's `conf/`."""
    try:
        from hydra.core.hydra_config import HydraConfig

        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path)
    except Exception:  # noqa: BLE001 - not under Hydra (a test composing by hand): the checkout's conf/
        pass
    folder = Path(package_dir("omni")).parent / "conf"
    return folder if folder.is_dir() else None


def family_options(conf: Path | None, families: Mapping[str, Any] | None = None
                   ) -> tuple[set[str], dict[str, dict[str, str | None]]]:
    """(known families, {group: {option: family}}) of the model / data / stage choices in config folder `conf`."""
    options: dict[str, dict[str, str | None]] = {group: {} for group in GROUP_LABELS}
    known = set(families or {})
    if conf is None:
        return known, options
    nodes = {group: {p.stem: load_group_config(p) for p in sorted((conf / group).glob("*.yaml"))}
             for group in GROUP_LABELS}
    known |= {str(n.get("_target_")).split(".")[1] for n in nodes["model"].values()
              if len(str(n.get("_target_")).split(".")) > 2}
    for group, opts in nodes.items():
        for name, node in opts.items():
            family = node.get("family")
            options[group][name] = family if family is not None or group == "stage" else \
                target_family(node.get("_target_"), known, families)
    return known, options


def check_families(cfg: Any, families: Mapping[str, Any] | None = None) -> None:
    """Fail at start, in one line, when the model, the data and the stage(s) are of different families: each one
    with its family, then the choices of the stage's family (else the model's) for the ones that differ, and the
    other family's stages. Reads `_target_` / `family` only, so it runs before anything is resolved.
    `families`: the registry ({name: Family}; titles and exact classes), optional."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = dict(HydraConfig.get().runtime.choices)
    except Exception:  # noqa: BLE001 - composed without Hydra's runtime: label by config values
        choices = {}
    model_target = OmegaConf.select(cfg, "model._target_", default=None)
    if model_target is None:
        return
    known, options = family_options(_conf_dir(), families)
    parts = str(model_target).split(".")
    if len(parts) > 2:
        known.add(parts[1])  # a model outside conf/model/ still names its family by its folder
    stages = [("stage", OmegaConf.select(cfg, "stage"))]
    stages += [(f"stage@curriculum.{n}", s) for n, s in (OmegaConf.select(cfg, "curriculum") or {}).items()]
    entries: list[tuple[str, str, str]] = []  # (label, group, family)
    for key, node in stages:
        if node is not None and node.get("family") is not None:
            entries.append((f"{key}={choices.get(key) or node.get('name')}", "stage", str(node.family)))
    for group in ("model", "data"):
        target = OmegaConf.select(cfg, f"{group}._target_", default=None)
        family = OmegaConf.select(cfg, f"{group}.family", default=None) or target_family(target, known, families)
        if family is not None:
            entries.append((f"{group}={choices.get(group) or target}", group, str(family)))
    if len({family for _, _, family in entries}) <= 1:
        return
    title = lambda name: getattr((families or {}).get(name), "title", None) or name  # noqa: E731
    ref_label, _, ref = min(entries, key=lambda e: ("stage", "model", "data").index(e[1]))  # the stage's first
    wrong = [e for e in entries if e[2] != ref]
    hints = []
    for group in dict.fromkeys(g for _, g, _ in wrong):
        opts = sorted(n for n, f in options[group].items() if f == ref)
        if opts:
            hints.append(f"{title(ref)} {GROUP_LABELS[group]}: " + ", ".join(opts))
    for family in dict.fromkeys(f for _, g, f in wrong if g != "stage"):
        opts = sorted(n for n, f in options["stage"].items() if f == family)
        if opts:
            hints.append(f"or a {title(family)} stage: " + ", ".join(opts))
    raise FamilyMismatchError(f"{ref_label} is {title(ref)} but " + " and ".join(
        f"{label} is {title(family)}" for label, _, family in wrong) + "".join(f"; {hint}" for hint in hints))
