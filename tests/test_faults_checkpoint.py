"""Issue 13 (part A): checkpoints are data, never code; checkpoint writes are atomic; resume.

- A checkpoint whose stored run config (`omni_config`) names a `_target_` outside the families' allow-list is
  refused by every entry point that reads checkpoints (eval, session replay, the four converters, Mini-Omni3
  scoring, init_from, resume), and the payload never runs (its marker file is never created).
- URLs for ckpt_path / init_from are refused; pickled objects are refused; a `.pt2` scorer model is refused and an
  ONNX one is run by onnxruntime.
- A SIGKILL in the middle of a checkpoint write, with $TMPDIR on another filesystem, leaves the previous checkpoint
  intact (and, as a negative control, does not with Lightning's own writer); a truncated checkpoint's resume error
  names the file; `ckpt_path=last` picks the newest complete checkpoint of the run folder.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, compose_cfg

torch.set_num_threads(1)


# -- checkpoints with a payload in their stored config ------------------------------------------------------------
@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """(state_dict, run config) of a tiny Mini-Omni checkpoint exactly as train.py writes it (untrained)."""
    from omni.train import build_module

    folder = tmp_path_factory.mktemp("genuine")
    cfg = compose_cfg(["model.cfg.whisper.max_source_positions=150"], folder)
    torch.manual_seed(0)
    module = build_module(cfg, init_from=None)
    state = {f"model.{k}": v for k, v in module.model.state_dict().items()}
    return state, OmegaConf.to_container(cfg, resolve=True)


def _open_payload(marker: Path) -> dict:
    return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}  # creates the marker file if it runs


def _touch_payload(marker: Path) -> dict:
    """A chain Hydra 1.3's own blocklist (os.system, subprocess.*, ...) lets through: Path.touch(Path(marker))."""
    return {"_target_": "pathlib.Path.touch", "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}]}


PLACEMENTS = {
    # the whole model section replaced (the old code instantiated it directly)
    "model": lambda run, marker: run.__setitem__("model", _open_payload(marker)),
    # a nested node inside the genuine model config (hydra instantiates nested `_target_`s recursively)
    "model.cfg.backbone": lambda run, marker: run["model"]["cfg"].__setitem__("backbone", _touch_payload(marker)),
    # the data section (eval / scoring rebuild the DataModule from it after the model)
    "data.tokens": lambda run, marker: run["data"].__setitem__("tokens", _open_payload(marker)),
}


@pytest.fixture(params=sorted(PLACEMENTS))
def payload(request, genuine, tmp_path):
    """-> (checkpoint path, marker path): a weights-only-loadable checkpoint whose stored config carries a payload."""
    state, run_cfg = genuine
    run_cfg = copy.deepcopy(run_cfg)
    marker = tmp_path / "PAYLOAD_RAN"
    PLACEMENTS[request.param](run_cfg, marker)
    path = tmp_path / "payload.ckpt"
    torch.save({"state_dict": state, "omni_config": run_cfg, "omni_stage": "multimodal"}, path)
    torch.load(path, weights_only=True)  # passes the weights-only check: the danger is the config, not the pickle
    return path, marker


def _eval(ckpt, tmp_path, *extra):
    from omni.evaluate import evaluate
    from tests.test_train import compose_eval

    evaluate(compose_eval(tmp_path / "eval", f"ckpt={ckpt}", "tasks=[asr]", "max_examples=1",
                          "sampling.max_new_tokens=4", "speech=null", "report=false", *extra))


def _resume(ckpt, tmp_path):
    from omni.train import train

    cfg = compose_cfg(["debug=fast", "logger=csv", "data.max_tokens=1200", "trainer.max_steps=1",
                       f"ckpt_path={ckpt}"], tmp_path / "run")
    train(cfg)


def _init_from(ckpt, tmp_path):
    from omni.train import build_module

    build_module(compose_cfg(["model.cfg.whisper.max_source_positions=150"], tmp_path / "run"), init_from=str(ckpt))


def _mini_omni_convert(direction):
    def run(ckpt, tmp_path):
        from omni.mini_omni.convert import main

        main([direction, str(ckpt), str(tmp_path / "out")])
    return run


def _minimind_convert(command):
    def run(ckpt, tmp_path):
        from omni.minimind_o.convert import main

        main([command, str(ckpt), str(tmp_path / "out")])
    return run


def _scoring(ckpt, tmp_path):
    from omni.mini_omni3.scoring import main

    main([str(ckpt)])


def _replay(ckpt, tmp_path):
    from omni.mini_omni3.replay import replay_file

    replay_file(str(ckpt), str(tmp_path / "any.wav"))


ENTRY_POINTS = {
    "eval": _eval,
    "eval_session": lambda ckpt, tmp_path: _eval(ckpt, tmp_path, "mode=session", f"wav={tmp_path / 'any.wav'}"),
    "replay": _replay,
    "ckpt-to-hf": _mini_omni_convert("ckpt-to-hf"),
    "ckpt-to-litgpt": _mini_omni_convert("ckpt-to-litgpt"),
    "minimind to-pth": _minimind_convert("to-pth"),
    "minimind to-hf": _minimind_convert("to-hf"),
    "mini_omni3 scoring": _scoring,
    "init_from": _init_from,
    "resume": _resume,
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_payload_in_stored_config_is_refused_by_every_entry_point(entry, payload, tmp_path):
    from omni.families import StoredConfigError

    ckpt, marker = payload
    try:
        ENTRY_POINTS[entry](ckpt, tmp_path)
        err = None
    except Exception as e:  # noqa: BLE001 - checked just below, after the marker
        err = e
    assert not marker.exists(), f"the payload ran ({err!r})"
    assert isinstance(err, StoredConfigError), repr(err)
    msg = str(err)
    assert str(ckpt) in msg and "refused" in msg, msg
    assert ("builtins.open" in msg or "pathlib.Path.touch" in msg), msg  # names the refused target
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "out").exists(), "a converter wrote output from a refused checkpoint"


@pytest.mark.slow  # ~15 s: a real `python eval.py` process
def test_eval_cli_refuses_payload_and_runs_nothing(genuine, tmp_path):
    """The real `python eval.py` process (Hydra entry point), not only its library side."""
    state, run_cfg = genuine
    run_cfg = copy.deepcopy(run_cfg)
    marker = tmp_path / "PAYLOAD_RAN"
    run_cfg["model"] = _touch_payload(marker)
    ckpt = tmp_path / "payload.ckpt"
    torch.save({"state_dict": state, "omni_config": run_cfg}, ckpt)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={ckpt}", f"paths.log_dir={tmp_path}",
                           "speech=null", "tasks=[asr]"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "pathlib.Path.touch" in proc.stderr and "refused" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists(), "the payload ran"


def test_stored_config_allow_list_matches_the_shipped_configs():
    """Every `_target_` the shipped model / data configs use is allow-listed (a new family that forgets to register
    fails here), each allow-listed name is a class of the project, and nothing else is allowed."""
    import importlib

    from omni.families import STORED_TARGETS

    used = {"model": set(), "data": set()}
    for section in used:
        for f in sorted((ROOT / "conf" / section).glob("*.yaml")):
            node = OmegaConf.load(f)
            node = node.model if section == "model" and "model" in node else node
            for key in ("_target_",):
                if key in node:
                    used[section].add(node[key])
            if "cfg" in node and "_target_" in node.cfg:
                used[section].add(node.cfg._target_)
    assert used["model"] and used["data"]
    for section, names in STORED_TARGETS.items():
        assert used[section] <= set(names), (section, used[section] - set(names))
        for name in names:
            module, _, attr = name.rpartition(".")
            assert module.split(".")[0] in ("omni", "data") and isinstance(getattr(importlib.import_module(module),
                                                                                    attr), type), name


@pytest.mark.parametrize("node, where", [
    ({"_target_": "omni.train.train", "cfg": {}}, "model._target_"),  # a project function, but not a model class
    ({"_target_": "omni.mini_omni.model.MiniOmni", "cfg": {"_target_": "subprocess.run", "args": ["true"]}},
     "model.cfg._target_"),
    ({"_target_": "omni.mini_omni.model.MiniOmni", "cfg": {"items": [{"_target_": "os.getcwd"}]}},
     "model.cfg.items[0]._target_"),
    ({"_target_": "omni.mini_omni.model.MiniOmni", "cfg": {"tokenizer_path": "${omni.package_dir:os}"}},
     "model.cfg.tokenizer_path"),  # an interpolation: the resolver would import a module
])
def test_stored_config_check_names_the_key_and_builds_nothing(node, where):
    from omni.families import StoredConfigError, model_from_stored_config

    with pytest.raises(StoredConfigError, match=re.escape(f"src.ckpt: stored config `{where}`")):
        model_from_stored_config({"model": node}, "src.ckpt")


def test_allow_listed_data_class_cannot_stand_in_for_the_model():
    from omni.families import StoredConfigError, model_from_stored_config

    with pytest.raises(StoredConfigError, match="is not one of the project's model classes"):
        model_from_stored_config({"model": {"_target_": "data.datamodule.OmniDataModule"}}, "x.ckpt")


# -- no unpickling, no URLs -----------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_in_a_checkpoint_is_refused_naming_the_file(tmp_path):
    from omni.checkpoint import CheckpointError, read_checkpoint
    from omni.checkpoint_io import SafeCheckpointIO

    marker = tmp_path / "PICKLE_RAN"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match=rf"{path}: holds pickled objects .* refused"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused"):
        SafeCheckpointIO().load_checkpoint(path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x.ckpt", "https://example.invalid/last.ckpt",
                                 "s3://bucket/run/last.ckpt"])
