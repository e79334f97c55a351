"""Family registry: the one list of model families (`FAMILIES`) and the questions shared code asks about them.

Each family describes itself in one `omni.family.Family` entry in its own folder (`omni/<family>/family.py`,
`FAMILY = Family(...)`); registering a family is adding that module's name to `FAMILIES` below. Entries name
their classes by dotted path, so reading the registry imports no family code; a class is imported when used.
Shared code (train, evaluate, callbacks, checkpoint, distributed, demo) asks here and never names a family.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any

from torch import nn

from omni.family import Family, is_instance, resolve

# the registration list: one module per family, each defining `FAMILY` (see omni/ADDING_A_FAMILY.md)
FAMILIES: tuple[str, ...] = (
    "omni.mini_omni.family",
    "omni.mini_omni3.family",
    "omni.minimind_o.family",
)


@functools.cache
def registry() -> dict[str, Family]:
    """{name: Family} of every registered family, in registration order (imports only the entry modules)."""
    out: dict[str, Family] = {}
    for module in FAMILIES:
        family = getattr(importlib.import_module(module), "FAMILY", None)
        if not isinstance(family, Family):
            raise TypeError(f"{module} must define FAMILY = omni.family.Family(...), got {type(family).__name__}")
        if family.name in out:
            raise ValueError(f"family {family.name!r} is registered twice ({module})")
        out[family.name] = family
    modes = [m for f in out.values() for m in f.eval_modes]
    if len(modes) != len(set(modes)):
        raise ValueError(f"two families define the same eval mode: {sorted(modes)}")
    return out


def get(name: str) -> Family:
    families = registry()
    if name not in families:
        raise KeyError(f"unknown family {name!r}; registered: {sorted(families)}")
    return families[name]


def family_of(obj: Any) -> Family:
    """The family of a model, an inference helper or a datamodule instance (by class name; imports nothing)."""
    for family in registry().values():
        if any(is_instance(obj, path) for path in (family.model, family.inference, family.datamodule)):
            return family
    raise TypeError(f"{type(obj).__name__} belongs to no registered family; known: "
                    f"{[f.model.rpartition('.')[2] for f in registry().values()]} (omni.families.FAMILIES)")


def release_importer(model: nn.Module):
    """The model's family importer `init_from(model, path) -> bool` (True: the path was one of the family's
    released formats and is now loaded; False: read it as our own checkpoint), or None."""
    family = family_of(model)
    return importlib.import_module(family.importer).init_from if family.importer else None


def demo_module(model: nn.Module):
    """The model's family web-demo module (`build(ctx: omni.demo.DemoContext) -> gr.Blocks`), imported now
    (Gradio loads only for eval.py mode=demo)."""
    family = family_of(model)
    if family.demo is None:
        raise TypeError(f"no web demo for {type(model).__name__} ({family.title}); families with one: "
                        f"{[f.name for f in registry().values() if f.demo]}")
    return importlib.import_module(family.demo)


def make_inference(model: nn.Module, tokenizer: Any):
    """The model's family inference helper (prompting, decoding, detokenising)."""
    return family_of(model).load("inference")(model, tokenizer)


def sampling_config(obj: Any, settings: Any) -> Any:
    """eval.yaml's / a callback's sampling mapping -> what the family's inference helper takes."""
    return family_of(obj).load("sampling")(**dict(settings))


def speech_producer_factory(infer: Any):
    """The factory `(infer, **options) -> SpeechProducer` of the helper's family, or None (callbacks.speech)."""
    try:
        family = family_of(infer)
    except TypeError:
        return None
    return resolve(family.speech) if family.speech else None


def eval_mode(mode: str):
    """The function `fn(cfg) -> dict` serving `eval.py mode=<mode>` for a family-specific mode, or None."""
    for family in registry().values():
        if mode in family.eval_modes:
            return resolve(family.eval_modes[mode])
    return None


def eval_modes() -> list[str]:
    return sorted(m for f in registry().values() for m in f.eval_modes)


def wrap_layer_classes() -> set[type[nn.Module]]:
    """Every registered family's block classes (FSDP wrapping, activation checkpointing): omni.distributed."""
    return {resolve(path) for family in registry().values() for path in family.wrap_layers}


def aux_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The model's training-only heads (may be missing / extra in a checkpoint); () outside the registry."""
    try:
        return tuple(family_of(model).aux_prefixes)
    except TypeError:
        return ()


def split_metric(model: nn.Module):
    """A new instance of the model's family split-level metric (a torchmetrics `Metric`; `Family.split_metric`),
    or None (no such metric, or a model outside the registry)."""
    try:
        family = family_of(model)
    except TypeError:
        return None
    return family.load("split_metric")() if family.split_metric else None


def lora_targets(model: nn.Module) -> tuple[str, ...]:
    """The model's family default LoRA targets (module-name globs of its LLM / Thinker; omni/lora.py); ()
    outside the registry (then `lora.targets` must be set)."""
    try:
        return tuple(family_of(model).lora_targets)
    except TypeError:
        return ()


def hf_schemas(obj: Any) -> dict[str, Any]:
    """{name: data.hf.HFSchema} the family of `obj` (a datamodule, model or helper) reads Hugging Face datasets
    with (`data.source=hf`); {} when it lists none."""
    family = family_of(obj)
    return dict(importlib.import_module(family.hf_schemas).SCHEMAS) if family.hf_schemas else {}


def resolvers() -> dict[str, Any]:
    """The OmegaConf resolvers the families' configs use: {name: function}, each imported at its first call."""
    def lazy(path: str):
        return lambda *args: resolve(path)(*args)

    return {name: lazy(path) for family in registry().values() for name, path in family.resolvers.items()}


