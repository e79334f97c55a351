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
