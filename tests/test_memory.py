"""Training memory options (omni/memory.py): activation checkpointing of every family's blocks, glibc's mmap
threshold, and their config checks."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import hydra
import pytest
import torch

from omni.distributed import decoder_layer_classes
from omni.memory import checkpoint_blocks, configure_memory
from tests.conftest import compose_cfg

# one stage per family: each selects its family's tiny model and bundled sample
STAGES = {"mini_omni": "multimodal", "minimind_o": "sft_t2a", "mini_omni3": "streaming"}


def _model_and_batch(stage: str, tmp_path):
    cfg = compose_cfg([f"stage={stage}"], tmp_path)
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model).train()
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    batch = next(b for b in dm.train_dataloader() if b["ids"])
    return model, batch


def _grads_and_saved_bytes(model, batch):
    storages: dict[int, int] = {}

    def pack(t):
        storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # dropout / sampling inside the forward: same draws for both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(batch)["loss"]
    loss.backward()
    params = dict(model.named_parameters())
    grads = {k: p.grad.clone() for k, p in params.items() if p.grad is not None}
    return float(loss), grads, sum(storages.values())


@pytest.mark.parametrize("family", sorted(STAGES))
def test_checkpointed_blocks_give_the_same_gradients_and_keep_fewer_activations(family, tmp_path):
    torch.set_num_threads(1)
    model, batch = _model_and_batch(STAGES[family], tmp_path)
    names = [k for k, _ in model.named_parameters()]
    keys = list(model.state_dict())
    loss0, grads0, saved0 = _grads_and_saved_bytes(model, batch)
    n_blocks = sum(isinstance(m, tuple(decoder_layer_classes())) for m in model.modules())
    assert checkpoint_blocks(model, decoder_layer_classes()) == n_blocks > 0
    forwards = [m.forward for m in model.modules() if isinstance(m, tuple(decoder_layer_classes()))]
    assert checkpoint_blocks(model, decoder_layer_classes()) == n_blocks  # again (fit, then test): still all of them
    assert [m.forward for m in model.modules() if isinstance(m, tuple(decoder_layer_classes()))] == forwards  # once
    loss1, grads1, saved1 = _grads_and_saved_bytes(model, batch)
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    assert grads1.keys() == grads0.keys()
    for k in grads0:
        torch.testing.assert_close(grads1[k], grads0[k], atol=1e-6, rtol=1e-5, msg=k)
    # the blocks' intermediates are no longer kept for backward (only their inputs are)
    assert saved1 < 0.8 * saved0, (saved0, saved1)
    # names unchanged: checkpoints, optimizer groups and stage patterns see the same model
    assert [k for k, _ in model.named_parameters()] == names and list(model.state_dict()) == keys
    # outside training (eval, no_grad: validation and generation) the blocks run unwrapped
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        out = model(batch)["loss"]
    assert torch.isfinite(out)


def test_activation_checkpointing_trains_through_the_entry_point(tmp_path):
    from omni.train import train

    cfg = compose_cfg(["stage=sft_t2a", "debug=fast", "activation_checkpointing=true"], tmp_path)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_checkpointing_twice_under_fsdp_fails_at_start(tmp_path):
    cfg = compose_cfg(["trainer=fsdp", "activation_checkpointing=true"], tmp_path)
    with pytest.raises(ValueError, match="activation_checkpointing=true and trainer.strategy"):
        configure_memory(cfg)


def test_mmap_threshold_must_be_positive(tmp_path):
    cfg = compose_cfg(["malloc_mmap_threshold_mib=0"], tmp_path)
    with pytest.raises(ValueError, match="malloc_mmap_threshold_mib=0"):
        configure_memory(cfg)


_RSS_AFTER_FREE = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {root!r})
    if sys.argv[1] != "default":
        from omni.memory import set_malloc_mmap_threshold
        set_malloc_mmap_threshold(float(sys.argv[1]))
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    base = rss()
    for _ in range(3):  # 16 MiB: first mmapped; glibc's dynamic threshold then rises and keeps the next on the heap
        t = torch.ones(4 * 2**20)
        del t
    print(rss() - base)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc only")
def test_fixed_mmap_threshold_returns_freed_tensors_to_the_os(tmp_path):
    """A 16 MiB tensor allocated and freed three times: with glibc's dynamic threshold the later ones live on the
    heap and stay resident after free (the control, >= 12 MiB kept); with a fixed 1 MiB threshold none is kept."""
    script = tmp_path / "rss.py"
    script.write_text(_RSS_AFTER_FREE.format(root=os.getcwd()))

    def kept(arg: str) -> float:
        out = subprocess.run([sys.executable, str(script), arg], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    assert kept("default") >= 12  # the negative control: the growth the option removes
    assert kept("1") < 4
