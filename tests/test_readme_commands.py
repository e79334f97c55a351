"""Every `python train.py ...` and `python eval.py ...` line of README.md's code blocks runs (slow), extracted from
the README itself so the docs cannot rot. A line ending in `# needs: <what>` (your own weights, data, GPUs) is
listed, not run. Training lines get `debug=fast` appended; placeholders are filled by what earlier lines trained:

- `logs/.../<t>/checkpoints/<stage>/last.ckpt`  -> the newest `checkpoints/<stage>/last.ckpt` of this session
- `resume_dir=logs/train/runs/<t>`              -> the run folder holding the newest multimodal checkpoint
- `<that ckpt>`                                  -> the newest `checkpoints/streaming/last.ckpt`
- `my_recording.wav`                             -> a 3 s recording written into the working folder

CI_SIZE shrinks the few values that only set how long a line runs (sweep trials, DDP processes, eval rows).
Commands run in order, in one working folder (as a reader would: relative `logs/` paths), each a subprocess."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ROOT

README = ROOT / "README.md"
MARKER = "# needs:"
CI_SIZE = {  # README value -> CI value: how long a line runs, not what it exercises
    "hydra.sweeper.n_trials=20": "hydra.sweeper.n_trials=2",
    "trainer.devices=8": "trainer.devices=2",
}
EVAL_ROWS = "max_examples=2"  # appended to `eval.py` split runs (the README's run every row)


def readme_commands(text: str | None = None) -> list[tuple[int, str, str | None]]:
    """[(README line, command, needs)] for every train.py / eval.py command in a ``` code block: `\\`
    continuations joined, a `cmd && cmd` chain cut to its train.py / eval.py part, the trailing comment dropped
    (`needs` is the text of a `# needs:` comment, else None)."""
    lines = (README.read_text() if text is None else text).splitlines()
    out, in_block, i = [], False, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_block = not in_block
            i += 1
            continue
        start = i
        while in_block and line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        if not in_block:
            continue
        command, _, comment = line.partition(" #")
        comment = "#" + comment if comment else ""
        for part in command.split("&&"):
            words = part.split()
            if len(words) >= 2 and words[0].endswith("python") and words[1] in ("train.py", "eval.py"):
                needs = comment[len(MARKER):].strip() if comment.startswith(MARKER) else None
                out.append((start + 1, " ".join(words), needs))
    return out


def test_readme_command_extraction():
    """Extraction on a hand-written README fragment: continuations, chains, comments, the marker, prose ignored."""
    text = "\n".join([
        "Run `python train.py stage=x` (prose, not a block).",
        "```bash",
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python train.py",
        "python train.py model=a \\",
        "  stage=b      # a comment",
        "python -m data.prepare manifest --out x",
        "python eval.py ckpt=/models/x.ckpt   # needs: your checkpoint",
        "```",
    ])
    assert readme_commands(text) == [(3, ".venv/bin/python train.py", None),
                                     (4, "python train.py model=a stage=b", None),
                                     (7, "python eval.py ckpt=/models/x.ckpt", "your checkpoint")]


def test_readme_documents_the_marker_and_runs_most_lines():
    commands = readme_commands()
    assert MARKER in README.read_text().replace("`", "")  # the README explains the marker
    run = [c for c in commands if c[2] is None]
    assert len(commands) >= 20 and 2 * len(run) > len(commands), commands  # most lines run in CI
    for line, command, needs in commands:
        if needs is None:
            assert not re.search(r"/models/|/data/", command), f"README:{line} uses your files: mark it `{MARKER}`"


def newest(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no {pattern} under {root}: the README line that trains it must come first")
    return found[-1]


def prepare(command: str, work: Path) -> list[str]:
    """The argv to run for a README command in working folder `work` (placeholders filled, CI sizes)."""
    for readme_value, ci_value in CI_SIZE.items():
        command = command.replace(readme_value, ci_value)
    if "resume_dir=logs/train/runs/<t>" in command:
        run_dir = newest(work / "logs", "**/checkpoints/multimodal/last.ckpt").parents[2]
        command = command.replace("resume_dir=logs/train/runs/<t>", f"resume_dir={run_dir}")
    if "<that ckpt>" in command:
        command = command.replace("<that ckpt>", str(newest(work / "logs", "**/checkpoints/streaming/last.ckpt")))
    for token in re.findall(r"\S*<[^>]+>\S*", command):
        match = re.fullmatch(r"(\w+=)?\S*/checkpoints/([\w-]+)/last\.ckpt", token)
        assert match, f"no rule fills the placeholder in {token!r}"
        found = newest(work / "logs", f"**/checkpoints/{match.group(2)}/last.ckpt")
        command = command.replace(token, f"{match.group(1) or ''}{found}")
    words = shlex.split(command)
    script = words[1]
    argv = [sys.executable, str(ROOT / script), *words[2:]]
    if script == "train.py":
        argv += [] if "debug=fast" in words else ["debug=fast"]
    elif "mode=session" not in words:
        argv.append(EVAL_ROWS)
    return argv


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    t = np.arange(3 * 16000) / 16000  # my_recording.wav: 3 s, a tone in noise
    sf.write(folder / "my_recording.wav", 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0)
             .standard_normal(t.size), 16000)
    return folder


COMMANDS = readme_commands()


@pytest.mark.slow
@pytest.mark.parametrize("line,command,needs", COMMANDS, ids=[f"README:{c[0]}" for c in COMMANDS])
def test_readme_command_runs(work, line, command, needs):
    if needs is not None:
        pytest.skip(f"needs {needs}")
    argv = prepare(command, work)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    start = time.time()
    res = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    print(f"README:{line} {time.time() - start:.0f} s: {' '.join(argv[1:])}")
    assert res.returncode == 0, f"README:{line} `{command}` failed:\n{res.stderr[-4000:]}"
