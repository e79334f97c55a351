"""Import a released Mini-Omni3 checkpoint folder into our `MiniOmni3`.

Released folder (seeds/000: the model card): litgpt safetensors shards `model-0000k-of-0000n.safetensors` +
`model.safetensors.index.json`, `model_config.yaml` (litgpt `Config` fields), tokenizer files, the audio tower
weights `MiniOmni3_ChunkwisedEncoder.pth` and its config folder `qwen25OmniConfig/` (nested
`thinker_config.audio_config`). LLM names are litgpt's (transformer.wte, transformer.h.N.{norm_1, attn.qkv /
attn.attn, attn.proj, norm_2, mlp.fc_1/fc_2/proj}, transformer.ln_f, lm_head - absent when the embeddings are
tied); they map onto Hugging Face Qwen2 with the Mini-Omni renames and shard reading (omni/mini_omni/convert.py).

The fused attention weight has two row orders, told apart by its NAME (spec, pinned facts): `attn.qkv` (current
litgpt, what Mini-Omni3 ships) is all H query heads' rows, then all G key heads', then all G value heads';
the legacy `attn.attn` is interleaved per KV group [q heads of group g, k_g, v_g]. Reading one as the other
loads without any shape error and is a different model.

Every import (the CLI, `load_release`, `init_from=<folder>`) goes through `import_release`, which first compares
the folder's model_config.yaml (and qwen25OmniConfig/config.json) with the model it loads into: a mismatch in
layers, heads, KV groups, widths, norm epsilon, rope base, vocabulary or tower settings fails naming the key and
both values. Nothing unpickles code: safetensors, YAML safe_load, JSON and `torch.load(weights_only=True)` only.

    python -m omni.mini_omni3.convert import /models/Mini-Omni3 mini_omni3.safetensors
    python train.py model=mini_omni3 init_from=mini_omni3.safetensors model.cfg.tokenizer_path=/models/Mini-Omni3 \
        model.cfg.encoder_config_path=/models/Mini-Omni3/qwen25OmniConfig ...
    python train.py model=mini_omni3 init_from=/models/Mini-Omni3 ...      # the released folder directly
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch

from omni.mini_omni.convert import (
    _LAYER_RENAMES, _TOP_RENAMES, LitGPTConfig, _torch_load_safe, read_litgpt_weights, split_qkv,
)
from omni.mini_omni3.encoder import audio_config, load_tower_weights, strip_tower_prefix
from omni.mini_omni3.model import MiniOmni3, MiniOmni3Config
from omni.mini_omni3.tokens import MiniOmni3Tokens

log = logging.getLogger(__name__)

ENCODER_WEIGHTS = "MiniOmni3_ChunkwisedEncoder.pth"
ENCODER_CONFIG = "qwen25OmniConfig"
QKV_NAMES = ("attn.attn", "attn.qkv")  # Mini-Omni fork (interleaved per KV group) / current litgpt (q|k|v blocks)
# tower settings that must agree between a release's qwen25OmniConfig and the model (shapes miss n_window etc.)
TOWER_KEYS = ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "output_dim",
              "n_window", "max_source_positions", "scale_embedding", "activation_function")


def split_qkv_blocks(fused: torch.Tensor, n_head: int, n_query_groups: int, head_size: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`attn.qkv` rows ((H + 2G) * S, ...) stored as [all H query heads | all G key heads | all G value heads]
    (current litgpt's order, the Mini-Omni3 release) -> HF q (H*S, ...), k (G*S, ...), v (G*S, ...)."""
    q_rows, kv_rows = n_head * head_size, n_query_groups * head_size
    if fused.shape[0] != q_rows + 2 * kv_rows:
        raise ValueError(f"fused qkv has {fused.shape[0]} rows, expected (n_head + 2 * n_query_groups) * head_size"
                         f" = {q_rows + 2 * kv_rows}")
    q, k, v = fused.split([q_rows, kv_rows, kv_rows], dim=0)
    return q.clone(), k.clone(), v.clone()


