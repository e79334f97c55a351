"""The Family contract and registry (omni/family.py, omni/families.py) and the import layering (pyproject
[tool.importlinter]): every entry resolves to what it says, shared code names no family and imports none, there is
no import cycle (imports inside functions included), the FSDP wrap list covers every family's blocks, and
checkpoints whose stored config names a class by its path before the folder moves still load."""
from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import inspect
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import CONF, ROOT, compose_cfg

torch.set_num_threads(1)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONTRACTS = PYPROJECT["tool"]["importlinter"]["contracts"]
SHARED = next(c for c in CONTRACTS if c["type"] == "forbidden")["source_modules"]
FAMILY_PACKAGES = next(c for c in CONTRACTS if c["type"] == "forbidden")["forbidden_modules"]


# -- the registry -----------------------------------------------------------------------------------------------
def test_registry_lists_each_family_once_with_its_folder():
    from omni.families import FAMILIES, registry

    assert list(registry()) == ["mini_omni", "mini_omni3", "minimind_o"]
    for module, (name, family) in zip(FAMILIES, registry().items()):
        assert module == f"omni.{name}.family"  # the entry lives in the family's own folder
        for path in (family.model, family.config, family.inference):
            assert path.startswith(f"omni.{name}."), path
        assert family.datamodule.startswith(f"data.{name}."), family.datamodule
        if family.speech:
            assert family.speech.startswith(f"callbacks.{name}."), family.speech  # producers: callbacks/<family>/


def test_every_entry_resolves_to_what_it_says():
    from omni.families import registry
    from omni.family import resolve

    for family in registry().values():
        for attr in ("model", "config", "datamodule", "inference", "sampling"):
            assert inspect.isclass(family.load(attr)), (family.name, attr)
        assert issubclass(family.load("model"), nn.Module)
        from lightning import LightningDataModule

        assert issubclass(family.load("datamodule"), LightningDataModule)
        if family.speech:
            assert callable(family.load("speech"))
        if family.importer:
            assert callable(resolve(family.importer).init_from)
        if family.converter:
            assert callable(resolve(family.converter).main)
        if family.demo:  # found, not imported (Gradio loads only for mode=demo)
            assert importlib.util.find_spec(family.demo) is not None, family.demo
        for fn in family.eval_modes.values():
            assert callable(resolve(fn))
        for layer in family.wrap_layers:
            assert issubclass(resolve(layer), nn.Module), layer
        for fn in family.resolvers.values():
            assert callable(resolve(fn))
        assert (CONF / "model" / f"{family.tiny_model}.yaml").is_file()
        assert (CONF / "data" / f"{family.sample_data}.yaml").is_file()


def test_tiny_model_and_sample_data_are_the_familys_classes():
    from omni.config import load_group_config
    from omni.families import registry

    for family in registry().values():
        model = load_group_config(CONF / "model" / f"{family.tiny_model}.yaml")
        data = load_group_config(CONF / "data" / f"{family.sample_data}.yaml")
        assert (model._target_, model.cfg._target_) == (family.model, family.config), family.name
        assert data._target_ == family.datamodule, family.name


def test_family_tasks_are_the_families_own_tables():
    """Hand-written tables (spec: Mini-Omni's a1a2 / t1a2 answer in speech, MiniMind-O's t2a / a2a do, i2t in
    text), cross-checked with each family's own task table."""
    from omni.families import get
    from omni.mini_omni.layout import TASKS as MINI_OMNI_TASKS
    from omni.minimind_o.infer import TASKS as MINIMIND_TASKS

    mini_omni = {"asr": False, "a1t2": False, "a1a2": True, "t1t2": False, "t1a2": True}
    assert dict(get("mini_omni").tasks) == mini_omni
    assert {t: MINI_OMNI_TASKS[t].audio_out for t in mini_omni} == mini_omni
    assert get("mini_omni").reference_field["asr"] == "question_text"  # ASR scores against the transcript
    minimind = {"t2a": True, "a2a": True, "i2t": False}
    assert dict(get("minimind_o").tasks) == minimind == dict(MINIMIND_TASKS)
    assert dict(get("mini_omni3").tasks) == {}  # scored by mode=session, not per row
    assert get("mini_omni").text_metric_tasks == ("asr", "a1t2")


