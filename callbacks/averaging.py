"""Exponential moving average of the weights (EMA), on Lightning's `WeightAveraging` callback.

`EMAWeightAveraging(decay, start_step)`: after every optimizer step from `start_step` on, the averaged copy
becomes decay * average + (1 - decay) * weights (`torch.optim.swa_utils.get_ema_multi_avg_fn`). Lightning swaps the
average in for validation and saves it as the checkpoint's `state_dict` (the raw weights under
`current_model_state`), so checkpoint selection by a validation metric selects averaged weights.

One fix on top of Lightning 2.6: `trainer.test(ckpt_path=best)` after fit calls the callback's `on_load_checkpoint`,
which (its average model still alive from fit) reloads `current_model_state`: the test would score the RAW weights of
the selected epoch, not the averaged ones that were validated and selected. Outside fitting this subclass keeps the
checkpoint's `state_dict` (the average), which Lightning has already loaded by then.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class EMAWeightAveraging(WeightAveraging):
    def __init__(self, decay: float = 0.999, start_step: int = 0, **kwargs: Any) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if start_step < 0:
            raise ValueError(f"EMA start_step must be >= 0, got {start_step}")
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay), **kwargs)
        self.decay, self.start_step = float(decay), int(start_step)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self.start_step

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # validate / test / predict: the checkpoint's state_dict (the average) is what they score
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
