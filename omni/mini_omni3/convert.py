"""Import a released Mini-Omni3 checkpoint folder into our `MiniOmni3`.

Released folder (seeds/000: the model card): litgpt safetensors shards `model-0000k-of-0000n.safetensors` +
`model.safetensors.index.json`, `model_config.yaml` (litgpt `Config` fields), tokenizer files, the audio tower
weights `MiniOmni3_ChunkwisedEncoder.pth` and its config folder `qwen25OmniConfig/` (nested
`thinker_config.audio_config`). LLM names are litgpt's (transformer.wte, transformer.h.N.{norm_1, attn.attn
(fused qkv grouped per KV group; newer litgpt: attn.qkv), attn.proj, norm_2, mlp.fc_1/fc_2/proj},
transformer.ln_f, lm_head - absent when the embeddings are tied); they map onto Hugging Face Qwen2 with the
Mini-Omni helpers (omni/mini_omni/convert.py: split_qkv, renames, shard reading). Nothing unpickles code:
safetensors, YAML safe_load, JSON and `torch.load(weights_only=True)` only.

    python -m omni.mini_omni3.convert import /models/Mini-Omni3 mini_omni3.safetensors
    python train.py model=mini_omni3 init_from=mini_omni3.safetensors model.cfg.tokenizer_path=/models/Mini-Omni3 \
        model.cfg.encoder_config_path=/models/Mini-Omni3/qwen25OmniConfig ...
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from omni.mini_omni.convert import (
    _LAYER_RENAMES, _TOP_RENAMES, LitGPTConfig, read_litgpt_weights, split_qkv,
)
from omni.mini_omni3.model import MiniOmni3, MiniOmni3Config
from omni.mini_omni3.tokens import MiniOmni3Tokens

log = logging.getLogger(__name__)

ENCODER_WEIGHTS = "MiniOmni3_ChunkwisedEncoder.pth"
ENCODER_CONFIG = "qwen25OmniConfig"
QKV_NAMES = ("attn.attn", "attn.qkv")  # Mini-Omni fork / current litgpt


def read_config(folder: Path) -> LitGPTConfig:
    import yaml

    path = folder / "model_config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (a released Mini-Omni3 folder has model_config.yaml)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of litgpt Config keys")
    return LitGPTConfig.from_dict(raw)


def encoder_files(folder: Path) -> tuple[Path, Path]:
    """(tower weights .pth, audio config folder) of a released folder; errors name what is missing."""
    pths = sorted(folder.glob("*.pth"))
    weights = folder / ENCODER_WEIGHTS if (folder / ENCODER_WEIGHTS).is_file() else (pths[0] if len(pths) == 1
                                                                                         else None)
    if weights is None:
        raise FileNotFoundError(f"{folder}: no {ENCODER_WEIGHTS} (the audio tower weights); found {pths}")
    config = folder / ENCODER_CONFIG
    if not (config / "config.json").is_file():
        raise FileNotFoundError(f"{config}/config.json not found (the nested Qwen2.5-Omni audio config)")
    return weights, config


def config_from_release(folder: str | Path, base: MiniOmni3Config | None = None) -> MiniOmni3Config:
    """MiniOmni3Config for a released folder: LLM dims from model_config.yaml, the tower from the folder's
    config + .pth, controls from `base` (released ids by default) with the table size of the checkpoint."""
    folder = Path(folder)
    lc = read_config(folder)
    weights, enc_config = encoder_files(folder)
    has_tok = any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))
    base = base or MiniOmni3Config()
    tokens = MiniOmni3Tokens.from_config({**base.tokens.__dict__, "vocab_size": lc.padded_vocab_size})
    backbone: dict[str, Any] = dict(
        hidden_size=lc.n_embd, intermediate_size=lc.intermediate_size, num_hidden_layers=lc.n_layer,
        num_attention_heads=lc.n_head, num_key_value_heads=lc.n_query_groups, max_position_embeddings=lc.block_size,
        rms_norm_eps=lc.norm_eps, rope_parameters={"rope_theta": lc.rope_base, "rope_type": "default"},
        tie_word_embeddings=lc.tie_word_embeddings,
    )
    if lc.head_size != lc.n_embd // lc.n_head:
        backbone["head_dim"] = lc.head_size
    return MiniOmni3Config(
        tokens=tokens, backbone=backbone, encoder={}, encoder_config_path=str(enc_config), encoder_path=str(weights),
        tokenizer_path=str(folder) if has_tok else base.tokenizer_path, projection="auto",
        system_prompt=base.system_prompt, keep_silence_weight=base.keep_silence_weight,
    )


def litgpt_to_backbone(state: dict[str, torch.Tensor], lc: LitGPTConfig) -> tuple[dict[str, torch.Tensor], bool]:
    """litgpt LLM tensors -> our `backbone.*` names (HF Qwen2); returns (state, tied). Raises listing every
    missing, unexpected or mis-shaped key."""
    tied = "lm_head.weight" not in state
    qkv = next((n for n in QKV_NAMES if f"transformer.h.0.{n}.weight" in state), None)
    if qkv is None:
        raise ValueError(f"no fused qkv weight (transformer.h.0.{{{','.join(QKV_NAMES)}}}.weight) in the checkpoint")
    D, S, I = lc.n_embd, lc.head_size, lc.intermediate_size
    rows = (lc.n_head + 2 * lc.n_query_groups) * S
    shapes = {"transformer.wte.weight": (lc.padded_vocab_size, D), "transformer.ln_f.weight": (D,)}
    if not tied:
        shapes["lm_head.weight"] = (lc.padded_vocab_size, D)
    for i in range(lc.n_layer):
        p = f"transformer.h.{i}."
        shapes.update({p + "norm_1.weight": (D,), p + "norm_2.weight": (D,), p + f"{qkv}.weight": (rows, D),
                       p + "attn.proj.weight": (D, lc.n_head * S), p + "mlp.fc_1.weight": (I, D),
                       p + "mlp.fc_2.weight": (I, D), p + "mlp.proj.weight": (D, I)})
        if lc.qkv_bias:
            shapes[p + f"{qkv}.bias"] = (rows,)
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    wrong = {k: (tuple(state[k].shape), shapes[k]) for k in set(shapes) & set(state)
             if tuple(state[k].shape) != shapes[k]}
    if missing or unexpected or wrong:
        raise ValueError(f"checkpoint does not match model_config.yaml: missing={missing[:8]} "
                         f"unexpected={unexpected[:8]} wrong_shape(got, expected)={wrong}")
    out = {ours: state[theirs] for theirs, ours in _TOP_RENAMES.items() if theirs in state}
    args = (lc.n_head, lc.n_query_groups, lc.head_size)
    for i in range(lc.n_layer):
        p, o = f"transformer.h.{i}.", f"backbone.model.layers.{i}."
        for theirs, ours in _LAYER_RENAMES.items():
            out[o + ours] = state[p + theirs]
        w = state[p + f"{qkv}.weight"]
        b = state[p + f"{qkv}.bias"] if lc.qkv_bias else w.new_zeros(w.shape[0])  # HF Qwen2 always has biases
        for name, wt, bs in zip("qkv", split_qkv(w, *args), split_qkv(b, *args)):
            out[f"{o}self_attn.{name}_proj.weight"] = wt
            out[f"{o}self_attn.{name}_proj.bias"] = bs
    return out, tied


def load_release_into(model: MiniOmni3, folder: str | Path) -> None:
    """Copy a released folder's LLM weights into `model` (its tower comes from cfg.encoder_path at build time)."""
    folder = Path(folder)
    lc = read_config(folder)
    state, tied = litgpt_to_backbone(read_litgpt_weights(folder), lc)
    if tied != bool(model.backbone.config.tie_word_embeddings):
        raise ValueError(f"{folder}: the checkpoint's embeddings are {'tied' if tied else 'untied'} but the model's "
                         f"backbone has tie_word_embeddings={model.backbone.config.tie_word_embeddings}")
    ours = model.state_dict()
    wrong = {k: (tuple(v.shape), tuple(ours[k].shape)) for k, v in state.items()
             if tuple(v.shape) != tuple(ours[k].shape)}
    if wrong:
        raise ValueError(f"{folder} does not fit the model: wrong_shape(checkpoint, model)={wrong}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("audio_encoder.", "audio_projector.", "backbone.lm_head."))]
    if missing or unexpected:
        raise ValueError(f"{folder} does not fit the model: missing={missing[:8]} unexpected={unexpected[:8]}")


def load_release(folder: str | Path, base: MiniOmni3Config | None = None) -> MiniOmni3:
    """Build a MiniOmni3 from a released folder: LLM + tower (+ tokenizer path when the folder has one)."""
    model = MiniOmni3(config_from_release(folder, base))  # the tower loads from cfg.encoder_path
    load_release_into(model, folder)
    return model.eval()


def init_from(model: MiniOmni3, path: str | Path) -> bool:
    """`init_from=` for Mini-Omni3: a released folder (litgpt safetensors shards + index + `model_config.yaml`).
    False for anything else (a Lightning checkpoint or our safetensors state dict)."""
    path = Path(path)
    if not (path.is_dir() and (path / "model_config.yaml").exists()):
        return False
    load_release_into(model, path)
    return True


def main(argv: list[str] | None = None) -> int:
    """python -m omni.mini_omni3.convert import RELEASE_FOLDER OUT.safetensors [--model-config YAML]: our state dict
    (LLM + tower) that `init_from=OUT.safetensors` loads into `model=mini_omni3`."""
    p = argparse.ArgumentParser(prog="python -m omni.mini_omni3.convert", description=main.__doc__)
    p.add_argument("direction", choices=["import"])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--model-config", default=None,
                   help="conf/model/mini_omni3*.yaml whose control ids / system prompt to keep (default: released)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    from safetensors.torch import save_file

    from omni.mini_omni3.model import config_from_yaml

    model = load_release(args.src, config_from_yaml(args.model_config) if args.model_config else None)
    # a tied head shares the embedding's storage, which safetensors refuses: store it as its own copy
    state = {k: v.detach().clone() if k == "backbone.lm_head.weight" else v.detach().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, args.dst, metadata={"format": "pt"})
    log.info("wrote %s (%d tensors)", args.dst, len(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