def load_tokenizer(path: str | None):
    if not path:
        raise ValueError("model.cfg.tokenizer_path is not set: point it at a local tokenizer folder")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def reference_fields() -> dict[str, str]:
    """{task: the example field holding its reference text} over every family (task names are distinct)."""
    return {task: field for family in registry().values() for task, field in family.reference_field.items()}


def eval_tasks(infer: Any) -> dict[str, bool]:
    """{task: its answer is spoken} that eval.py / the text-metrics callback can score with this inference
    helper (its family's `tasks`)."""
    family = family_of(infer)
    if not family.tasks:
        modes = [m for m in family.eval_modes]
        raise ValueError(f"{type(infer).__name__} has no tasks to score on a data split"
                         + (f" ({family.title}: eval.py mode={'|'.join(modes)})" if modes else ""))
    return dict(family.tasks)


def text_metric_tasks(infer: Any) -> list[str]:
    """The text-metrics callback's tasks when `callbacks.text_metrics.tasks` is null: the family's
    `text_metric_tasks` ([] for a family whose answers have no text reference on a data split, e.g. Mini-Omni3,
    whose streaming decisions the model scores itself)."""
    return list(family_of(infer).text_metric_tasks)


# -- rebuilding from a checkpoint's stored run config (`omni_config`): data, never code --------------------------
# The classes a stored config may name in `_target_`, by section: each registered family's model and config
# classes (`model`) and DataModule (`data`), from its Family entry. Any other `_target_` (anywhere in the section) is
# refused, naming it and the checkpoint, before anything is built; so are interpolations (`${...}`: a resolver could
# import a module), since train.py stores the config resolved. A class that moved keeps its old name readable
# through its family's `renamed` ({old: new}): checkpoints written before the move load as the class it is now.
STORED_TARGETS: dict[str, tuple[str, ...]] = {
    section: tuple(t for family in registry().values() for t in family.stored_targets[section])
    for section in ("model", "data")}
RENAMED_TARGETS: dict[str, str] = {old: new for family in registry().values() for old, new in family.renamed.items()}
_TOP_LEVEL = {"model": tuple(f.model for f in registry().values()),  # model classes only
              "data": tuple(f.datamodule for f in registry().values())}


class StoredConfigError(ValueError):
    """A checkpoint's stored config names something outside the allow-list (nothing was built from it)."""


def check_stored_config(node: Any, source: Any, section: str, where: str | None = None) -> None:
    """Raise StoredConfigError unless every `_target_` in `node` (a plain dict/list tree) is one of
    STORED_TARGETS[section] and no string holds an interpolation. Builds and imports nothing."""
    where = where or section
    allowed = STORED_TARGETS[section]
    if isinstance(node, dict):
        if "_target_" in node:
            target = node["_target_"]
            if not isinstance(target, str) or RENAMED_TARGETS.get(target, target) not in allowed:
                raise StoredConfigError(
                    f"{source}: stored config `{where}._target_` = {target!r} is not one of the project's "
                    f"{section} classes; refused, nothing was built from it (allowed: {list(allowed)})")
        for key, value in node.items():
            if not isinstance(key, str):
                raise StoredConfigError(f"{source}: stored config `{where}` has a non-string key {key!r}; refused")
            check_stored_config(value, source, section, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_stored_config(value, source, section, f"{where}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise StoredConfigError(f"{source}: stored config `{where}` = {node!r} holds an interpolation; refused "
                                "(train.py stores its config resolved)")
    elif not (node is None or isinstance(node, (bool, int, float, str))):
        raise StoredConfigError(f"{source}: stored config `{where}` holds a {type(node).__name__}; refused "
                                "(plain data only)")


def check_stored_run_config(run_cfg: Any, source: Any) -> None:
    """The sections entry points rebuild from a checkpoint (`model`, `data`) pass `check_stored_config`."""
    if not isinstance(run_cfg, dict):
        raise StoredConfigError(f"{source}: stored `omni_config` is a {type(run_cfg).__name__}, not a mapping")
    for section in STORED_TARGETS:
        if run_cfg.get(section) is not None:
            check_stored_config(run_cfg[section], source, section)


def instantiate_stored(run_cfg: dict, section: str, source: Any, node: Any = None):
    """Build `run_cfg[section]` (or `node`, an edited copy of it) from a checkpoint's stored config, after
    `check_stored_config`: only the allow-listed classes, the top-level one of the section's kind."""
    import hydra
    from omegaconf import OmegaConf

    node = run_cfg.get(section) if node is None else node
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node)
    if not isinstance(node, dict) or "_target_" not in node:
        raise StoredConfigError(f"{source}: stored config has no `{section}._target_` to build")
    check_stored_config(node, source, section)
    node = renamed_targets(node)
    if node["_target_"] not in _TOP_LEVEL[section]:
        raise StoredConfigError(f"{source}: stored config `{section}._target_` = {node['_target_']!r} is not a "
                                f"{section} class (expected one of {list(_TOP_LEVEL[section])})")
    return hydra.utils.instantiate(OmegaConf.create(node))


def renamed_targets(node: Any) -> Any:
    """A copy of a (checked) plain config tree with every moved class's old `_target_` replaced by its new one."""
    if isinstance(node, dict):
        return {k: (RENAMED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str) else renamed_targets(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [renamed_targets(v) for v in node]
    return node


def model_from_stored_config(run_cfg: dict, source: Any) -> nn.Module:
    """The family model a checkpoint's stored run config describes (random weights; load the state dict next)."""
    return instantiate_stored(run_cfg, "model", source)