QKV_SPLIT = {"attn.attn": split_qkv, "attn.qkv": split_qkv_blocks}  # the row order goes with the name


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
        split = QKV_SPLIT[qkv]
        for name, wt, bs in zip("qkv", split(w, *args), split(b, *args)):
            out[f"{o}self_attn.{name}_proj.weight"] = wt
            out[f"{o}self_attn.{name}_proj.bias"] = bs
    return out, tied


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a != b


def check_release_config(model: MiniOmni3, lc: LitGPTConfig, where: str) -> None:
    """The release's litgpt config against the model's backbone; raises naming every differing key and both
    values (a different rope base or norm epsilon has no shape to catch it)."""
    bc = model.backbone.config
    head_dim = getattr(bc, "head_dim", None) or bc.hidden_size // bc.num_attention_heads
    rope = (getattr(bc, "rope_parameters", None) or {}).get("rope_theta", getattr(bc, "rope_theta", None))
    pairs = [  # (release key, its value, model key, model value)
        ("n_layer", lc.n_layer, "num_hidden_layers", bc.num_hidden_layers),
        ("n_head", lc.n_head, "num_attention_heads", bc.num_attention_heads),
        ("n_query_groups", lc.n_query_groups, "num_key_value_heads", bc.num_key_value_heads),
        ("n_embd", lc.n_embd, "hidden_size", bc.hidden_size),
        ("head_size", lc.head_size, "head_dim", head_dim),
        ("intermediate_size", lc.intermediate_size, "intermediate_size", bc.intermediate_size),
        ("norm_eps", lc.norm_eps, "rms_norm_eps", bc.rms_norm_eps),
        ("rope_base", lc.rope_base, "rope_parameters.rope_theta", rope),
        ("padded_vocab_size", lc.padded_vocab_size, "vocab_size (tokens.vocab_size)", bc.vocab_size),
        ("tie_word_embeddings", lc.tie_word_embeddings, "tie_word_embeddings", bool(bc.tie_word_embeddings)),
    ]
    bad = [f"{k}={v!r} but model.backbone {mk}={mv!r}" for k, v, mk, mv in pairs if _differs(v, mv)]
    if bad:
        raise ValueError(f"{where} does not describe this model: " + "; ".join(bad)
                         + " (use a model config matching the release, or `python -m omni.mini_omni3.convert "
                           "import` which builds one from it)")


def check_tower_config(model: MiniOmni3, config_dir: Path) -> None:
    """The release's qwen25OmniConfig audio settings against the model's tower; raises naming key and values."""
    theirs, ours = audio_config(path=str(config_dir)), model.audio_encoder.config
    bad = [f"{k}={getattr(theirs, k, None)!r} but model.encoder {k}={getattr(ours, k, None)!r}"
           for k in TOWER_KEYS if _differs(getattr(theirs, k, None), getattr(ours, k, None))]
    if bad:
        raise ValueError(f"{config_dir}/config.json (thinker_config.audio_config) does not describe this model's "
                         "audio tower: " + "; ".join(bad))


