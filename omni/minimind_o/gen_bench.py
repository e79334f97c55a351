"""Generation benchmark: `python -m omni.minimind_o.gen_bench --model minimind_o_512 --steps 100`.

Random weights of a shipped model config (conf/model/<name>.yaml), one prompt of `--prompt` ids, default sampling
(seed 0). Reports prefill time, decoding steps/s with speech (Thinker + Talker + 8 codebook heads) and text only,
and, with the Mimi architecture (`--mimi mimi`, seeded random weights, or a local folder), per-chunk incremental
decode time, the time to the first audio chunk and the real-time factor of streaming. Single item, fp32, CPU
unless `--device` says otherwise; set OMP_NUM_THREADS for a fair figure on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from omegaconf import OmegaConf

from omni.minimind_o.codec import load_mimi, samples_per_frame
from omni.minimind_o.generate import ModelSource, SamplingConfig, collect, decode_steps, prompt_batch
from omni.minimind_o.model import MiniMindO, MiniMindOConfig
from omni.minimind_o.playback import MimiStreamDecoder, stream

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf", "model")


def model_config(name: str) -> MiniMindOConfig:
    """conf/model/<name>.yaml (its `defaults` chain of model files merged) -> MiniMindOConfig."""
    cfg = model_config_node(name)
    cfg = cfg.model.cfg if "model" in cfg else cfg.cfg
    cfg.tokenizer_path = None
    raw = OmegaConf.to_container(cfg, resolve=True)
    raw.pop("_target_", None), raw.pop("_convert_", None)
    return MiniMindOConfig(**raw)


def model_config_node(name: str):
    node = OmegaConf.load(os.path.join(CONF, f"{name}.yaml"))
    base = [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    return OmegaConf.merge(*[model_config_node(b) for b in base], node) if base else node


def run(model_name: str, steps: int, prompt_len: int, mimi_arch: str | None, chunk: int, device: str) -> dict:
    torch.manual_seed(0)
    model = MiniMindO(model_config(model_name)).to(device).eval()
    tok = model.tokens
    prompt = [tok.im_start] + [40 + i % 200 for i in range(prompt_len - 1)]
    batch = prompt_batch(model, prompt)
    src = ModelSource(model)
    t = time.perf_counter()
    src.prefill(batch)
    prefill = time.perf_counter() - t
    out = {"model": model_name, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "prompt": prompt_len, "steps": steps, "threads": torch.get_num_threads(), "device": device,
           "prefill_s": round(prefill, 4)}
    for speech in (True, False):
        cfg = SamplingConfig(max_new_tokens=steps, seed=0, speech=speech)
        t = time.perf_counter()
        gen = collect(decode_steps(ModelSource(model), tok, batch, cfg), tok)
        dt = time.perf_counter() - t - prefill
        out["speech_steps_per_s" if speech else "text_steps_per_s"] = round(gen.columns.shape[1] / dt, 1)
    if mimi_arch:
        mimi = load_mimi(mimi_arch if os.path.isdir(mimi_arch) else None,
                         "mimi" if os.path.isdir(mimi_arch) else mimi_arch).to(device)
        dec, g = MimiStreamDecoder(mimi), torch.Generator().manual_seed(0)
        frames = torch.randint(0, 2048, (chunk * 10, 8), generator=g)
        dec.push(frames[:chunk])  # warm-up
        t = time.perf_counter()
        for i in range(1, 10):
            dec.push(frames[i * chunk:(i + 1) * chunk])
        out["mimi_chunk_frames"] = chunk
        out["mimi_chunk_decode_ms"] = round((time.perf_counter() - t) / 9 * 1000, 1)
        t = time.perf_counter()
        events, first, audio = stream(model, batch, SamplingConfig(max_new_tokens=steps, seed=0), mimi=mimi,
                                      chunk_frames=chunk), None, 0
        for e in events:
            if e.audio is not None:
                first = first if first is not None else time.perf_counter() - t
                audio += len(e.audio)
        total = time.perf_counter() - t
        out["first_audio_s"] = round(first, 3) if first is not None else None
        out["stream_rtf"] = round(total / max(audio / samples_per_frame(mimi) * 0.08, 1e-9), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minimind_o_tiny", help="conf/model/<name>.yaml")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--prompt", type=int, default=64, help="prompt length in ids")
    p.add_argument("--mimi", default=None, help="'mimi' / 'tiny' (seeded random) or a local Mimi folder")
    p.add_argument("--chunk", type=int, default=4, help="frames per audio chunk")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    print(json.dumps(run(a.model, a.steps, a.prompt, a.mimi, a.chunk, a.device), indent=1))


if __name__ == "__main__":
    main()
