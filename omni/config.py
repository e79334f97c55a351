"""Hydra/OmegaConf resolvers and run-environment defaults shared by train.py, eval.py and tests."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf


def package_dir(name: str) -> str:
    """Folder of an importable package (finds the bundled sample / assets wherever the project is installed)."""
    module = importlib.import_module(name)
    return str(Path(module.__file__).resolve().parent)


def best_precision() -> str:
    """bf16 autocast where the hardware has it, full fp32 elsewhere (CPU autocast is slower than fp32 here)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


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


def image_tokens(arch: str, image_size: Any, patch_size: Any) -> int:
    """Tokens a vision tower makes per image (data configs read it from the model config)."""
    from omni.mini_omni.vision import n_image_tokens

    return n_image_tokens(str(arch), int(image_size), int(patch_size))


def register_resolvers() -> None:
    """Idempotent: safe to call from every entry point and test."""
    resolvers = {
        "omni.root": lambda: str(Path(package_dir("omni")).parent),
        "omni.package_dir": package_dir,
        "omni.cwd": lambda: os.getcwd(),
        "omni.precision": best_precision,
        "omni.wandb_offline": wandb_offline,
        "omni.image_tokens": image_tokens,
    }
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
    "optimized_metric": str | None, "max_nonfinite_steps": int, "resume_dir": str | None,
}


class ConfigTypeError(TypeError):
    """A config value does not have the type its consumer declares; names the key, the expected type and value."""


def _type_name(tp: Any) -> str:
    import typing

    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "")


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
    if tp is type(None):
        if value is not None:
            errors.append(f"{key}: expected None, got {value!r} ({type(value).__name__})")
        return
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key}: expected bool, got {value!r} ({type(value).__name__})")
        return
    if tp in (int, float):
        ok = isinstance(value, int) if tp is int else isinstance(value, (int, float))
        if not ok or isinstance(value, bool):
            errors.append(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
        return
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{key}: expected str, got {value!r} ({type(value).__name__})")
        return
    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        if not isinstance(value, (str, os.PathLike)):
            errors.append(f"{key}: expected a path, got {value!r} ({type(value).__name__})")
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
    if isinstance(target, type) and "loading" in hints:  # **loading of the data modules: their shared loader keys
        hints = {**_annotations(getattr(target, "_init_loading", None)), **hints}
    _check_fields(node, hints, key, errors)


def validate_config(cfg: Any) -> None:
    """Fail at start, naming every key whose value has the wrong type (expected type and value given)."""
    from omegaconf import DictConfig

    from omni.stages.module import StageConfig

    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    errors: list[str] = []
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
