"""The learning check: `experiment=learning_check` trains the tiny Mini-Omni on the bundled sample within 10 minutes
and transcribes the held-out voices of the test split with CER <= 0.25 (slow; CI runs it; measured 0.221 in ~8.5 min
on 2 CPU cores under load, omni/DESIGN.md #37, #38, #45, #46, conf/experiment/learning_check.yaml). Fast part: the
log-mel augmentation it trains with."""
import time

import pytest
import torch

from callbacks.augment import augment_mels

TARGET_CER = 0.25
OFF = dict(warp=0.0, band_limit_p=0.0, freq_masks=0, time_masks=0)


def _mels():
    return torch.linspace(-1, 1, 2 * 80 * 50).view(2, 80, 50)


def test_augmentation_off_is_identity_and_seeded():
    mels = _mels()
    assert torch.equal(augment_mels(mels, torch.Generator().manual_seed(0), **OFF), mels)
    a = augment_mels(mels, torch.Generator().manual_seed(3))
    b = augment_mels(mels, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == mels.shape and not torch.equal(a, mels)


def test_band_limit_and_masks_fill_with_the_item_floor():
    mels = _mels()
    floor = mels.amin(dim=(1, 2), keepdim=True)
    out = augment_mels(mels, torch.Generator().manual_seed(0), **{**OFF, "band_limit_p": 1.0, "band_limit_min": 60})
    assert torch.equal(out[:, 79], floor[:, 0].expand(2, 50)) and torch.equal(out[:, :60], mels[:, :60])
    out = augment_mels(mels, torch.Generator().manual_seed(1), **{**OFF, "time_masks": 1, "time_width": 5})
    changed = (out != mels).any(dim=1)  # (B, F) frames touched
    assert int(changed.sum(dim=1).max()) <= 5 and bool((out[changed.unsqueeze(1).expand_as(out)] ==
                                                        floor.expand_as(out)[changed.unsqueeze(1).expand_as(out)]).all())


def test_vocal_tract_warp_moves_energy_along_the_mel_axis():
    mels = torch.full((1, 80, 4), -1.0)
    mels[:, 40] = 1.0  # one bright band
    for seed in range(4):
        alpha = 1 + (float(torch.rand(1, 1, generator=torch.Generator().manual_seed(seed))) * 2 - 1) * 0.2
        out = augment_mels(mels, torch.Generator().manual_seed(seed), **{**OFF, "warp": 0.2})
        peak = int(out[0, :, 0].argmax())  # bin b reads source bin b / alpha: the band moves to ~40 * alpha
        assert abs(peak - 40 * alpha) <= 1.0 and float(out.max()) > 0.4, (seed, alpha, peak)


def test_tempo_moves_frames_along_the_time_axis():
    mels = torch.full((1, 80, 60), -1.0)
    mels[:, :, 20] = 1.0  # one bright frame
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        rate = 1 + (float(torch.rand(1, 1, generator=g)) * 2 - 1) * 0.2  # the only draw with every other option off
        out = augment_mels(mels, torch.Generator().manual_seed(seed), **{**OFF, "tempo": 0.2})
        peak = int(out[0, 0].argmax())  # frame f reads source frame f * rate: the frame moves to ~20 / rate
        assert abs(peak - 20 / rate) <= 1.0 and float(out.max()) > 0.4, (seed, rate, peak)
        assert float(out[0, 0, 59]) == -1.0  # past the source (rate > 1) or silence: the floor


def test_text_metrics_score_the_weight_average(tmp_path):
    """Lightning runs on_validation_epoch_end in callback-list order and the EMA callback swaps the raw weights back
    in its own: the text metrics (and so the checkpoint selection by val/cer_asr) must come before it."""
    from callbacks.averaging import EMAWeightAveraging
    from callbacks.text_metrics import TextMetricsCallback
    from omni.train import instantiate_section
    from tests.conftest import compose_cfg

    kinds = [type(c) for c in instantiate_section(compose_cfg(["experiment=learning_check"], tmp_path).callbacks)]
    assert kinds.index(TextMetricsCallback) < kinds.index(EMAWeightAveraging), kinds


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_learning_check_reaches_cer_on_held_out_voices(tmp_path):
    from omni.train import train
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["experiment=learning_check"], tmp_path)
    t0 = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - t0
    print(f"learning check: test/cer_asr={metrics['test/cer_asr']:.3f} test/wer_asr={metrics['test/wer_asr']:.3f} "
          f"in {seconds:.0f} s")
    assert seconds < 600
    assert metrics["test/cer_asr"] <= TARGET_CER, metrics  # held-out voices (the default 15-epoch run: CER ~8)
