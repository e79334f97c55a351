"""Train-time augmentation of the audio encoder's log-mel input, for robustness to voices never heard in training.

`MelAugmentCallback` rewrites `batch["audio_mels"]` (B, n_mels, F) in `on_train_batch_start` (validation, test and
generation never see it):
- vocal-tract-length perturbation (Jaitly & Hinton 2013): each item's mel axis is warped by a factor drawn from
  [1 - warp, 1 + warp] (linear interpolation between bins), as if the speaker's formants were shifted;
- random spectral tilt / EQ: each item gets a smooth random curve over the mel axis (a tilt plus two cosines,
  peak amplitude up to `eq` log-mel units; 0.1 is about 4 dB), as different voices and channels colour speech;
- band limiting with probability `band_limit_p`: the bins above a random cut-off in [band_limit_min, n_mels) are set
  to the item's floor, as telephone-band / low-rate voices look;
- SpecAugment (Park et al. 2019) masks: `freq_masks` bands of up to `freq_width` bins and `time_masks` spans of up
  to `time_width` frames, filled with the item's floor value;
- tempo perturbation (as speed perturbation, Ko et al. 2015, on the time axis only): each item's frames are
  resampled by a factor drawn from [1 - tempo, 1 + tempo] (frame f reads source frame f * factor, linear
  interpolation; frames past the window read the floor), as voices speak at different rates. Drawn after every
  other option, so tempo 0 (the default) leaves the other draws as they were.
Deterministic in (seed, global step)."""
from __future__ import annotations

import torch
from lightning import Callback


def augment_mels(mels: torch.Tensor, gen: torch.Generator, warp: float = 0.1, eq: float = 0.0,
                 band_limit_p: float = 0.3,
                 band_limit_min: int = 48, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2,
                 time_width: int = 10, tempo: float = 0.0) -> torch.Tensor:
    """(B, n_mels, F) log-mel -> augmented copy (see the module docstring)."""
    B, M, F = mels.shape
    out = mels.clone()
    floor = mels.amin(dim=(1, 2), keepdim=True)  # (B, 1, 1) the item's silence level
    if warp > 0:
        alpha = 1.0 + (torch.rand(B, 1, generator=gen) * 2 - 1) * warp  # (B, 1)
        src = (torch.arange(M, dtype=torch.float32).view(1, M) / alpha).clamp(0, M - 1)  # (B, M) source bin
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=M - 1)
        w = (src - lo.float()).unsqueeze(-1).to(mels.dtype)  # (B, M, 1)
        take = lambda idx: torch.gather(mels, 1, idx.unsqueeze(-1).expand(B, M, F).to(mels.device))  # noqa: E731
        out = take(lo) * (1 - w.to(mels.device)) + take(hi) * w.to(mels.device)
    if eq > 0:
        x = torch.linspace(0, 1, M).view(1, M)
        coef = (torch.rand(B, 3, generator=gen) * 2 - 1) * eq / 3  # tilt, cos(pi x), cos(2 pi x)
        curve = coef[:, :1] * (2 * x - 1) + coef[:, 1:2] * torch.cos(torch.pi * x) + \
            coef[:, 2:] * torch.cos(2 * torch.pi * x)  # (B, M), |curve| <= eq
        out = out + curve.unsqueeze(-1).to(out.device, out.dtype)
    bins = torch.arange(M).view(1, M, 1)
    frames = torch.arange(F).view(1, 1, F)
    mask = torch.zeros(B, M, F, dtype=torch.bool)
    if band_limit_p > 0:
        cut = torch.randint(band_limit_min, M, (B, 1, 1), generator=gen)
        apply = torch.rand(B, 1, 1, generator=gen) < band_limit_p
        mask |= apply & (bins >= cut)
    for _ in range(freq_masks):
        width = torch.randint(0, freq_width + 1, (B, 1, 1), generator=gen)
        start = (torch.rand(B, 1, 1, generator=gen) * (M - width)).long()
        mask |= (bins >= start) & (bins < start + width)
    for _ in range(time_masks):
        width = torch.randint(0, time_width + 1, (B, 1, 1), generator=gen)
        start = (torch.rand(B, 1, 1, generator=gen) * (F - width)).long()
        mask |= (frames >= start) & (frames < start + width)
    if tempo > 0:
        rate = 1.0 + (torch.rand(B, 1, generator=gen) * 2 - 1) * tempo  # (B, 1) source frames per output frame
        src = torch.arange(F, dtype=torch.float32).view(1, F) * rate  # (B, F)
        inside = (src <= F - 1).view(B, 1, F).to(mels.device)
        lo = src.clamp(max=F - 1).floor().long()
        hi = (lo + 1).clamp(max=F - 1)
        w = (src.clamp(max=F - 1) - lo.float()).view(B, 1, F).to(mels.device, mels.dtype)
        take = lambda idx: torch.gather(out, 2, idx.view(B, 1, F).expand(B, M, F).to(mels.device))  # noqa: E731
        out = torch.where(inside, take(lo) * (1 - w) + take(hi) * w, floor.expand_as(out))
    return torch.where(mask.to(mels.device), floor.expand_as(out), out)


class MelAugmentCallback(Callback):
    def __init__(self, seed: int = 0, **options) -> None:
        self.seed = seed
        self.options = options
        augment_mels(torch.zeros(1, 80, 20), torch.Generator().manual_seed(0), **options)  # bad option: fail now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        mels = batch.get("audio_mels") if isinstance(batch, dict) else None
        if mels is not None and mels.numel():
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + trainer.global_step)
            batch["audio_mels"] = augment_mels(mels, gen, **self.options)