def load_llm(model: MiniOmni3, state: dict[str, torch.Tensor], lc: LitGPTConfig, where: str) -> None:
    """litgpt LLM tensors (already checked against `lc`) into `model.backbone`."""
    state, tied = litgpt_to_backbone(state, lc)
    if tied != bool(model.backbone.config.tie_word_embeddings):
        raise ValueError(f"{where}: the checkpoint's embeddings are {'tied' if tied else 'untied'} (lm_head.weight "
                         f"{'absent' if tied else 'present'}) but the model's backbone has tie_word_embeddings="
                         f"{model.backbone.config.tie_word_embeddings}")
    ours = model.state_dict()
    wrong = {k: (tuple(v.shape), tuple(ours[k].shape)) for k, v in state.items()
             if tuple(v.shape) != tuple(ours[k].shape)}
    if wrong:
        raise ValueError(f"{where} does not fit the model: wrong_shape(checkpoint, model)={wrong}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("audio_encoder.", "audio_projector.", "backbone.lm_head."))]
    if missing or unexpected:
        raise ValueError(f"{where} does not fit the model: missing={missing[:8]} unexpected={unexpected[:8]}")


def import_release(model: MiniOmni3, folder: str | Path) -> None:
    """THE import of a released folder (CLI, `load_release`, `init_from=`): check model_config.yaml against the
    model, load the LLM; when the folder ships the tower (.pth + qwen25OmniConfig/), check its config and load it
    too (otherwise the model keeps its own tower, with a warning)."""
    folder = Path(folder)
    lc = read_config(folder)
    check_release_config(model, lc, str(folder / "model_config.yaml"))
    load_llm(model, read_litgpt_weights(folder), lc, str(folder))
    try:
        weights, config_dir = encoder_files(folder)
    except FileNotFoundError as exc:
        log.warning("%s: LLM loaded, audio tower NOT (the model keeps its own): %s", folder, exc)
        return
    check_tower_config(model, config_dir)
    load_tower_weights(model.audio_encoder, weights)


def load_release_into(model: MiniOmni3, folder: str | Path) -> None:
    """Copy a released folder's weights into `model` (kept name; see `import_release`)."""
    import_release(model, folder)


def load_release(folder: str | Path, base: MiniOmni3Config | None = None) -> MiniOmni3:
    """Build a MiniOmni3 from a released folder: LLM + tower (+ tokenizer path when the folder has one)."""
    model = MiniOmni3(config_from_release(folder, base))  # the tower loads from cfg.encoder_path
    import_release(model, folder)
    return model.eval()


def _peek_keys(path: Path) -> list[str] | None:
    """Tensor names of a weights file without reading the tensors (None: not a weights file we know)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    if path.suffix in (".pth", ".pt", ".bin"):
        obj = _torch_load_safe(path)
        return list(obj) if isinstance(obj, dict) else None
    return None


def init_from(model: MiniOmni3, path: str | Path) -> bool:
    """`init_from=` for Mini-Omni3, through the converter's import code. True when `path` is a released format:
    - a released folder (model_config.yaml + litgpt weights [+ tower .pth + qwen25OmniConfig/]): `import_release`;
    - a litgpt weights file (`transformer.*` names: lit_model.pth / model.safetensors) next to its
      model_config.yaml: checked and loaded like the folder's LLM;
    - the released tower `.pth` (Qwen2.5-Omni audio tower names): loads the tower only (warning: the LLM keeps
      its weights).
    False for anything else (a Lightning checkpoint or our own safetensors state dict)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model_config.yaml").exists():
            return False
        import_release(model, path)
        return True
    keys = _peek_keys(path)
    if not keys:
        return False
    if any(k.startswith("transformer.h.") for k in keys):
        cfg_path = path.parent / "model_config.yaml"
        if not cfg_path.is_file():
            raise ValueError(f"init_from={path}: litgpt weights (transformer.* names) need their model_config.yaml "
                             f"next to them to be checked against the model; {cfg_path} not found")
        lc = read_config(path.parent)
        check_release_config(model, lc, str(cfg_path))
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _torch_load_safe(path)
        load_llm(model, state, lc, str(path))
        return True
    tower = set(model.audio_encoder.tower.state_dict())
    if set(strip_tower_prefix(dict.fromkeys(keys))) == tower:
        cfg_dir = path.parent / ENCODER_CONFIG
        if (cfg_dir / "config.json").is_file():
            check_tower_config(model, cfg_dir)
        load_tower_weights(model.audio_encoder, path)
        log.warning("init_from=%s: a released audio tower; only model.audio_encoder was loaded", path)
        return True
    return False


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
