"""Lightning CheckpointIO for every checkpoint train.py writes or resumes from (omni.train installs it):

- save: `omni.checkpoint.atomic_save` (temporary file next to the checkpoint, fsync, rename; $TMPDIR is never
  used, so a kill mid-write keeps the previous checkpoint);
- load (`ckpt_path=`, the test run's best checkpoint): local files only, `torch.load(weights_only=True)`, a
  truncated / corrupt file fails naming it, and the stored run config passes the families' allow-list."""
from __future__ import annotations

from typing import Any, Callable, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from omni.checkpoint import CheckpointError, atomic_save, check_checkpoint_config, load_torch_file


class SafeCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointError(f"{path}: loading with weights_only=False (unpickling code) is refused")
        ckpt = load_torch_file(path, map_location=map_location, what="ckpt_path")
        check_checkpoint_config(ckpt, path)
        return ckpt


def install(trainer) -> None:
    """Use SafeCheckpointIO wherever the strategy would use Lightning's plain TorchCheckpointIO (single device,
    DDP, FSDP full state dicts); strategies with their own writers (DeepSpeed) are left as they are."""
    strategy = trainer.strategy
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = SafeCheckpointIO()