def test_url_checkpoints_are_refused(url, tmp_path):
    from omni.checkpoint import CheckpointError, load_model_weights, read_checkpoint
    from omni.checkpoint_io import SafeCheckpointIO
    from omni.train import resolve_ckpt_path

    cfg = compose_cfg([f"ckpt_path={url}"], tmp_path)
    with pytest.raises(CheckpointError, match=rf"ckpt_path={url}: a URL is refused"):
        resolve_ckpt_path(cfg)
    with pytest.raises(CheckpointError, match=rf"init_from={url}: a URL is refused"):
        load_model_weights(torch.nn.Linear(1, 1), url)
    with pytest.raises(CheckpointError, match="a URL is refused"):
        read_checkpoint(url)
    with pytest.raises(CheckpointError, match="a URL is refused"):
        SafeCheckpointIO().load_checkpoint(url)


# -- scorer model files -----------------------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _f(num: int, value) -> bytes:
    """One protobuf field: an int -> varint (wire type 0); bytes / str -> length-delimited (wire type 2)."""
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    value = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def onnx_model(path: Path, nodes: list[tuple[str, list[str], list[str], dict[str, int]]],
               constants: dict[str, float], inp: str = "wav", out: str = "mos") -> Path:
    """A hand-encoded ONNX ModelProto (ir 8, opset 13; field numbers from onnx.proto) so tests need no `onnx`
    package: `nodes` = (op_type, inputs, outputs, int attributes), `constants` = scalar float initializers."""
    def value_info(name, dims):  # ValueInfoProto{name, type: TypeProto{tensor_type{elem_type FLOAT, shape}}}
        shape = b"".join(_f(1, _f(1, d) if isinstance(d, int) else _f(2, d)) for d in dims)
        tensor = _f(1, 1) + (_f(2, shape) if dims else b"")
        return _f(1, name) + _f(2, _f(1, tensor))

    graph = b""
    for i, (op, ins, outs, attrs) in enumerate(nodes):
        node = b"".join(_f(1, x) for x in ins) + b"".join(_f(2, x) for x in outs) + _f(3, f"n{i}") + _f(4, op)
        node += b"".join(_f(5, _f(1, k) + _f(3, v) + _f(20, 2)) for k, v in attrs.items())  # AttributeProto INT
        graph += _f(1, node)
    graph += _f(2, "g")
    for name, value in constants.items():  # TensorProto{data_type FLOAT, float_data packed, name}; scalar: no dims
        graph += _f(5, _f(2, 1) + _f(4, struct.pack("<f", value)) + _f(8, name))
    graph += _f(11, value_info(inp, [1, "n"])) + _f(12, value_info(out, []))
    path.write_bytes(_f(1, 8) + _f(2, "omni-test") + _f(7, graph) + _f(8, _f(1, "") + _f(2, 13)))
    return path


