"""MiniMind-O weights: released fp16 `.pth` state dicts and Transformers-format folders <-> our `MiniMindO`.

Released names (spec "Released state-dict prefixes") equal ours except the Thinker prefix: released `model.*` =
our `thinker.model.*`; `lm_head.weight` is tied to the embedding (checked on import, written on export);
`talker.*`, `audio_proj.mlp.*`, `vision_proj.mlp.*` are identical. Dimensions are read from the tensors (heads
from the q/k projections and the QK-norm width, FFN width, Talker width / depth, adapter width, speaker and
encoder widths, MoE experts); RoPE base, RMSNorm eps (released 1e-6) and MoE top-k come from a folder's
config.json when present, else the base config; the bridge layer is config.json's `bridge_layer`, else derived
from the checkpoint's own depth (`num_layers // 2 - 1`), never the base config's. Every architecture key that
config.json states is checked against the tensors. `init_from=` (`init_from` below) runs the same code and then
compares the result with the chosen model config, failing at start on any difference (key and both values).
The frozen encoders are not part of the weights. Every file is read with `torch.load(weights_only=True)` or
safetensors: no pickled code runs.

    python -m omni.minimind_o.convert import  minimind-3o/sft_omni_768.pth  out/minimind3o.pt [--base CONFIG]
    python -m omni.minimind_o.convert to-pth  logs/.../last.ckpt  out/sft_omni.pth
    python -m omni.minimind_o.convert to-hf   logs/.../last.ckpt  out/minimind-3o-ft/
`import` writes a state-dict file that `init_from=` accepts; `to-hf` also writes `thinker/` (a plain
Qwen3ForCausalLM `save_pretrained` folder, usable as `model.cfg.thinker_path`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

import torch

from omni.minimind_o.model import RMS_NORM_EPS, MiniMindO, MiniMindOConfig

log = logging.getLogger(__name__)
RELEASED_PREFIXES = ("model.", "lm_head.", "talker.", "audio_proj.", "vision_proj.")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# ------------------------------------------------------------------------------------------------ names
def from_released(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released names -> ours (drops the tied `lm_head.weight` after checking it equals the embedding)."""
    out, ignored = {}, []
    for key, value in state.items():
        if key == "lm_head.weight":
            emb = state.get("model.embed_tokens.weight")
            if emb is not None and not torch.equal(value, emb):
                raise ValueError("lm_head.weight differs from model.embed_tokens.weight: the head must be tied")
        elif key.startswith("model."):
            out["thinker." + key] = value
        elif key.startswith(RELEASED_PREFIXES):
            out[key] = value
        else:
            ignored.append(key)
    if ignored:
        log.info("ignored %d tensors outside the MiniMind-O prefixes (e.g. %s)", len(ignored), ignored[:3])
    return out


