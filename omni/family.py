"""The Family contract: everything shared code needs to know about one model family, in one typed entry.

Each family writes one `FAMILY = Family(...)` in its own folder (`omni/<family>/family.py`) and adds that module's
name to `omni.families.FAMILIES` (the one registration line). Shared code (train, evaluate, callbacks, checkpoint,
distributed, demo) asks the registry (`omni.families`) and never names a family.

Classes and functions are given as dotted paths ("package.module.Name"), imported only when used: reading the
registry imports no model code (no transformers, no Gradio), and shared modules hold no import of a family's
modules (the import-linter contracts in pyproject.toml check this). See omni/ADDING_A_FAMILY.md.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def resolve(path: str) -> Any:
    """The object a dotted path names ("pkg.module.Name"; a module when it has no attribute part)."""
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return importlib.import_module(path)


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_instance(obj: Any, path: str | None) -> bool:
    """isinstance(obj, <the class `path` names>), decided from the class names of obj's MRO: imports nothing."""
    return path is not None and any(class_path(c) == path for c in type(obj).__mro__)


@dataclass(frozen=True)
class Family:
    """One model family. Paths are dotted ("omni.mini_omni.model.MiniOmni"); see the module docstring."""

    name: str                     # registry key = the `family:` value of its model / data / stage configs
    title: str                    # for messages: "Mini-Omni / Mini-Omni2"
    model: str                    # nn.Module class (`model._target_`); its instances identify the family
    config: str                   # the model's config class (`model.cfg._target_`)
    datamodule: str               # LightningDataModule class (`data._target_`)
    inference: str                # inference helper class: `Inference(model, tokenizer)` (prompting, decoding)
    sampling: str                 # sampling config class: `Sampling(**eval.yaml sampling)`
    tasks: Mapping[str, bool]     # task -> its answer is spoken: the tasks eval.py / text metrics can score
    reference_field: Mapping[str, str]  # task -> the example field holding its reference text
    text_metric_tasks: tuple[str, ...]  # default tasks of callbacks.text_metrics (`tasks: null`)
    tiny_model: str               # conf/model/<name>.yaml: the CPU default of this family's stages
    sample_data: str              # conf/data/<name>.yaml: the bundled sample
    wrap_layers: tuple[str, ...]  # block classes FSDP wraps and activation checkpointing recomputes one by one
    speech: str | None = None     # SpeechSample producer `factory(infer, **options)` (None: the helper itself has
                                  # `speech_samples`, or the family does not speak)
    importer: str | None = None   # module with `init_from(model, path) -> bool` (released formats for init_from=)
    converter: str | None = None  # `python -m <converter>`: release <-> our checkpoints
    demo: str | None = None       # web-demo module: `build(ctx: omni.demo.DemoContext) -> gr.Blocks`
    eval_modes: Mapping[str, str] = field(default_factory=dict)  # extra `eval.py mode=`: mode -> fn(cfg) -> dict
    aux_prefixes: tuple[str, ...] = ()  # training-only heads: may be missing / extra when loading weights
    resolvers: Mapping[str, str] = field(default_factory=dict)  # OmegaConf resolvers its configs use: name -> fn
    renamed: Mapping[str, str] = field(default_factory=dict)    # old stored `_target_` -> the class it is now
                                                                # (checkpoints written before a move still load)
    packer: str | None = None     # `pack(batch, plan: data.packing.PackPlan) -> batch`: the family's padded batch laid
                                  # out packed (data.packing=true; None: the family cannot pack, refused at start)
    lora_targets: tuple[str, ...] = ()  # `lora=` default: fnmatch globs over module names of the LLM / Thinker
                                        # Linear layers PEFT LoRA wraps when `lora.targets` is null (omni/lora.py)
    hf_schemas: str | None = None  # module with `SCHEMAS = {name: data.hf.HFSchema}`: the published Hugging Face
                                   # dataset schemas its data reads with `data.source=hf` (data/hf.py)
    split_metric: str | None = None  # torchmetrics `Metric` class: `update(model output)` every step, `compute() ->
                                     # {name: value}` logged as `{split}/<name>` at each epoch end, over the whole
                                     # split and every rank (omni/stages/module.py)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.text_metric_tasks) - set(self.tasks))
        if unknown:
            raise ValueError(f"family {self.name}: text_metric_tasks {unknown} are not among its tasks "
                             f"{sorted(self.tasks)}")
        missing = sorted(set(self.tasks) - set(self.reference_field))
        if missing:
            raise ValueError(f"family {self.name}: tasks {missing} have no reference_field")
        for name in ("tasks", "reference_field", "eval_modes", "resolvers", "renamed"):  # frozen all the way down
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    # -- what a stored run config (a checkpoint's `omni_config`) may name, by section --------------------------
    @property
    def stored_targets(self) -> dict[str, tuple[str, ...]]:
        return {"model": (self.model, self.config), "data": (self.datamodule,)}

    def load(self, attr: str) -> Any:
        """The object one of the path fields names, imported now (`family.load("model")` -> the class)."""
        path = getattr(self, attr)
        if path is None:
            raise ValueError(f"family {self.name} has no {attr}")
        return resolve(path)

    @property
    def speaking_tasks(self) -> list[str]:
        return sorted(t for t, spoken in self.tasks.items() if spoken)
