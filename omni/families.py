"""Family registry: which inference helper serves which model class (later families register here)."""
from __future__ import annotations

from typing import Any

from torch import nn

from omni.mini_omni.infer import MiniOmniInference
from omni.mini_omni.model import MiniOmni
from omni.mini_omni3.model import MiniOmni3
from omni.mini_omni3.session import MiniOmni3Inference
from omni.minimind_o.infer import MiniMindOInference
from omni.minimind_o.model import MiniMindO

INFERENCE = {MiniOmni: MiniOmniInference}
INFERENCE[MiniOmni3] = MiniOmni3Inference  # streaming sessions (omni/mini_omni3/session.py)
INFERENCE[MiniMindO] = MiniMindOInference  # Thinker text + Talker speech (omni/minimind_o/infer.py)


# model class -> its family's release importer `init_from(model, path) -> bool` (True: the path was a released
# format of that family and is now loaded; False: not one of its formats, read it as our own checkpoint)
RELEASE_IMPORTERS = {MiniOmni: "omni.mini_omni.convert", MiniOmni3: "omni.mini_omni3.convert",
                     MiniMindO: "omni.minimind_o.convert"}


def release_importer(model: nn.Module):
    import importlib

    for cls, module in RELEASE_IMPORTERS.items():
        if isinstance(model, cls):
            return importlib.import_module(module).init_from
    return None


# model class -> its family's web-demo module (`build(ctx: omni.demo.DemoContext) -> gr.Blocks`), imported lazily
# (Gradio loads only for eval.py mode=demo)
DEMOS = {MiniOmni: "omni.mini_omni.demo", MiniOmni3: "omni.mini_omni3.demo", MiniMindO: "omni.minimind_o.demo"}


def demo_module(model: nn.Module):
    import importlib

    for cls, module in DEMOS.items():
        if isinstance(model, cls):
            return importlib.import_module(module)
    raise TypeError(f"no web demo for {type(model).__name__}; known: {[c.__name__ for c in DEMOS]}")


def make_inference(model: nn.Module, tokenizer: Any):
    for cls, infer in INFERENCE.items():
        if isinstance(model, cls):
            return infer(model, tokenizer)
    raise TypeError(f"no inference helper for {type(model).__name__}; known: {[c.__name__ for c in INFERENCE]}")


def load_tokenizer(path: str | None):
    if not path:
        raise ValueError("model.cfg.tokenizer_path is not set: point it at a local tokenizer folder")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def eval_tasks(infer: Any) -> dict[str, bool]:
    """{task: its answer is spoken} that eval.py / the text-metrics callback can score with this inference
    helper: its `TASKS` table (MiniMind-O), or Mini-Omni's tasks that have a text reference."""
    tasks = getattr(infer, "TASKS", None)
    if tasks is not None:
        return dict(tasks)
    if isinstance(infer, MiniOmniInference):
        from callbacks.text_metrics import REFERENCE_FIELD
        from omni.mini_omni.layout import TASKS

        return {task: spec.audio_out for task, spec in TASKS.items() if task in REFERENCE_FIELD}
    raise ValueError(f"{type(infer).__name__} has no tasks to score on a data split"
                     + (" (Mini-Omni3: eval.py mode=session)" if isinstance(infer, MiniOmni3Inference) else ""))


# -- rebuilding from a checkpoint's stored run config (`omni_config`): data, never code --------------------------
# The classes a stored config may name in `_target_`, by section: each family's model and config classes, and the
# DataModules. A new family adds its classes here. Any other `_target_` (anywhere in the section) is refused,
# naming it and the checkpoint, before anything is built; so are interpolations (`${...}`: a resolver could import
# a module), since train.py stores the config resolved.
STORED_TARGETS: dict[str, tuple[str, ...]] = {
    "model": ("omni.mini_omni.model.MiniOmni", "omni.mini_omni.model.MiniOmniConfig",
              "omni.mini_omni3.model.MiniOmni3", "omni.mini_omni3.model.MiniOmni3Config",
              "omni.minimind_o.model.MiniMindO", "omni.minimind_o.model.MiniMindOConfig"),
    "data": ("data.datamodule.OmniDataModule", "data.streaming.datamodule.StreamingDataModule",
             "data.minimind_o.datamodule.MiniMindODataModule"),
}
_TOP_LEVEL = {"model": tuple(f"{c.__module__}.{c.__qualname__}" for c in RELEASE_IMPORTERS),  # model classes only
              "data": STORED_TARGETS["data"]}


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
            if not isinstance(target, str) or target not in allowed:
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
    if node["_target_"] not in _TOP_LEVEL[section]:
        raise StoredConfigError(f"{source}: stored config `{section}._target_` = {node['_target_']!r} is not a "
                                f"{section} class (expected one of {list(_TOP_LEVEL[section])})")
    return hydra.utils.instantiate(OmegaConf.create(node))


def model_from_stored_config(run_cfg: dict, source: Any) -> nn.Module:
    """The family model a checkpoint's stored run config describes (random weights; load the state dict next)."""
    return instantiate_stored(run_cfg, "model", source)