def to_released(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> released (adds the tied `lm_head.weight`)."""
    out = {}
    for key, value in state.items():
        if key == "thinker.lm_head.weight":
            continue
        out[key[len("thinker."):] if key.startswith("thinker.") else key] = value
    out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


# ------------------------------------------------------------------------------------------------ reading
def read_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A released `.pth` file or a Transformers-format folder -> (released-name state dict, config.json or {})."""
    path = Path(path)
    if path.is_dir():
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        for name in WEIGHT_FILES:
            if (path / name).exists():
                return _load_file(path / name), config
        shards = sorted(path.glob("model-*.safetensors"))
        if shards:
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_load_file(shard))
            return state, config
        raise FileNotFoundError(f"{path}: no {' / '.join(WEIGHT_FILES)} (or model-*.safetensors shards)")
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    return _load_file(path), {}


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint: {state_dict: ...}
    if isinstance(state, dict) and any(k.startswith("model.thinker.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        return to_released(state)  # our Lightning checkpoint
    return state


# config.json keys (released MiniMind / our `export_hf` names) that describe the architecture; `facts` gives
# a config's value under the same key, so a release's own statement is compared key by key
CONFIG_KEYS = {
    "hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_key_value_heads",
    "head_dim": "head_dim", "intermediate_size": "intermediate_size", "vocab_size": "vocab_size",
    "rms_norm_eps": "rms_norm_eps", "rope_theta": "rope_theta", "bridge_layer": "bridge_layer",
    "talker_hidden_size": "talker_hidden", "talker_hidden": "talker_hidden", "talker_layers": "talker_layers",
    "num_experts_per_tok": "top_k", "n_routed_experts": "n_experts",
}


def facts(cfg: MiniMindOConfig) -> dict[str, Any]:
    """A resolved config's architecture values under our fact names (the values of CONFIG_KEYS)."""
    t = cfg.thinker_config
    talker = cfg.talker_config(t)
    out = {"hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers,
           "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
           "head_dim": t.head_dim, "intermediate_size": t.intermediate_size, "vocab_size": t.vocab_size,
           "rms_norm_eps": float(t.rms_norm_eps), "rope_theta": float(t.rope_parameters["rope_theta"]),
           "bridge_layer": cfg.bridge_layer, "talker_hidden": talker.hidden_size, "talker_layers": cfg.talker_layers,
           "talker_rms_norm_eps": float(talker.rms_norm_eps),
           "talker_rope_theta": float(talker.rope_parameters["rope_theta"]),
           "talker_heads": talker.num_attention_heads, "talker_kv_heads": talker.num_key_value_heads,
           "talker_intermediate_size": talker.intermediate_size, "adapter_dim": cfg.adapter_dim,
           "spk_dim": cfg.spk_dim, "audio_vocab": cfg.tokens.audio_vocab, "moe": bool(cfg.moe)}
    if cfg.moe:
        out.update(top_k=cfg.moe["top_k"], n_experts=cfg.moe["n_experts"])
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def check_config_json(hf: dict, implied: MiniMindOConfig, path: str | Path) -> None:
    """Every architecture key a release's config.json states must equal what its tensors (and the rules of the
    spec) imply; otherwise fail naming the key and both values."""
    have = facts(implied)
    for key, name in CONFIG_KEYS.items():
        if key in hf and hf[key] is not None and name in have and not _same(hf[key], have[name]):
            raise ValueError(f"{path}: config.json {key}={hf[key]!r} but the weights imply {name}={have[name]!r}")


def check_against_model(model_cfg: MiniMindOConfig, implied: MiniMindOConfig, path: str | Path) -> None:
    """init_from: what a release says about itself (tensors, config.json, the bridge rule) must equal the chosen
    model config; a mismatch fails at start naming the key and both values (a base config never overrides it)."""
    want, have = facts(implied), facts(model_cfg)
    for key in want:
        if not _same(want[key], have.get(key)):
            raise ValueError(f"init_from={path}: the release has {key}={want[key]!r} but the model config has "
                             f"{key}={have.get(key)!r} (set model.cfg to the release's value)")


def infer_config(state: dict[str, torch.Tensor], base: MiniMindOConfig, hf_config: dict | None = None,
                 source: str | Path = "config.json") -> MiniMindOConfig:
    """The MiniMindOConfig of released-name weights: dims from tensor shapes; RMSNorm eps, RoPE base, MoE top-k
    and `bridge_layer` from config.json when it names them, else eps / RoPE / top-k from `base` (released
    defaults 1e-6 / 1e6 / 1) and the bridge from the checkpoint's own depth (`num_layers // 2 - 1`, never the
    base's value). Keys config.json states are checked against the tensors (`check_config_json`)."""
    hf = hf_config or {}
    s = {k: v.shape for k, v in state.items()}
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_norm.weight", "talker.norm.weight"):
        if key not in s:
            raise ValueError(f"not a MiniMind-O release: no {key} (released names model.* / talker.* / "
                             "audio_proj.* / vision_proj.*)")

    def n_layers(prefix: str) -> int:
        return 1 + max(int(m.group(1)) for k in s if (m := re.match(prefix + r"(\d+)\.", k)))

    head_dim = s["model.layers.0.self_attn.q_norm.weight"][0]
    moe = any(".mlp.experts." in k for k in s)
    ffn = s["model.layers.0.mlp.experts.0.gate_proj.weight" if moe else "model.layers.0.mlp.gate_proj.weight"][0]
    rope = dict(base.thinker.get("rope_parameters") or {"rope_type": "default", "rope_theta": 1e6})
    if "rope_theta" in hf:
        rope["rope_theta"] = float(hf["rope_theta"])
    depth = n_layers(r"model\.layers\.")
    thinker = {
        **base.thinker,
        "hidden_size": s["model.embed_tokens.weight"][1], "num_hidden_layers": depth,
        "num_attention_heads": s["model.layers.0.self_attn.q_proj.weight"][0] // head_dim,
        "num_key_value_heads": s["model.layers.0.self_attn.k_proj.weight"][0] // head_dim,
        "head_dim": head_dim, "intermediate_size": ffn, "rope_parameters": rope,
        "rms_norm_eps": float(hf.get("rms_norm_eps", base.thinker.get("rms_norm_eps", RMS_NORM_EPS))),
    }
    talker_heads = s["talker.layers.0.self_attn.q_proj.weight"][0] // s["talker.layers.0.self_attn.q_norm.weight"][0]
    talker_ffn = "talker.layers.0.mlp.experts.0.gate_proj.weight" if moe else "talker.layers.0.mlp.gate_proj.weight"
    tokens = dataclasses.replace(base.tokens, text_vocab=s["model.embed_tokens.weight"][0],
                                 codebook_size=s["talker.embed_tokens.base.weight"][0] - base.tokens.audio_specials)
    moe_cfg = None
    if moe:
        moe_cfg = {**(base.moe or {}), "n_experts": n_layers(r"model\.layers\.0\.mlp\.experts\."),
                   "top_k": int(hf.get("num_experts_per_tok", (base.moe or {}).get("top_k", 1)))}
    audio = dataclasses.replace(base.audio_encoder)
    vision = dataclasses.replace(base.vision_encoder)
    for spec, key in ((audio, "audio_proj.mlp.0.weight"), (vision, "vision_proj.mlp.0.weight")):
        if spec.out_dim != s[key][0]:
            raise ValueError(f"{key} expects {s[key][0]}-d encoder features but the configured "
                             f"{spec.kind} encoder gives {spec.out_dim}: set model.cfg.{key.split('_')[0]}_encoder")
    bridge = hf.get("bridge_layer")
    cfg = dataclasses.replace(
        base, tokens=tokens, thinker=thinker, thinker_path=None, talker_hidden=s["talker.norm.weight"][0],
        talker_layers=n_layers(r"talker\.layers\."),
        talker={"num_attention_heads": talker_heads, "intermediate_size": s[talker_ffn][0],
                "num_key_value_heads": s["talker.layers.0.self_attn.k_proj.weight"][0]
                // s["talker.layers.0.self_attn.k_norm.weight"][0],
                "head_dim": s["talker.layers.0.self_attn.q_norm.weight"][0]},
        adapter_dim=s["talker.lm_head.adapters.0.0.weight"][0], spk_dim=s["talker.spk_proj.weight"][1],
        moe=moe_cfg, talker_init_from_thinker=False, audio_encoder=audio, vision_encoder=vision,
        bridge_layer=depth // 2 - 1 if bridge is None else int(bridge),
    )
    check_config_json(hf, cfg, source)
    return cfg


def load_released(path: str | Path, base: MiniMindOConfig, dtype: torch.dtype = torch.float32) -> MiniMindO:
    """Build a MiniMindO from released weights (`.pth` or folder); parameters cast to `dtype`."""
    released, hf = read_state(path)
    model = MiniMindO(infer_config(released, base, hf, source=path))
    load_released_into(model, path, state=released)
    return model.to(dtype)


def load_released_into(model: MiniMindO, path: str | Path, state: dict | None = None) -> None:
    """Copy released weights into an existing model (shapes must fit; every parameter must be present)."""
    released = state if state is not None else read_state(path)[0]
    ours = from_released(released)
    own = model.state_dict()
    missing = sorted(set(own) - set(ours) - {"thinker.lm_head.weight"})
    unexpected = sorted(set(ours) - set(own))
    wrong = [k for k in ours if k in own and own[k].shape != ours[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: weights do not fit the model; missing={missing[:6]} unexpected={unexpected[:6]} "
                         f"shape mismatch={wrong[:6]}")
    with torch.no_grad():
        for key, value in ours.items():
            own[key].copy_(value.to(own[key].dtype))


# ------------------------------------------------------------------------------------------------ writing
def export_pth(model: MiniMindO, path: str | Path, dtype: torch.dtype | None = torch.float16, *,
               merge_lora: bool = True) -> Path:
    """Released `.pth` layout (fp16 by default, as released; dtype=None keeps the model's). LoRA adapters (lora=)
    are merged into the weights written; merge_lora=False: base weights + `<name>.lora_adapters.safetensors`."""
    from omni.lora import prepare_export

    model = prepare_export(model, merge_lora, Path(path).with_suffix(".lora_adapters.safetensors"))
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).clone()
             for k, v in to_released(model.state_dict()).items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def export_hf(model: MiniMindO, folder: str | Path, dtype: torch.dtype | None = None, *,
              merge_lora: bool = True) -> Path:
    """Transformers-format folder: config.json (released-style keys + our config) + model.safetensors in the
    released names (tied head stored once), and thinker/ (a Qwen3ForCausalLM `save_pretrained` folder). LoRA
    adapters (lora=) are merged into the weights written; merge_lora=False: base + lora_adapters.safetensors."""
    from safetensors.torch import save_file

    from omni.lora import prepare_export

    folder = Path(folder)
    model = prepare_export(model, merge_lora, folder / "lora_adapters.safetensors")
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().clone()
             for k, v in to_released(model.state_dict()).items() if k != "lm_head.weight"}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", "tied": "lm_head=model.embed_tokens"})
    t = model.thinker.config
    config = {
        "model_type": "minimind-o", "hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers,
        "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
        "intermediate_size": t.intermediate_size, "vocab_size": t.vocab_size, "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_parameters["rope_theta"], "tie_word_embeddings": True,
        "talker_hidden_size": model.talker.config.hidden_size, "talker_layers": model.talker.config.num_hidden_layers,
        "bridge_layer": model.cfg.bridge_layer, "use_moe": bool(model.cfg.moe),
        "num_experts_per_tok": (model.cfg.moe or {}).get("top_k", 1),
        "omni_config": _plain(model.cfg),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    model.thinker.save_pretrained(folder / "thinker")
    return folder


def _plain(cfg: MiniMindOConfig) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = {k: v for k, v in dataclasses.asdict(value).items() if not k.startswith("_")} \
            if dataclasses.is_dataclass(value) else value
    return out


# ------------------------------------------------------------------------------------------------ CLI
def _base_config(name: str) -> MiniMindOConfig:
    from omegaconf import OmegaConf

    from omni.config import register_resolvers

    register_resolvers()
    conf = Path(__file__).resolve().parents[2] / "conf" / "model" / f"{name}.yaml"
    if not conf.exists():
        raise FileNotFoundError(f"no model config {conf}; use a conf/model/minimind_o*.yaml name")
    node = OmegaConf.load(conf)
    node = node.model.cfg if "model" in node else node.cfg
    raw = OmegaConf.to_container(node, resolve=True)
    raw.pop("_target_", None), raw.pop("_convert_", None)
    return MiniMindOConfig(**raw)


def _from_checkpoint(path: str) -> MiniMindO:
    from omni.checkpoint import load_for_eval

    return load_for_eval(path)[0]


def is_released_file(path: str | Path) -> bool:
    """A single weights file in the released names (`model.embed_tokens.weight`, no `model.thinker.*` and no
    Lightning `state_dict`): the released fp16 `.pth` or a `.safetensors` / `.bin` of the same names. Reads the
    key names only (safetensors header; torch files memory-mapped where the format allows)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) torch files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or "state_dict" in obj:
            return False
        keys = set(obj)
    return "model.embed_tokens.weight" in keys and not any(str(k).startswith("model.thinker.") for k in keys)


def init_from(model: MiniMindO, path: str | Path) -> bool:
    """`init_from=` for MiniMind-O, through the same code as `python -m omni.minimind_o.convert import`: a released
    `.pth` state dict (recognised by its key names) or a Transformers-format folder (config.json + weights).
    What the release says about itself (its tensors, its config.json, the bridge rule) must equal the model's
    config (`check_against_model`). False for anything else (our own Lightning checkpoints `state_dict` with
    `model.thinker.*`, or the `import` command's output in our names): the generic loader reads those."""
    path = Path(path)
    if not (path.is_dir() or is_released_file(path)):
        return False
    released, hf = read_state(path)
    implied = infer_config(released, model.cfg, hf, source=path / "config.json" if path.is_dir() else path)
    check_against_model(model.cfg, implied, path)
    load_released_into(model, path, state=released)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omni.minimind_o.convert", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="released .pth / Transformers folder -> state-dict file for init_from=")
    imp.add_argument("src")
    imp.add_argument("out")
    imp.add_argument("--base", default="minimind_o", help="conf/model name giving tokenizer / encoder settings")
    for name, helptext in (("to-pth", "training checkpoint -> released fp16 .pth"),
                           ("to-hf", "training checkpoint -> Transformers-format folder")):
        e = sub.add_parser(name, help=helptext)
        e.add_argument("ckpt")
        e.add_argument("out")
    a = p.parse_args(argv)
    if a.command == "import":
        model = load_released(a.src, _base_config(a.base))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v for k, v in model.state_dict().items()}, a.out)
        print(f"wrote {a.out}: {sum(p.numel() for p in model.parameters()):,} parameters")
    elif a.command == "to-pth":
        print(f"wrote {export_pth(_from_checkpoint(a.ckpt), a.out)}")
    else:
        print(f"wrote {export_hf(_from_checkpoint(a.ckpt), a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