def rms_mos_onnx(path: Path) -> Path:
    """mos = 1 + 4 * sqrt(mean(wav^2)): a stand-in MOS predictor with a known answer."""
    return onnx_model(path, [("Mul", ["wav", "wav"], ["sq"], {}), ("ReduceMean", ["sq"], ["ms"], {"keepdims": 0}),
                             ("Sqrt", ["ms"], ["rms"], {}), ("Mul", ["rms", "four"], ["s"], {}),
                             ("Add", ["s", "one"], ["mos"], {})], {"four": 4.0, "one": 1.0})


def test_pt2_scorer_model_is_refused_and_onnx_runs(tmp_path):
    from callbacks.speech import build_quality

    pt2 = tmp_path / "utmos.pt2"
    pt2.write_bytes(b"PK\x03\x04 whatever")
    with pytest.raises(ValueError, match=r"utmos\.pt2.*refused.*unpickles"):
        build_quality(str(pt2))
    mos = build_quality(str(rms_mos_onnx(tmp_path / "utmos.onnx")))
    wav = np.array([0.6, -0.8] * 800, dtype=np.float32)  # rms = sqrt((0.36 + 0.64) / 2) = sqrt(0.5)
    assert mos.score(wav, 16000)["mos"] == pytest.approx(1.0 + 4.0 * 0.5 ** 0.5, rel=1e-5)
    quiet = np.full(1600, 0.25, dtype=np.float32)  # rms 0.25 -> 2.0
    assert mos.score(quiet, 16000)["mos"] == pytest.approx(2.0, rel=1e-5)
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"broken\.onnx is not a valid ONNX model"):
        build_quality(str(bad)).score(quiet, 16000)


