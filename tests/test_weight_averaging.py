"""callbacks.averaging.EMAWeightAveraging: the EMA of the weights is what validation scores, what the checkpoint holds
and what `trainer.test(ckpt_path=best)` after fit scores (Lightning's own WeightAveraging tests the raw weights there:
the negative control)."""
import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from callbacks.averaging import EMAWeightAveraging

torch.set_num_threads(1)


class Walker(LightningModule):
    """One weight w = 0 with loss w: SGD lr 1 moves it to -1, -2, -3 after steps 1, 2, 3."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return self.w * 1.0

    def validation_step(self, batch, batch_idx):
        self.log("val/w", self.w.detach())

    def test_step(self, batch, batch_idx):
        self.log("test/w", self.w.detach())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def _fit_and_test(averaging, tmp_path):
    loader = torch.utils.data.DataLoader(torch.zeros(3, 1), batch_size=1)  # 3 steps, 1 epoch
    model = Walker()
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor="val/w", mode="min", save_top_k=1)
    trainer = Trainer(max_epochs=1, callbacks=[averaging, ckpt], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    trainer.fit(model, loader, loader)
    val = float(trainer.callback_metrics["val/w"])
    saved = torch.load(ckpt.best_model_path, weights_only=True)
    test = trainer.test(model, loader, ckpt_path=ckpt.best_model_path, weights_only=True)[0]["test/w"]
    return val, float(saved["state_dict"]["w"]), float(test)


def test_ema_is_validated_saved_and_tested(tmp_path):
    # by hand, decay 0.5: the first update copies w = -1; then 0.5 * -1 + 0.5 * -2 = -1.5; 0.5 * -1.5 + 0.5 * -3 = -2.25
    val, saved, test = _fit_and_test(EMAWeightAveraging(decay=0.5), tmp_path / "ema")
    assert (val, saved, test) == pytest.approx((-2.25, -2.25, -2.25))
    # start_step 1: steps 2 and 3 only: -2, then 0.5 * -2 + 0.5 * -3 = -2.5
    assert _fit_and_test(EMAWeightAveraging(decay=0.5, start_step=1), tmp_path / "late")[2] == pytest.approx(-2.5)


def test_plain_weight_averaging_tests_the_raw_weights(tmp_path):
    """Negative control: Lightning 2.6's WeightAveraging validates and saves the average but its on_load_checkpoint
    puts the raw weights (-3) back for the test: the fix above is needed."""
    val, saved, test = _fit_and_test(WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(0.5)), tmp_path)
    assert (val, saved) == pytest.approx((-2.25, -2.25)) and test == pytest.approx(-3.0)


def test_bad_decay_fails_naming_it():
    with pytest.raises(ValueError, match="decay"):
        EMAWeightAveraging(decay=1.0)
