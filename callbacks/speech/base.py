"""What every speech scorer shares: lazy loading, explicit release, local-folder checks."""
from __future__ import annotations

import gc
import json
import os
from typing import Any

import numpy as np

from data.audio import resample, to_mono


class LazyScorer:
    """Loads its model on first use (`self.model`) and frees it on `release()`; usable as a context manager."""

    name = "scorer"

    def __init__(self) -> None:
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._load()
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> Any:  # pragma: no cover - every scorer implements it
        raise NotImplementedError

    def release(self) -> None:
        self._model = None
        gc.collect()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def prepare_wav(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Any (n,) or (n, ch) waveform -> (m,) float32 mono at `target_sr`, clipped to [-1, 1]."""
    if not sr or sr <= 0:
        raise ValueError(f"invalid sample rate {sr!r}")
    return np.clip(resample(to_mono(wav), int(sr), int(target_sr)), -1.0, 1.0)


def read_model_config(path: str, what: str) -> dict:
    """config.json of a local Hugging Face folder; clear errors for a missing folder or file (no hub ids)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: local model folder not found: {path!r} (hub ids are not fetched)")
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"{what}: {path!r} has no config.json (expected a save_pretrained folder)")
    with open(config) as f:
        return json.load(f)


def architecture(config: dict) -> str:
    archs = config.get("architectures") or []
    return str(archs[0]) if archs else ""


def torch_threads() -> int:
    import torch

    return max(1, int(torch.get_num_threads()))