# -- atomic writes, kills, truncation, ckpt_path=last ----------------------------------------------------------------
KILL_SCRIPT = textwrap.dedent("""
    import io, os, shutil, signal, sys
    import torch

    mode, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def die():  # SIGKILL: no handler, no cleanup, exactly like an OOM kill or a preempted node
        os.kill(os.getpid(), signal.SIGKILL)

    class DyingFile:  # passes writes to a real file; the process is killed once half of the bytes are on disk
        def __init__(self, f):
            self.f, self.n = f, 0
        def write(self, b):
            if self.n + len(b) >= n * 2:
                k = max(n * 2 - self.n, 0)
                self.f.write(bytes(b)[:k]); self.f.flush(); os.fsync(self.f.fileno()); die()
            self.n += len(b)
            return self.f.write(b)
        def flush(self):
            self.f.flush()

    real_save = torch.save
    def save(obj, f, *a, **k):  # writes into a real file are the ones that die half-way
        return real_save(obj, f if isinstance(f, io.BytesIO) else DyingFile(f), *a, **k)
    torch.save = save

    real_copy = shutil.copyfileobj
    def copyfileobj(src, dst, length=0):  # Lightning's fsspec transaction: a copy from $TMPDIR (other filesystem)
        dst.write(src.read(n * 2)); dst.flush(); os.fsync(dst.fileno()); die()
    shutil.copyfileobj = copyfileobj
    shutil._USE_CP_SENDFILE = False  # so the cross-device copy goes through copyfileobj
    if hasattr(shutil, "_USE_CP_COPY_FILE_RANGE"):
        shutil._USE_CP_COPY_FILE_RANGE = False

    if mode == "safe":
        from omni.checkpoint_io import SafeCheckpointIO as IO
    else:
        from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO as IO
    IO().save_checkpoint({"state_dict": {"w": torch.full((n,), 2.0)}, "global_step": 2}, path)
    print("write finished without being killed")
""")


@pytest.fixture
def other_fs_tmpdir(tmp_path):
    """A $TMPDIR on another filesystem than tmp_path where one exists (/dev/shm is a tmpfs), else a sibling dir."""
    base = Path("/dev/shm")
    if base.is_dir() and os.access(base, os.W_OK) and base.stat().st_dev != tmp_path.stat().st_dev:
        d = base / f"omni-test-{uuid.uuid4().hex}"
    else:
        d = tmp_path / "othertmp"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow  # ~12 s each: the subprocess imports Lightning
@pytest.mark.parametrize("mode", ["safe", "lightning"])
def test_sigkill_during_checkpoint_write_keeps_the_previous_one(mode, tmp_path, other_fs_tmpdir):
    from omni.checkpoint import atomic_save, find_last_checkpoint

    n = 1 << 20  # 4 MiB of float32
    folder = tmp_path / "checkpoints" / "multimodal"
    last = folder / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.full((n,), 1.0)}, "global_step": 1}, last)
    before = last.read_bytes()
    env = {**os.environ, "TMPDIR": str(other_fs_tmpdir), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, mode, str(last), str(n)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    cross_device = other_fs_tmpdir.stat().st_dev != tmp_path.stat().st_dev
    if mode == "safe":
        assert last.read_bytes() == before, "the previous checkpoint was damaged by a kill mid-write"
        ckpt = torch.load(last, weights_only=True)
        assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.full((n,), 1.0))
        leftovers = [p.name for p in folder.iterdir() if p.name != "last.ckpt"]
        assert leftovers and all(p.startswith(".last.ckpt.") and p.endswith(".tmp") for p in leftovers), leftovers
        assert not [p for p in other_fs_tmpdir.rglob("*") if p.is_file() and p.stat().st_size >= n], \
            "the checkpoint was written through $TMPDIR"
        assert find_last_checkpoint(folder) == last  # the half-written temporary file is ignored
        atomic_save({"state_dict": {"w": torch.zeros(2)}, "global_step": 3}, last)  # next save cleans it up
        assert [p.name for p in folder.iterdir()] == ["last.ckpt"]
        assert torch.load(last, weights_only=True)["global_step"] == 3
    elif cross_device:  # negative control: Lightning's writer (TMPDIR temp file, copied over) loses the old one
        assert last.read_bytes() != before and len(last.read_bytes()) < len(before)
    else:
        pytest.skip("no second filesystem for $TMPDIR here: the negative control needs a cross-device move")