def test_contract_mistakes_fail_when_the_entry_is_made():
    from omni.family import Family

    base = dict(name="x", title="X", model="m.M", config="m.C", datamodule="d.D", inference="m.I", sampling="m.S",
                tasks={"a": False}, reference_field={"a": "answer_text"}, text_metric_tasks=("a",), tiny_model="t",
                sample_data="s", wrap_layers=())
    Family(**base)
    with pytest.raises(ValueError, match=r"family x: text_metric_tasks \['b'\] are not among its tasks \['a'\]"):
        Family(**{**base, "text_metric_tasks": ("b",)})
    with pytest.raises(ValueError, match=r"family x: tasks \['a'\] have no reference_field"):
        Family(**{**base, "reference_field": {}})
    with pytest.raises(TypeError):  # frozen, mappings included
        Family(**base).tasks["a"] = True


def test_family_of_answers_for_models_helpers_and_datamodules_without_importing():
    from omni.families import family_of
    from omni.mini_omni3.model import MiniOmni3

    assert family_of(MiniOmni3.__new__(MiniOmni3)).name == "mini_omni3"

    class Sub(MiniOmni3):  # a subclass is its parent's family
        pass

    assert family_of(Sub.__new__(Sub)).name == "mini_omni3"
    with pytest.raises(TypeError, match="Linear belongs to no registered family"):
        family_of(nn.Linear(1, 1))


def test_every_registered_family_is_in_the_import_contracts():
    """A new family's folders are listed in pyproject's contracts (shared code may not import them)."""
    from omni.families import registry

    for name in registry():
        for top in ("omni", "data", "callbacks"):
            if (ROOT / top / name).is_dir():
                assert f"{top}.{name}" in FAMILY_PACKAGES, f"add {top}.{name} to pyproject's forbidden_modules"


def test_every_bundled_sample_and_asset_ships():
    """package-data globs cover each family's sample folder and assets without naming the family."""
    from setuptools import Distribution  # noqa: F401 - setuptools is a dependency
    import fnmatch

    globs = PYPROJECT["tool"]["setuptools"]["package-data"]
    for package, patterns in (("data", globs["data"]), ("omni", globs["omni"])):
        for path in (ROOT / package).rglob("*"):
            rel = path.relative_to(ROOT / package).as_posix()
            shipped = rel.startswith("sample") and (rel.endswith(".parquet") or rel.endswith(".md")) or \
                "/assets/" in f"/{rel}" and path.is_file()
            if shipped and "__pycache__" not in rel:
                assert any(fnmatch.fnmatch(rel, pat.replace("**/", "*")) for pat in patterns), rel


# -- FSDP / activation checkpointing wrap list -----------------------------------------------------------------
def _blocks(model: nn.Module) -> set[type]:
    """Classes of the repeated blocks of a model: the members of its ModuleLists whose class is a *Layer."""
    return {type(m) for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst
            if type(m).__name__.endswith("Layer")}


@pytest.mark.parametrize("model_name", ["mini_omni_tiny", "mini_omni2_tiny", "mini_omni3_tiny", "minimind_o_tiny"])
def test_fsdp_wrap_list_covers_every_block_of_every_family(model_name, tmp_path):
    import hydra

    from omni.config import load_group_config, register_resolvers
    from omni.distributed import decoder_layer_classes

    register_resolvers()
    torch.manual_seed(0)
    blocks = _blocks(hydra.utils.instantiate(load_group_config(CONF / "model" / f"{model_name}.yaml")))
    assert blocks and blocks <= decoder_layer_classes(), sorted(c.__name__ for c in blocks - decoder_layer_classes())
    # negative control: the list before the registry (Qwen2 + Whisper layers only) missed these families' blocks
    old = {"Qwen2DecoderLayer", "WhisperEncoderLayer"}
    missed = {c.__name__ for c in blocks} - old
    expected_missed = {"mini_omni_tiny": set(), "mini_omni2_tiny": {"CLIPEncoderLayer"},
                       "mini_omni3_tiny": {"Qwen2_5OmniAudioEncoderLayer"},
                       "minimind_o_tiny": {"Qwen3DecoderLayer"}}[model_name]
    assert expected_missed <= missed, missed


