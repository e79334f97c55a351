"""Speech-quality predictors (non-intrusive MOS): `score(wav, sr) -> {"mos": float, ...}`.

Default: DNSMOS P.835 + P.808 (Microsoft's ONNX models shipped inside `speechmos`, run by onnxruntime, offline):
`mos` = OVRL, plus `sig`, `bak`, `p808`. A local UTMOS (or any waveform -> MOS model) replaces it as an ONNX file
(`.onnx`, run by onnxruntime: input (1, n) float32 at `sample_rate`, output the MOS as a scalar or a 1-element
tensor); hub-only predictors cannot be fetched here, so export one where you have the weights. Model files are
data, never code: a `torch.export` program (`.pt2`) is refused, since `torch.export.load` unpickles."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from callbacks.speech.base import LazyScorer, prepare_wav, torch_threads

DNSMOS_RATE = 16000


class DNSMOS(LazyScorer):
    name = "dnsmos"

    def _load(self) -> Any:
        import onnxruntime as ort
        import speechmos
        from speechmos.dnsmos import DNSMOS as _Reference

        folder = os.path.join(os.path.dirname(speechmos.__file__), "dnsmos_models")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = torch_threads(), 1
        opts.log_severity_level = 3

        class _Session(_Reference):  # speechmos' feature extraction and polynomial mapping, our thread settings
            def __init__(self) -> None:
                self.primary_model_path = os.path.join(folder, "sig_bak_ovr.onnx")
                self.onnx_sess = ort.InferenceSession(self.primary_model_path, opts,
                                                      providers=["CPUExecutionProvider"])
                self.p808_onnx_sess = ort.InferenceSession(os.path.join(folder, "model_v8.onnx"), opts,
                                                           providers=["CPUExecutionProvider"])

        return _Session()

    def score(self, wav: np.ndarray, sr: int) -> dict[str, float]:
        audio = prepare_wav(wav, sr, DNSMOS_RATE)
        if audio.size < DNSMOS_RATE // 10:
            raise ValueError(f"DNSMOS needs at least 0.1 s of audio, got {audio.size} samples")
        out = self.model(audio, DNSMOS_RATE, False)
        return {"mos": float(out["ovrl_mos"]), "sig": float(out["sig_mos"]), "bak": float(out["bak_mos"]),
                "p808": float(out["p808_mos"])}


class ExportedMOS(LazyScorer):
    """A local ONNX model (.onnx, onnxruntime) mapping a (1, n) waveform at `sample_rate` to a MOS."""

    def __init__(self, path: str, sample_rate: int = 16000) -> None:
        super().__init__()
        if str(path).endswith(".pt2"):
            raise ValueError(f"quality: {path!r} is a torch.export program (.pt2), refused: torch.export.load "
                             "unpickles, and model files are data, never code. Export the model to ONNX instead "
                             "(torch.onnx.export(model, (wav,), 'utmos.onnx', dynamic_axes={'wav': {1: 'n'}}))")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"quality: model file not found: {path!r}")
        if not path.endswith(".onnx"):
            raise ValueError(f"quality: {path!r} is not an ONNX model (.onnx); export your UTMOS with "
                             "torch.onnx.export(model, (wav,), 'utmos.onnx', dynamic_axes={'wav': {1: 'n'}})")
        self.path, self.sample_rate = path, int(sample_rate)
        self.name = f"onnx:{os.path.basename(path)}"

    def _load(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = torch_threads(), 1
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own error types
            raise ValueError(f"quality: {self.path} is not a valid ONNX model: {str(e).splitlines()[0]}") from e

    def score(self, wav: np.ndarray, sr: int) -> dict[str, float]:
        audio = prepare_wav(wav, sr, self.sample_rate).astype(np.float32)[None, :]
        out = np.asarray(self.model.run(None, {self.model.get_inputs()[0].name: audio})[0])
        if out.size != 1:
            raise ValueError(f"quality: {self.path} returned {tuple(out.shape)}; expected one MOS value")
        return {"mos": float(out.reshape(()))}


def build_quality(path: str | None = None, sample_rate: int = 16000) -> DNSMOS | ExportedMOS:
    """None -> DNSMOS (speechmos); an `.onnx` file -> that MOS predictor (e.g. UTMOS); `.pt2` is refused."""
    return ExportedMOS(path, sample_rate) if path else DNSMOS()