def _ckpt_file(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.full((3,), float(step))}, "global_step": step}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_truncated_checkpoint_resume_error_names_the_file(tmp_path):
    from omni.checkpoint import CheckpointError
    from omni.train import resolve_ckpt_path

    good = _ckpt_file(tmp_path / "good.ckpt", 1, 1000.0)
    data = good.read_bytes()
    for name, content in (("truncated.ckpt", data[: len(data) // 2]), ("empty.ckpt", b"")):
        bad = tmp_path / name
        bad.write_bytes(content)
        cfg = compose_cfg([f"ckpt_path={bad}"], tmp_path)
        with pytest.raises(CheckpointError, match=rf"{bad} \({len(content)} bytes\) is truncated or corrupt"):
            resolve_ckpt_path(cfg)
    assert resolve_ckpt_path(compose_cfg([f"ckpt_path={good}"], tmp_path)) == str(good)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        resolve_ckpt_path(compose_cfg([f"ckpt_path={tmp_path / 'missing.ckpt'}"], tmp_path))


def test_truncated_checkpoint_through_lightning_loader_names_the_file(tmp_path):
    from omni.checkpoint import CheckpointError
    from omni.checkpoint_io import SafeCheckpointIO

    good = _ckpt_file(tmp_path / "good.ckpt", 1, 1000.0)
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{bad} .* is truncated or corrupt"):
        SafeCheckpointIO().load_checkpoint(bad)
    assert SafeCheckpointIO().load_checkpoint(good)["global_step"] == 1


def test_ckpt_path_last_picks_the_newest_complete_checkpoint_of_the_run_folder(tmp_path):
    from omni.train import resolve_ckpt_path

    run = tmp_path / "old_run"
    folder = run / "checkpoints" / "multimodal"  # <run>/checkpoints/<stage.name>/
    _ckpt_file(folder / "epoch000-step5.ckpt", 5, 1000.0)
    newest_complete = _ckpt_file(folder / "epoch001-step10.ckpt", 10, 2000.0)
    truncated = _ckpt_file(folder / "last.ckpt", 12, 3000.0)
    truncated.write_bytes(truncated.read_bytes()[:200])
    os.utime(truncated, (3000.0, 3000.0))
    (folder / ".last.ckpt.x1y2.tmp").write_bytes(b"half")  # an interrupted write's temporary file
    _ckpt_file(run / "checkpoints" / "other_stage" / "last.ckpt", 99, 4000.0)  # another stage: not looked at

    by_resume_dir = compose_cfg(["ckpt_path=last", f"resume_dir={run}"], tmp_path / "new_run")
    assert resolve_ckpt_path(by_resume_dir) == str(newest_complete)
    by_output_dir = compose_cfg(["ckpt_path=last"], run)  # the run folder itself (paths.output_dir)
    assert resolve_ckpt_path(by_output_dir) == str(newest_complete)

    good_last = _ckpt_file(folder / "last.ckpt", 12, 3000.0)  # once last.ckpt is complete it wins (newest)
    assert resolve_ckpt_path(by_resume_dir) == str(good_last)
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no checkpoint folder .*new_run"):
        resolve_ckpt_path(compose_cfg(["ckpt_path=last"], tmp_path / "new_run"))
    for f in folder.glob("*.ckpt"):
        f.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint in .*multimodal \(incomplete: .*epoch000-step5.ckpt"):
        resolve_ckpt_path(by_resume_dir)


def test_training_checkpoints_go_through_the_atomic_writer(tmp_path, monkeypatch):
    """train.py installs SafeCheckpointIO: every .ckpt of a run is written by atomic_save, none via $TMPDIR, and the
    run's checkpoints load weights-only."""
    import omni.checkpoint_io as io_mod
    from omni.train import train

    written = []
    real = io_mod.atomic_save

    def spy(obj, path):
        written.append(Path(path))
        return real(obj, path)

    monkeypatch.setattr(io_mod, "atomic_save", spy)
    metrics = train(compose_cfg(["debug=fast", "logger=csv", "data.max_tokens=1200", "test=false",
                                 "trainer.max_steps=2"], tmp_path))
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts and set(ckpts) <= set(written), (ckpts, written)
    assert Path(metrics["last_checkpoint"]) in written
    assert not list(tmp_path.rglob(".*.tmp"))