# -- imports: layering, cycles, no family names in shared code --------------------------------------------------
def test_import_linter_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: install the test extra (pip install -e '.[test]', import-linter)")
    proc = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def _module_graph():
    import grimp

    graph = grimp.build_graph("omni", "data", "callbacks", cache_dir=None)
    return graph, {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_shared_or_a_familys():
    """The contract's shared list covers every module outside the family folders (a new shared module is listed,
    so the rule that it imports no family applies to it)."""
    graph, _ = _module_graph()
    under = lambda m, pkgs: any(m == p or m.startswith(p + ".") for p in pkgs)  # noqa: E731
    loose = [m for m in sorted(graph.modules) if m not in ("omni", "data", "callbacks")
             and not under(m, FAMILY_PACKAGES) and not under(m, SHARED)]
    assert loose == [], f"add {loose} to pyproject's shared source_modules (or move them into a family folder)"


def test_no_import_cycle_among_modules_function_level_imports_included():
    graph, edges = _module_graph()
    # the graph holds imports made inside functions: omni.checkpoint imports omni.families only in function bodies
    tree = ast.parse((ROOT / "omni" / "checkpoint.py").read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert "omni.families" not in top and "omni.families" in edges["omni.checkpoint"]
    assert _cycles(edges) == []
    # negative control: the cycle detector finds the cycle the registry used to close (families -> family model ->
    # omni.config -> omni.stages.module -> omni.checkpoint -> families)
    bad = copy.deepcopy(edges)
    bad["omni.families"] = set(bad["omni.families"]) | {"omni.stages.module"}
    assert any({"omni.families", "omni.checkpoint"} <= set(c) for c in _cycles(bad))


FAMILY_WORDS = re.compile(r"mini_?omni|minimind", re.IGNORECASE)


def _module_file(module: str) -> list[Path]:
    path = ROOT / Path(*module.split("."))
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _code_words(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every identifier, attribute and string of a module's code: docstrings and comments left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            out.append((n.lineno, n.id))
        elif isinstance(n, ast.Attribute):
            out.append((n.lineno, n.attr))
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            out += [(n.lineno, getattr(n, "module", None) or "")] + [(n.lineno, a.name) for a in n.names]
        elif isinstance(n, (ast.FunctionDef, ast.ClassDef)):
            out.append((n.lineno, n.name))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            out.append((n.lineno, n.value))
    return out


def test_shared_modules_name_no_family():
    """Outside the families' folders no code names a family: no import, identifier or string (the registration
    list in omni/families.py excepted; docstrings and comments may explain)."""
    found = []
    for module in SHARED + ["eval", "train"]:
        for path in _module_file(module):
            for line, text in _code_words(path):
                if FAMILY_WORDS.search(text):
                    found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    registration = [f for f in found if f.startswith("omni/families.py:") and re.search(r"'omni\.\w+\.family'$", f)]
    assert len(registration) == 3, registration  # FAMILIES: one line per family
    assert [f for f in found if f not in registration] == []


def test_family_name_check_would_catch_an_isinstance_chain(tmp_path):
    """Negative control for the scan above: the dispatch it replaced (import + isinstance on a family class) is
    found, while the same words in a docstring and a comment are not."""
    path = tmp_path / "probe.py"
    path.write_text('"""MiniOmni is explained here."""\nfrom omni.mini_omni.infer import MiniOmniInference\n'
                    'if isinstance(x, MiniOmniInference):  # minimind too\n    pass\n')
    hits = sorted(t for _, t in _code_words(path) if FAMILY_WORDS.search(t))
    assert hits == ["MiniOmniInference", "MiniOmniInference", "omni.mini_omni.infer"]


# -- checkpoints written before the folders moved ---------------------------------------------------------------
def test_checkpoint_with_old_class_paths_still_evaluates(tmp_path):
    """A checkpoint whose stored config names `data.datamodule.OmniDataModule` (Mini-Omni's DataModule before
    data/mini_omni/) is rebuilt as data.mini_omni.datamodule.MiniOmniDataModule and evaluates."""
    from omegaconf import OmegaConf

    from omni.evaluate import build_datamodule, evaluate
    from omni.families import StoredConfigError, instantiate_stored
    from omni.train import build_module
    from tests.test_train import compose_eval

    cfg = compose_cfg(["model.cfg.whisper.max_source_positions=150"], tmp_path / "run")
    torch.manual_seed(0)
    module = build_module(cfg, init_from=None)
    run_cfg = OmegaConf.to_container(cfg, resolve=True)
    assert run_cfg["data"]["_target_"] == "data.mini_omni.datamodule.MiniOmniDataModule"
    run_cfg["data"]["_target_"] = "data.datamodule.OmniDataModule"  # as checkpoints before the move stored it
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
                "omni_config": run_cfg, "omni_stage": "multimodal"}, ckpt)

    eval_cfg = compose_eval(tmp_path / "eval", f"ckpt={ckpt}", "tasks=[asr]", "max_examples=1",
                            "sampling.max_new_tokens=4", "speech=null", "report=false")
    assert type(build_datamodule(run_cfg, eval_cfg)).__qualname__ == "MiniOmniDataModule"
    report = evaluate(eval_cfg)
    assert report["tasks"]["asr"]["n"] == 1
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["tasks"]["asr"]["n"] == 1
    # negative control: an old-looking name that no family lists stays refused
    bad = copy.deepcopy(run_cfg)
    bad["data"]["_target_"] = "data.datamodule.SomethingElse"
    with pytest.raises(StoredConfigError, match="data.datamodule.SomethingElse"):
        instantiate_stored(bad, "data", ckpt)


def test_streaming_checkpoint_with_the_old_data_path_rebuilds_its_datamodule(tmp_path):
    """Mini-Omni3 checkpoints stored `data.streaming.datamodule.StreamingDataModule` (before data/mini_omni3/)."""
    from omegaconf import OmegaConf

    from omni.families import instantiate_stored

    cfg = compose_cfg(["stage=streaming"], tmp_path)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert data["_target_"] == "data.mini_omni3.datamodule.StreamingDataModule"
    data["_target_"] = "data.streaming.datamodule.StreamingDataModule"
    dm = instantiate_stored({"data": data}, "data", "old.ckpt")
    assert f"{type(dm).__module__}.{type(dm).__qualname__}" == "data.mini_omni3.datamodule.StreamingDataModule"


def test_loader_position_under_the_old_class_name_is_restored():
    """Lightning keys a DataModule's state by its class name: a checkpoint of the class's old name resumes its
    loader position (OmniModule.on_load_checkpoint copies it over); a DataModule without old names gets nothing."""
    from types import SimpleNamespace

    from data.mini_omni.datamodule import MiniOmniDataModule
    from omni.stages.module import OmniModule

    state = {"train_loader": {"epoch": 1, "consumed": 3}}
    for datamodule, expected in ((MiniOmniDataModule.__new__(MiniOmniDataModule), state),
                                 (SimpleNamespace(), None)):
        fake = SimpleNamespace(_trainer=SimpleNamespace(datamodule=datamodule), nonfinite={})
        checkpoint = {"OmniDataModule": state}
        OmniModule.on_load_checkpoint(fake, checkpoint)
        assert checkpoint.get(type(datamodule).__qualname__) == expected
