"""Every dependency declared in pyproject's `dependencies` is imported by the project's code (omni/, data/,
callbacks/, train.py, eval.py; imports inside functions count), or is listed in INDIRECT with the reason it is
needed all the same and evidence that its user is still there. Distribution names map to import names through the
installed metadata (importlib.metadata.packages_distributions: pillow -> PIL, pyyaml -> yaml)."""
from __future__ import annotations

import ast
import re
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.conftest import ROOT

CODE = ["omni", "data", "callbacks", "train.py", "eval.py"]

# distribution -> (evidence, reason). Evidence: "import:<module>" (our code imports the package that needs it) or
# "<file>:<text>" (the config that selects it names it); None only while work that will import it is pending.
INDIRECT: dict[str, tuple[str | None, str]] = {
    "setuptools": ("import:resemblyzer", "resemblyzer's webrtcvad imports pkg_resources (gone in setuptools 81)"),
    "requests": ("import:speechmos", "speechmos (DNSMOS) imports it without declaring it"),
    "hydra-optuna-sweeper": ("conf/hparams_search/optuna.yaml:hydra_optuna_sweeper",
                             "a Hydra plugin (hparams_search=optuna): Hydra loads it from hydra_plugins/"),
    "hydra-submitit-launcher": ("conf/hydra/launcher/slurm.yaml:submitit_slurm",
                                "a Hydra plugin (hydra/launcher=slurm | submitit_local): Hydra loads it"),
    "rich": ("conf/callbacks/rich.yaml:RichProgressBar",
             "Lightning's RichProgressBar / RichModelSummary draw with it (callbacks=rich)"),
}


def normalize_dist(name: str) -> str:
    """PEP 503 name: lower case, runs of - _ . as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [normalize_dist(re.match(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", d).group(0)) for d in deps]


def imported_modules(source: str) -> set[str]:
    """Top-level names of absolute imports anywhere in the source (module level or inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def project_imports() -> set[str]:
    files = [p for entry in CODE for p in ((ROOT / entry).rglob("*.py") if (ROOT / entry).is_dir() else [ROOT / entry])]
    return set().union(*(imported_modules(p.read_text()) for p in files))


def import_names() -> dict[str, set[str]]:
    """distribution (normalised) -> its top-level import names, from the installed metadata."""
    out: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            out.setdefault(normalize_dist(dist), set()).add(module)
    return out


def test_scanner_and_name_mapping_hand_cases():
    source = "import numpy as np, os.path\nfrom PIL import Image\nfrom . import sibling\n" \
             "def f():\n    import yaml\n    from whisper_normalizer.english import EnglishTextNormalizer\n"
    assert imported_modules(source) == {"numpy", "os", "PIL", "yaml", "whisper_normalizer"}
    assert normalize_dist("Whisper_Normalizer") == normalize_dist("whisper.normalizer") == "whisper-normalizer"
    names = import_names()
    # the distribution name is not the import name: a check comparing names directly would call these unused
    assert "PIL" in names["pillow"] and "pillow" not in names["pillow"]
    assert "yaml" in names["pyyaml"] and "pyyaml" not in names["pyyaml"]


def test_every_declared_dependency_is_imported_or_listed():
    names, used = import_names(), project_imports()
    problems = []
    for dist in declared():
        if dist not in names:
            problems.append(f"{dist}: declared but not installed (pip install -e .)")
            continue
        is_imported = bool(names[dist] & used)
        if is_imported and dist in INDIRECT:
            problems.append(f"{dist}: imported now ({sorted(names[dist] & used)}): remove it from INDIRECT")
        elif not is_imported and dist not in INDIRECT:
            problems.append(f"{dist}: declared in pyproject but none of {sorted(names[dist])} is imported in "
                            f"{CODE}: use it, remove it, or list it in INDIRECT with its reason")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dist", sorted(INDIRECT))
def test_indirect_entry_is_declared_and_still_needed(dist):
    assert dist in declared(), f"INDIRECT lists {dist}, which pyproject no longer declares"
    evidence, reason = INDIRECT[dist]
    assert reason
    if evidence is None:
        assert reason == "pending issue 15 metrics/datasets work"
    elif evidence.startswith("import:"):
        assert evidence[len("import:"):] in project_imports(), f"{dist}: nothing imports {evidence} any more"
    else:
        path, text = evidence.split(":", 1)
        assert text in (ROOT / path).read_text(), f"{dist}: {path} no longer names {text}"


def test_callbacks_rich_draws_with_rich(compose):
    import hydra
    from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar, TQDMProgressBar

    from omni.config import validate_config

    rich = compose("callbacks=rich")
    validate_config(rich)  # RichProgressBar / RichModelSummary arguments pass the typed check
    assert isinstance(hydra.utils.instantiate(rich.callbacks.progress_bar), RichProgressBar)
    assert isinstance(hydra.utils.instantiate(rich.callbacks.model_summary), RichModelSummary)
    assert set(compose().callbacks) | {"model_summary"} == set(rich.callbacks)  # the rest of `default` kept
    default = compose()
    assert isinstance(hydra.utils.instantiate(default.callbacks.progress_bar), TQDMProgressBar)
