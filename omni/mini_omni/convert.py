"""Mini-Omni checkpoint interoperability: released litgpt folders <-> our `MiniOmni`, and a Hugging Face export.

litgpt folder (what gpt-omni releases): `lit_model.pth` (or `model.safetensors` / sharded safetensors + index),
`model_config.yaml` (litgpt `Config` keys plus the Mini-Omni extras text_vocab_size, audio_vocab_size,
cat_audio_vocab_size, whisper_adapter_dim, asr_adapter, post_adapter), tokenizer files. The Whisper encoder is NOT
in it (the released code loads whisper-small separately), so imports keep the base config's whisper settings.

HF folder (ours): `backbone/` (Qwen2ForCausalLM.save_pretrained, safetensors, plus tokenizer files when known),
`omni_extra.safetensors` (audio_adapter.* and, when the encoder has no `whisper_path`, audio_encoder.*),
`omni_config.json` (MiniOmniConfig as JSON, with an informational `token_table`).

Nothing here unpickles code: torch files are read with `torch.load(weights_only=True)`, the rest is safetensors,
YAML (`safe_load`) and JSON. Name legend used in docstrings: D width, H query heads, G KV groups, S head size,
I MLP width, V total vocabulary, E encoder width.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omni.mini_omni.model import AUX_PREFIXES, MiniOmni, MiniOmniConfig
from omni.mini_omni.tokens import MiniOmniTokens

log = logging.getLogger(__name__)

LIT_WEIGHTS = "lit_model.pth"
LIT_CONFIG = "model_config.yaml"
HF_BACKBONE = "backbone"
HF_EXTRA = "omni_extra.safetensors"
HF_CONFIG = "omni_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json")

# Whisper-small encoder (the released audio encoder), used when an import has no base config to take it from.
WHISPER_SMALL: dict[str, Any] = dict(d_model=768, encoder_layers=12, encoder_attention_heads=12,
                                     encoder_ffn_dim=3072, num_mel_bins=80, max_source_positions=1500)
# CLIP ViT-B/32 vision tower (Mini-Omni2's), for a vision checkpoint imported without a base config.
CLIP_VIT_B32: dict[str, Any] = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                    num_attention_heads=12, image_size=224, patch_size=32, projection_dim=512)

# litgpt `Config` defaults for the keys that decide the architecture (litgpt/config.py of gpt-omni/mini-omni):
# a model_config.yaml that omits one of them means this value, exactly as `Config.from_file` would read it.
LITGPT_DEFAULTS: dict[str, Any] = dict(
    block_size=4096, padded_vocab_size=None, head_size=None, n_query_groups=None, intermediate_size=None,
    rotary_percentage=0.25, parallel_residual=True, bias=True, lm_head_bias=False, add_qkv_bias=None,
    shared_attention_norm=False, norm_class_name="LayerNorm", norm_eps=1e-5, mlp_class_name="GptNeoxMLP",
    rope_condense_ratio=1, rope_base=10000, n_expert=0, scale_embeddings=False, tie_word_embeddings=False,
    text_vocab_size=152000, audio_vocab_size=4160, whisper_adapter_dim=768, vision_adapter_dim=512,
    post_adapter=False, asr_adapter="llamamlp", pos_type="rope",
)
# Keys that must hold these values for the network to be a Qwen2 our backbone can represent.
LITGPT_REQUIRED: dict[str, Any] = dict(
    rotary_percentage=1.0, parallel_residual=False, bias=False, lm_head_bias=False, shared_attention_norm=False,
    norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", rope_condense_ratio=1, n_expert=0,
    scale_embeddings=False, pos_type="rope",
)


class UnsafeCheckpointError(ValueError):
    """A checkpoint file needs arbitrary unpickling (custom classes / callables); it was refused, nothing ran."""


# ---------------------------------------------------------------------------------------------------------------
# litgpt config
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LitGPTConfig:
    """The architecture facts of a Mini-Omni litgpt `model_config.yaml` that our model can represent."""

    n_layer: int
    n_head: int
    n_query_groups: int
    n_embd: int
    head_size: int
    intermediate_size: int
    norm_eps: float
    rope_base: float
    block_size: int
    text_vocab_size: int        # padded text vocabulary (152000 released)
    audio_vocab_size: int       # padded audio vocabulary per layer (4160 released)
    padded_vocab_size: int      # whole table: text_vocab_size + n_audio_layers * audio_vocab_size
    whisper_adapter_dim: int    # encoder width E
    asr_adapter: str            # "llamamlp" (SwiGLU, hidden = intermediate_size) or "mlp" (Linear with bias)
    qkv_bias: bool
    tie_word_embeddings: bool = False
    post_adapter: bool = False  # the yaml flag; the released loader forces it off (weights decide, see below)
    vision_adapter_dim: int = 512  # Mini-Omni2: vision feature width C (CLIP ViT-B/32 after its projection)
    has_vision: bool = False       # written by export when the model has a vision adapter

    @property
    def q_per_kv(self) -> int:
        return self.n_head // self.n_query_groups

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "LitGPTConfig":
        """Parse litgpt keys with litgpt's defaults and reject features our Qwen2 backbone cannot express."""
        c = {**LITGPT_DEFAULTS, **raw}
        for key in ("n_layer", "n_head", "n_embd"):
            if key not in raw:
                raise ValueError(f"litgpt config lacks {key!r}")
        bad = {k: c[k] for k, want in LITGPT_REQUIRED.items() if c[k] != want}
        if bad:
            raise ValueError(f"litgpt config is not a Qwen2-style Mini-Omni backbone: {bad} (need "
                             f"{ {k: LITGPT_REQUIRED[k] for k in bad} })")
        n_head, n_embd = int(c["n_head"]), int(c["n_embd"])
        groups = int(c["n_query_groups"] or n_head)
        if n_head % groups:
            raise ValueError(f"n_head={n_head} is not a multiple of n_query_groups={groups}")
        if c["intermediate_size"] is None:
            raise ValueError("litgpt config with mlp_class_name=LLaMAMLP must set intermediate_size")
        if c["asr_adapter"] not in ("llamamlp", "mlp"):
            raise ValueError(f"asr_adapter={c['asr_adapter']!r}: litgpt accepts only 'llamamlp' or 'mlp'")
        # newer litgpt spells the qkv bias `attn_bias`; the Mini-Omni fork `add_qkv_bias` (default: `bias`)
        qkv_bias = c["add_qkv_bias"] if c["add_qkv_bias"] is not None else c.get("attn_bias", c["bias"])
        padded = c["padded_vocab_size"]
        if padded is None:
            raise ValueError("litgpt config lacks padded_vocab_size (the Mini-Omni table size, 181120 released)")
        return cls(
            n_layer=int(c["n_layer"]), n_head=n_head, n_query_groups=groups, n_embd=n_embd,
            head_size=int(c["head_size"] or n_embd // n_head), intermediate_size=int(c["intermediate_size"]),
            norm_eps=float(c["norm_eps"]), rope_base=float(c["rope_base"]), block_size=int(c["block_size"]),
            text_vocab_size=int(c["text_vocab_size"]), audio_vocab_size=int(c["audio_vocab_size"]),
            padded_vocab_size=int(padded), whisper_adapter_dim=int(c["whisper_adapter_dim"]),
            asr_adapter=str(c["asr_adapter"]), qkv_bias=bool(qkv_bias),
            tie_word_embeddings=bool(c["tie_word_embeddings"]), post_adapter=bool(c["post_adapter"]),
            vision_adapter_dim=int(c["vision_adapter_dim"]), has_vision="vision_adapter_dim" in raw,
        )

    def to_dict(self, name: str = "mini-omni") -> dict[str, Any]:
        """Full litgpt `Config` kwargs (only keys the released `Config` dataclass accepts)."""
        rope = int(self.rope_base) if float(self.rope_base).is_integer() else self.rope_base
        return dict(
            name=name, hf_config={}, scale_embeddings=False, block_size=self.block_size,
            vocab_size=self.padded_vocab_size, padding_multiple=512, padded_vocab_size=self.padded_vocab_size,
            n_layer=self.n_layer, n_head=self.n_head, head_size=self.head_size, n_embd=self.n_embd,
            rotary_percentage=1.0, parallel_residual=False, bias=False, lm_head_bias=False,
            n_query_groups=self.n_query_groups, shared_attention_norm=False, norm_class_name="RMSNorm",
            norm_eps=self.norm_eps, mlp_class_name="LLaMAMLP", gelu_approximate="none",
            intermediate_size=self.intermediate_size, rope_condense_ratio=1, rope_base=rope, n_expert=0,
            n_expert_per_token=0, add_qkv_bias=self.qkv_bias, tie_word_embeddings=False,
            text_vocab_size=self.text_vocab_size,
            cat_audio_vocab_size=self.padded_vocab_size - self.text_vocab_size,
            audio_vocab_size=self.audio_vocab_size, whisper_adapter_dim=self.whisper_adapter_dim,
            post_adapter=False, post_adapter_layers=6, asr_adapter=self.asr_adapter,
            **({"vision_adapter_dim": self.vision_adapter_dim} if self.has_vision else {}),
        )


def read_litgpt_config(folder: str | Path) -> LitGPTConfig:
    path = Path(folder) / LIT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (a litgpt checkpoint folder has model_config.yaml)")
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of litgpt Config keys, got {type(raw).__name__}")
    return LitGPTConfig.from_dict(raw)


def tokens_for(lc: LitGPTConfig, text_specials: int = 64, audio_specials: int = 64) -> MiniOmniTokens:
    """Token table from the padded sizes; the specials split (64 / 64 released) is not in the yaml."""
    n_audio, rem = divmod(lc.padded_vocab_size - lc.text_vocab_size, lc.audio_vocab_size)
    if rem or n_audio <= 0:
        raise ValueError(f"padded_vocab_size={lc.padded_vocab_size} is not text_vocab_size={lc.text_vocab_size} "
                         f"+ n * audio_vocab_size={lc.audio_vocab_size}")
    return MiniOmniTokens(text_vocab=lc.text_vocab_size - text_specials, text_specials=text_specials,
                          codebook_size=lc.audio_vocab_size - audio_specials, audio_specials=audio_specials,
                          n_audio_layers=n_audio)


def _whisper_width(cfg: MiniOmniConfig) -> int:
    """Encoder width E the config will build (from a whisper folder's config.json when whisper_path is set)."""
    if cfg.whisper_path and (Path(cfg.whisper_path) / "config.json").is_file():
        return int(json.loads((Path(cfg.whisper_path) / "config.json").read_text())["d_model"])
    from transformers import WhisperConfig

    return int(WhisperConfig(**cfg.whisper).d_model)


def _vision_width(cfg: MiniOmniConfig) -> int:
    """Feature width C the config's vision tower gives the adapter (CLIP: projection_dim, SigLIP: hidden_size)."""
    from omni.mini_omni.vision import VisionTower

    with torch.device("meta"):
        return VisionTower(cfg.vision_arch, cfg.vision, cfg.vision_path).feature_dim


def omni_config_from_litgpt(lc: LitGPTConfig, base: MiniOmniConfig | None = None,
                            tokenizer_path: str | None = None, vision: bool = False) -> MiniOmniConfig:
    """MiniOmniConfig for a litgpt config; whisper / vision-tower / loss settings come from `base` (whisper-small
    and CLIP ViT-B/32 without). `vision`: the checkpoint holds a Mini-Omni2 vision adapter."""
    backbone: dict[str, Any] = dict(
        hidden_size=lc.n_embd, intermediate_size=lc.intermediate_size, num_hidden_layers=lc.n_layer,
        num_attention_heads=lc.n_head, num_key_value_heads=lc.n_query_groups,
        max_position_embeddings=lc.block_size, rms_norm_eps=lc.norm_eps,
        rope_parameters={"rope_theta": lc.rope_base, "rope_type": "default"},
    )
    if lc.head_size != lc.n_embd // lc.n_head:
        backbone["head_dim"] = lc.head_size
    base_tok = base.tokens if base is not None else MiniOmniTokens()
    cfg = MiniOmniConfig(
        tokens=tokens_for(lc, base_tok.text_specials, base_tok.audio_specials),
        backbone=backbone,
        whisper=dict(base.whisper) if base is not None else dict(WHISPER_SMALL),
        backbone_path=None,
        whisper_path=base.whisper_path if base is not None else None,
        tokenizer_path=tokenizer_path or (base.tokenizer_path if base is not None else None),
        adapter="swiglu" if lc.asr_adapter == "llamamlp" else "linear",
        adapter_hidden=lc.intermediate_size,
        text_loss_weight=base.text_loss_weight if base is not None else 1.0,
        audio_loss_weight=base.audio_loss_weight if base is not None else 1.0,
    )
    if vision:
        has_base = base is not None and base.has_vision
        cfg.vision = dict(base.vision) if has_base and base.vision is not None else \
            (None if has_base else dict(CLIP_VIT_B32))
        cfg.vision_path = base.vision_path if has_base else None
        cfg.vision_arch = base.vision_arch if has_base else "clip"
        cfg.vision_adapter_hidden = lc.intermediate_size
        if _vision_width(cfg) != lc.vision_adapter_dim:
            raise ValueError(f"vision_adapter_dim={lc.vision_adapter_dim} but the base config's vision tower gives "
                             f"{_vision_width(cfg)}-d features; pass a base config whose vision settings match")
    width = _whisper_width(cfg)
    if width != lc.whisper_adapter_dim:
        raise ValueError(f"whisper_adapter_dim={lc.whisper_adapter_dim} but the base config's Whisper encoder has "
                         f"d_model={width}; pass a base config whose whisper settings match the checkpoint")
    return cfg


def litgpt_config_from_model(model: MiniOmni) -> LitGPTConfig:
    """The litgpt description of our model; raises where the litgpt Mini-Omni format cannot express it."""
    cfg, bc = model.cfg, model.backbone.config
    tok = cfg.tokens
    rope = dict(getattr(bc, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"litgpt export supports plain RoPE only, got rope_parameters={rope}")
    if getattr(bc, "use_sliding_window", False):
        raise ValueError("litgpt export does not support sliding-window attention")
    hidden = int(bc.hidden_size)
    if cfg.adapter == "swiglu" and cfg.adapter_hidden != bc.intermediate_size:
        raise ValueError(f"litgpt's whisper adapter width is the backbone intermediate_size ({bc.intermediate_size})"
                         f"; this model has adapter_hidden={cfg.adapter_hidden}")
    if cfg.has_vision and cfg.vision_adapter_hidden != bc.intermediate_size:
        raise ValueError(f"litgpt's vision adapter width is the backbone intermediate_size ({bc.intermediate_size})"
                         f"; this model has vision_adapter_hidden={cfg.vision_adapter_hidden}")
    if model.tts_adapter is not None:
        raise ValueError("the litgpt Mini-Omni format has no place for our TTS adapter (tts_adapter.*); "
                         "export with export_hf / ckpt-to-hf instead")
    return LitGPTConfig(
        n_layer=int(bc.num_hidden_layers), n_head=int(bc.num_attention_heads),
        n_query_groups=int(bc.num_key_value_heads), n_embd=hidden,
        head_size=int(getattr(bc, "head_dim", None) or hidden // bc.num_attention_heads),
        intermediate_size=int(bc.intermediate_size), norm_eps=float(bc.rms_norm_eps),
        rope_base=float(rope.get("rope_theta", getattr(bc, "rope_theta", 10000.0))),
        block_size=int(bc.max_position_embeddings), text_vocab_size=tok.text_padded,
        audio_vocab_size=tok.audio_padded, padded_vocab_size=tok.total_vocab,
        whisper_adapter_dim=int(model.audio_encoder.config.d_model),
        asr_adapter="llamamlp" if cfg.adapter == "swiglu" else "mlp", qkv_bias=True,
        **({"vision_adapter_dim": int(model.vision_encoder.feature_dim), "has_vision": True}
           if cfg.has_vision else {}),
    )


# ---------------------------------------------------------------------------------------------------------------
# fused qkv
# ---------------------------------------------------------------------------------------------------------------
def split_qkv(fused: torch.Tensor, n_head: int, n_query_groups: int, head_size: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """litgpt fused qkv rows -> HF q, k, v rows.

    fused: ((H + 2G) * S, ...) grouped per KV group g: [q heads g*H/G .. (g+1)*H/G - 1, k head g, v head g].
    Returns q (H*S, ...) with query head h = g*H/G + j (so HF's repeat_kv pairs it with kv head g), k and v (G*S, ...).
    """
    q_per_kv = n_head // n_query_groups
    rest = fused.shape[1:]
    if fused.shape[0] != (n_head + 2 * n_query_groups) * head_size:
        raise ValueError(f"fused qkv has {fused.shape[0]} rows, expected (n_head + 2 * n_query_groups) * head_size"
                         f" = {(n_head + 2 * n_query_groups) * head_size}")
    x = fused.reshape(n_query_groups, q_per_kv + 2, head_size, *rest)
    q = x[:, :q_per_kv].reshape(n_head * head_size, *rest).clone()
    k = x[:, q_per_kv].reshape(n_query_groups * head_size, *rest).clone()
    v = x[:, q_per_kv + 1].reshape(n_query_groups * head_size, *rest).clone()
    return q, k, v


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int, n_query_groups: int,
              head_size: int) -> torch.Tensor:
    """Inverse of `split_qkv`: q (H*S, ...), k, v (G*S, ...) -> fused ((H + 2G) * S, ...)."""
    q_per_kv = n_head // n_query_groups
    rest = q.shape[1:]
    parts = (q.reshape(n_query_groups, q_per_kv, head_size, *rest),
             k.reshape(n_query_groups, 1, head_size, *rest), v.reshape(n_query_groups, 1, head_size, *rest))
    return torch.cat(parts, dim=1).reshape((n_head + 2 * n_query_groups) * head_size, *rest).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# state-dict mapping
# ---------------------------------------------------------------------------------------------------------------
# per-layer 1:1 renames (litgpt suffix -> our suffix under backbone.model.layers.N.)
_LAYER_RENAMES = {
    "norm_1.weight": "input_layernorm.weight",
    "norm_2.weight": "post_attention_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "mlp.fc_1.weight": "mlp.gate_proj.weight",
    "mlp.fc_2.weight": "mlp.up_proj.weight",
    "mlp.proj.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "transformer.wte.weight": "backbone.model.embed_tokens.weight",
    "transformer.ln_f.weight": "backbone.model.norm.weight",
    "lm_head.weight": "backbone.lm_head.weight",
}
_SWIGLU_RENAMES = {f"whisper_adapter.{n}.weight": f"audio_adapter.{n}.weight" for n in ("fc_1", "fc_2", "proj")}
_TTS_PREFIXES = ("transformer.post_adapter.", "transformer.post_adapter_audio_ln.",
                 "transformer.post_adapter_audio_lm_head.")


def litgpt_shapes(lc: LitGPTConfig, vision: bool = False) -> dict[str, tuple[int, ...]]:
    """Every key (and shape) a litgpt Mini-Omni state dict of config `lc` holds (the Mini-Omni2 vision adapter
    when `vision`; the TTS post-adapter excluded)."""
    D, I, S = lc.n_embd, lc.intermediate_size, lc.head_size
    qkv_rows = (lc.n_head + 2 * lc.n_query_groups) * S
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (lc.padded_vocab_size, D),
        "transformer.ln_f.weight": (D,),
        "lm_head.weight": (lc.padded_vocab_size, D),
    }
    for i in range(lc.n_layer):
        p = f"transformer.h.{i}."
        shapes.update({
            p + "norm_1.weight": (D,), p + "norm_2.weight": (D,),
            p + "attn.attn.weight": (qkv_rows, D), p + "attn.proj.weight": (D, lc.n_head * S),
            p + "mlp.fc_1.weight": (I, D), p + "mlp.fc_2.weight": (I, D), p + "mlp.proj.weight": (D, I),
        })
        if lc.qkv_bias:
            shapes[p + "attn.attn.bias"] = (qkv_rows,)
    E = lc.whisper_adapter_dim
    if lc.asr_adapter == "llamamlp":
        shapes.update({"whisper_adapter.fc_1.weight": (I, E), "whisper_adapter.fc_2.weight": (I, E),
                       "whisper_adapter.proj.weight": (D, I)})
    else:  # nn.Linear(E, D) with litgpt's default bias
        shapes.update({"whisper_adapter.weight": (D, E), "whisper_adapter.bias": (D,)})
    if vision:  # LLaMAMLP(vision_adapter_dim -> intermediate_size -> n_embd), as the whisper adapter
        C = lc.vision_adapter_dim
        shapes.update({"vision_adapter.fc_1.weight": (I, C), "vision_adapter.fc_2.weight": (I, C),
                       "vision_adapter.proj.weight": (D, I)})
    return shapes


def check_litgpt_keys(state: dict[str, torch.Tensor], lc: LitGPTConfig, skip_vision: bool = False
                      ) -> dict[str, torch.Tensor]:
    """Validate keys / shapes against `lc`; returns the state (vision keys dropped under `skip_vision`). Raises
    listing all missing, unexpected or mis-shaped keys."""
    tts = sorted(k for k in state if k.startswith(_TTS_PREFIXES))
    if tts:
        raise ValueError(f"checkpoint holds the TTS post-adapter ({len(tts)} tensors, e.g. {tts[:3]}); "
                         "our MiniOmni has no post-adapter, so it cannot be imported")
    if lc.post_adapter:
        log.info("model_config.yaml says post_adapter: true but the weights have none; ignored as the released "
                 "loader does (it forces config.post_adapter = False)")
    vision = any(k.startswith("vision_adapter.") for k in state)
    if vision and skip_vision:
        log.warning("skip_vision: dropping the vision_adapter.* tensors (the model gets no image input)")
        state = {k: v for k, v in state.items() if not k.startswith("vision_adapter.")}
    shapes = litgpt_shapes(lc, vision=vision and not skip_vision)
    unexpected = sorted(set(state) - set(shapes))
    missing = sorted(set(shapes) - set(state))
    bad_shape = {k: (tuple(state[k].shape), shapes[k]) for k in set(state) & set(shapes)
                 if tuple(state[k].shape) != shapes[k]}
    if unexpected or missing or bad_shape:
        raise ValueError("litgpt state dict does not match model_config.yaml: "
                         f"unexpected={unexpected} missing={missing} "
                         f"wrong_shape(got, expected)={dict(sorted(bad_shape.items()))}")
    return state


def litgpt_to_omni(state: dict[str, torch.Tensor], lc: LitGPTConfig, skip_vision: bool = False
                   ) -> dict[str, torch.Tensor]:
    """litgpt Mini-Omni state dict -> our MiniOmni state dict (audio_encoder.* excluded: not in litgpt files)."""
    state = check_litgpt_keys(state, lc, skip_vision)
    out = {ours: state[theirs] for theirs, ours in _TOP_RENAMES.items()}
    args = (lc.n_head, lc.n_query_groups, lc.head_size)
    for i in range(lc.n_layer):
        p, o = f"transformer.h.{i}.", f"backbone.model.layers.{i}."
        for theirs, ours in _LAYER_RENAMES.items():
            out[o + ours] = state[p + theirs]
        w = state[p + "attn.attn.weight"]
        b = state[p + "attn.attn.bias"] if lc.qkv_bias else w.new_zeros(w.shape[0])  # HF Qwen2 always has it
        for name, wt, bs in zip("qkv", split_qkv(w, *args), split_qkv(b, *args)):
            out[f"{o}self_attn.{name}_proj.weight"] = wt
            out[f"{o}self_attn.{name}_proj.bias"] = bs
    if lc.asr_adapter == "llamamlp":
        out.update({ours: state[theirs] for theirs, ours in _SWIGLU_RENAMES.items()})
    else:
        bias = state["whisper_adapter.bias"]
        if bool(bias.ne(0).any()):
            raise ValueError("asr_adapter=mlp with a non-zero whisper_adapter.bias: our linear adapter has no bias")
        out["audio_adapter.proj.weight"] = state["whisper_adapter.weight"]
    out.update({k: v for k, v in state.items() if k.startswith("vision_adapter.")})  # same names on both sides
    return out


def omni_to_litgpt(state: dict[str, torch.Tensor], lc: LitGPTConfig) -> dict[str, torch.Tensor]:
    """Our MiniOmni state dict (audio_encoder.* ignored) -> litgpt Mini-Omni state dict of compact tensors."""
    out = {theirs: state[ours] for theirs, ours in _TOP_RENAMES.items()}
    args = (lc.n_head, lc.n_query_groups, lc.head_size)
    for i in range(lc.n_layer):
        p, o = f"transformer.h.{i}.", f"backbone.model.layers.{i}."
        for theirs, ours in _LAYER_RENAMES.items():
            out[p + theirs] = state[o + ours]
        q, k, v = (state[f"{o}self_attn.{n}_proj.weight"] for n in "qkv")
        out[p + "attn.attn.weight"] = merge_qkv(q, k, v, *args)
        qb, kb, vb = (state[f"{o}self_attn.{n}_proj.bias"] for n in "qkv")
        out[p + "attn.attn.bias"] = merge_qkv(qb, kb, vb, *args)
    if lc.asr_adapter == "llamamlp":
        out.update({theirs: state[ours] for theirs, ours in _SWIGLU_RENAMES.items()})
    else:
        w = state["audio_adapter.proj.weight"]
        out["whisper_adapter.weight"] = w
        out["whisper_adapter.bias"] = w.new_zeros(w.shape[0])  # released nn.Linear has a bias; strict loads need it
    out.update({k: v for k, v in state.items() if k.startswith("vision_adapter.")})
    return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------
def _torch_load_safe(path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True: plain containers and tensors only, never pickled code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(f"{path}: refused, it needs unpickling beyond plain tensors "
                                    f"(torch.load weights_only=True said: {str(e).splitlines()[0]})") from e
    if isinstance(obj, dict) and set(obj) == {"model"} and isinstance(obj["model"], dict):
        obj = obj["model"]  # litgpt training checkpoints wrap the weights as {"model": state_dict}
    return obj


def read_litgpt_weights(folder: str | Path, weights: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint folder: lit_model.pth, else model.safetensors, else a sharded safetensors index;
    `weights`: that one file of the folder instead (a .safetensors file, or a torch file read weights-only)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if weights is not None:
        weights = Path(weights)
        state = load_file(str(weights)) if weights.suffix == ".safetensors" else _torch_load_safe(weights)
        folder = weights
    elif (folder / LIT_WEIGHTS).is_file():
        state = _torch_load_safe(folder / LIT_WEIGHTS)
    elif (folder / "model.safetensors").is_file():
        state = load_file(str(folder / "model.safetensors"))
    elif index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        state = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_file(str(folder / shard)))
        if missing := sorted(set(weight_map) - set(state)):
            raise ValueError(f"{index}: keys listed but absent from the shards: {missing[:8]}")
    else:
        raise FileNotFoundError(f"{folder}: no {LIT_WEIGHTS}, model.safetensors or model.safetensors.index.json")
    if not isinstance(state, dict):
        raise ValueError(f"{folder}: weights file holds a {type(state).__name__}, expected a dict of tensors")
    if bad := sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor)):
        raise ValueError(f"{folder}: non-tensor entries in the weights: {bad[:8]}")
    return state


def _tokenizer_dir(folder: Path) -> str | None:
    return str(folder) if any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model")) else None


def _copy_tokenizer(src: str | None, dst: Path) -> bool:
    """Copy the tokenizer files of folder `src` into `dst`; False when there is nothing to copy."""
    if not src or not Path(src).is_dir():
        return False
    copied = [n for n in TOKENIZER_FILES if (Path(src) / n).is_file()]
    for name in copied:
        shutil.copyfile(Path(src) / name, dst / name)
    return bool(copied)


# ---------------------------------------------------------------------------------------------------------------
# public API: litgpt
# ---------------------------------------------------------------------------------------------------------------
def import_litgpt(folder: str | Path, base: MiniOmniConfig | None = None, *, skip_vision: bool = False,
                  weights: str | Path | None = None) -> tuple[MiniOmniConfig, dict[str, torch.Tensor]]:
    """Read a released litgpt Mini-Omni folder -> (MiniOmniConfig, our state dict without audio_encoder.*).

    The config's backbone / vocabulary / adapter come from model_config.yaml; whisper settings, whisper_path and
    loss weights from `base` (whisper-small without one); tokenizer_path is the folder when it holds tokenizer files.
    `weights`: one weights file of the folder (e.g. its lit_model.pth) instead of the folder's default choice.
    Tensors keep their stored dtype.
    """
    folder = Path(folder)
    lc = read_litgpt_config(folder)
    state = read_litgpt_weights(folder, weights)
    vision = not skip_vision and any(k.startswith("vision_adapter.") for k in state)
    cfg = omni_config_from_litgpt(lc, base, tokenizer_path=_tokenizer_dir(folder), vision=vision)
    return cfg, litgpt_to_omni(state, lc, skip_vision)


def load_omni_state(model: MiniOmni, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy an imported state dict (everything but audio_encoder.*) into `model`; raises listing any key or shape
    that does not fit, before changing anything."""
    ours = model.state_dict()
    wrong = {k: (tuple(v.shape), tuple(ours[k].shape)) for k, v in state.items()
             if k in ours and tuple(v.shape) != tuple(ours[k].shape)}
    unexpected = sorted(set(state) - set(ours))
    missing = sorted(k for k in set(ours) - set(state)
                     if not k.startswith(("audio_encoder.", "vision_encoder.") + AUX_PREFIXES))
    unexpected = [k for k in unexpected if not k.startswith(AUX_PREFIXES)]
    state = {k: v for k, v in state.items() if k in ours}
    if wrong or missing or unexpected:
        raise ValueError(f"{source} does not fit the model: wrong_shape(checkpoint, model)={wrong} "
                         f"missing={missing} unexpected={unexpected}")
    model.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------------------------------------------------
# what a checkpoint says about itself vs the model it is loaded into
# ---------------------------------------------------------------------------------------------------------------
# compared keys whose mismatch changes nothing a short sequence computes: logged, not fatal
_INFO_ONLY = ("block_size",)


def model_arch_facts(model: MiniOmni) -> dict[str, tuple[Any, str]]:
    """{litgpt key: (value, where the model config holds it)} for every architecture fact a litgpt
    model_config.yaml states (plus rope_type / sliding_window, which the litgpt format fixes)."""
    cfg, bc, tok = model.cfg, model.backbone.config, model.tokens
    rope = dict(getattr(bc, "rope_parameters", None) or {})
    hidden, heads = int(bc.hidden_size), int(bc.num_attention_heads)
    b = "model.cfg.backbone."
    facts: dict[str, tuple[Any, str]] = {
        "n_layer": (int(bc.num_hidden_layers), b + "num_hidden_layers"),
        "n_head": (heads, b + "num_attention_heads"),
        "n_query_groups": (int(bc.num_key_value_heads), b + "num_key_value_heads"),
        "n_embd": (hidden, b + "hidden_size"),
        "head_size": (int(getattr(bc, "head_dim", None) or hidden // heads), b + "head_dim"),
        "intermediate_size": (int(bc.intermediate_size), b + "intermediate_size"),
        "norm_eps": (float(bc.rms_norm_eps), b + "rms_norm_eps"),
        "rope_base": (float(rope.get("rope_theta", getattr(bc, "rope_theta", 10000.0))),
                      b + "rope_parameters.rope_theta"),
        "rope_type": (str(rope.get("rope_type", "default")), b + "rope_parameters.rope_type"),
        "sliding_window": (bool(getattr(bc, "use_sliding_window", False)), b + "use_sliding_window"),
        "tie_word_embeddings": (bool(getattr(bc, "tie_word_embeddings", False)), b + "tie_word_embeddings"),
        "block_size": (int(bc.max_position_embeddings), b + "max_position_embeddings"),
        "text_vocab_size": (tok.text_padded, "model.cfg.tokens.text_vocab + text_specials"),
        "audio_vocab_size": (tok.audio_padded, "model.cfg.tokens.codebook_size + audio_specials"),
        "padded_vocab_size": (tok.total_vocab, "model.cfg.tokens (text + n_audio_layers x audio)"),
        "whisper_adapter_dim": (int(model.audio_encoder.config.d_model), "model.cfg.whisper.d_model"),
        "asr_adapter": ("llamamlp" if cfg.adapter == "swiglu" else "mlp", "model.cfg.adapter"),
    }
    if cfg.adapter == "swiglu":
        facts["intermediate_size (whisper_adapter width)"] = (int(cfg.adapter_hidden), "model.cfg.adapter_hidden")
    if cfg.has_vision:
        facts["vision_adapter_dim"] = (int(model.vision_encoder.feature_dim), "model.cfg.vision (tower feature width)")
        facts["intermediate_size (vision_adapter width)"] = (int(cfg.vision_adapter_hidden),
                                                             "model.cfg.vision_adapter_hidden")
    else:
        facts["vision_adapter_dim"] = (None, "model.cfg.vision (no vision tower)")
    return facts


def litgpt_arch_facts(lc: LitGPTConfig) -> dict[str, Any]:
    """The same facts as `model_arch_facts`, as a litgpt model_config.yaml states them."""
    facts: dict[str, Any] = dict(
        n_layer=lc.n_layer, n_head=lc.n_head, n_query_groups=lc.n_query_groups, n_embd=lc.n_embd,
        head_size=lc.head_size, intermediate_size=lc.intermediate_size, norm_eps=lc.norm_eps,
        rope_base=lc.rope_base, rope_type="default", sliding_window=False,
        tie_word_embeddings=lc.tie_word_embeddings, block_size=lc.block_size, text_vocab_size=lc.text_vocab_size,
        audio_vocab_size=lc.audio_vocab_size, padded_vocab_size=lc.padded_vocab_size,
        whisper_adapter_dim=lc.whisper_adapter_dim, asr_adapter=lc.asr_adapter,
    )
    if lc.asr_adapter == "llamamlp":
        facts["intermediate_size (whisper_adapter width)"] = lc.intermediate_size
    if lc.has_vision:  # the yaml names a vision adapter (without the key, the weights decide: load_omni_state)
        facts["vision_adapter_dim"] = lc.vision_adapter_dim
        facts["intermediate_size (vision_adapter width)"] = lc.intermediate_size
    return facts


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def check_arch_facts(theirs: dict[str, Any], model: MiniOmni, source: str) -> None:
    """Raise ValueError naming every key on which the checkpoint's own config (`theirs`) and the model's config
    disagree, with both values; keys in _INFO_ONLY are only logged. Keys the checkpoint does not state are skipped."""
    ours = model_arch_facts(model)
    bad = []
    for key, value in theirs.items():
        if key not in ours:
            continue
        mine, where = ours[key]
        if _same(value, mine):
            continue
        line = f"{key}: checkpoint {value!r}, model {mine!r} ({where})"
        if key in _INFO_ONLY:
            log.info("%s: %s (does not change the weights' meaning)", source, line)
        else:
            bad.append(line)
    if bad:
        raise ValueError(f"{source} describes another architecture than the model config; fix the model config "
                         "(or pick the matching conf/model) - " + "; ".join(bad))


def load_litgpt_into(model: MiniOmni, folder: str | Path, *, skip_vision: bool = False,
                     weights: str | Path | None = None) -> MiniOmniConfig:
    """Load a litgpt folder's weights into an existing model (all but audio_encoder.*, which it does not hold),
    through the converter CLI's import (`import_litgpt`). First the folder's model_config.yaml is compared key by
    key with the model's config (layers, heads, KV groups, widths, norm eps, rope base, vocabulary, adapters): a
    mismatch raises naming the key and both values, before any tensor is read. Returns the imported config."""
    folder = Path(folder)
    facts = litgpt_arch_facts(read_litgpt_config(folder))
    if skip_vision:
        facts = {k: v for k, v in facts.items() if "vision" not in k}
    check_arch_facts(facts, model, str(folder / LIT_CONFIG))
    cfg, state = import_litgpt(folder, model.cfg, skip_vision=skip_vision, weights=weights)
    load_omni_state(model, state, str(weights or folder))
    return cfg


def export_litgpt(model: MiniOmni, folder: str | Path, name: str = "mini-omni", *, merge_lora: bool = True) -> Path:
    """Write lit_model.pth (a plain dict of tensors), model_config.yaml and tokenizer files (when the model's
    tokenizer_path is a folder). The Whisper encoder is not written, as in the released format. LoRA adapters
    (lora=) are merged into the weights written; merge_lora=False: base weights + lora_adapters.safetensors."""
    import yaml

    from omni.lora import prepare_export

    folder = Path(folder)
    model = prepare_export(model, merge_lora, folder / "lora_adapters.safetensors")
    folder.mkdir(parents=True, exist_ok=True)
    lc = litgpt_config_from_model(model)
    torch.save(omni_to_litgpt(model.state_dict(), lc), folder / LIT_WEIGHTS)
    (folder / LIT_CONFIG).write_text(yaml.safe_dump(lc.to_dict(name), sort_keys=True), encoding="utf-8")
    _copy_tokenizer(model.cfg.tokenizer_path, folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# public API: Hugging Face
# ---------------------------------------------------------------------------------------------------------------
def token_table(tok: MiniOmniTokens) -> dict[str, Any]:
    """Informational id table written next to the config (readers outside this package need no code)."""
    return dict(
        text_padded=tok.text_padded, audio_padded=tok.audio_padded, total_vocab=tok.total_vocab,
        text_row=tok.text_row, audio_offsets=[tok.audio_offset(i) for i in range(tok.n_audio_layers)],
        text_specials={n: getattr(tok, n) for n in ("eot", "pad_t", "input_t", "answer_t", "asr")},
        audio_specials_local={n: getattr(tok, n) for n in ("eoa", "pad_a", "input_a", "answer_a", "split",
                                                          "image", "end_image")},
    )


def export_hf(model: MiniOmni, folder: str | Path, *, include_encoder: bool | None = None,
              merge_lora: bool = True) -> Path:
    """Write `backbone/` (save_pretrained, safetensors; tokenizer files too when known), omni_extra.safetensors
    (audio_adapter.*, vision_adapter.*, tts_adapter.*, audio_ctc.*, plus audio_encoder.* when `include_encoder` -
    default: when the model has no whisper_path - and vision_encoder.* when the model has no vision_path)
    and omni_config.json. Paths inside the folder are stored relative to it. LoRA adapters (lora=) are merged
    into the weights written; merge_lora=False: base weights + lora_adapters.safetensors."""
    from safetensors.torch import save_file

    from omni.lora import prepare_export

    folder = Path(folder)
    model = prepare_export(model, merge_lora, folder / "lora_adapters.safetensors")
    (folder / HF_BACKBONE).mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    model.backbone.save_pretrained(str(folder / HF_BACKBONE))
    has_tok = _copy_tokenizer(cfg.tokenizer_path, folder / HF_BACKBONE)
    if include_encoder is None:
        include_encoder = cfg.whisper_path is None
    prefixes = ("audio_adapter.", "vision_adapter.", "tts_adapter.") + AUX_PREFIXES + \
        (("audio_encoder.",) if include_encoder else ())
    if cfg.has_vision and cfg.vision_path is None:
        prefixes += ("vision_encoder.",)  # random / trained tower with no folder to come back from
    extra = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(prefixes)}
    save_file(extra, str(folder / HF_EXTRA), metadata={"format": "pt"})
    raw = dataclasses.asdict(cfg)
    raw["backbone_path"] = HF_BACKBONE
    raw["tokenizer_path"] = HF_BACKBONE if has_tok else cfg.tokenizer_path
    raw["token_table"] = token_table(cfg.tokens)
    (folder / HF_CONFIG).write_text(json.dumps(raw, indent=2, sort_keys=True), encoding="utf-8")
    return folder


def read_hf_config(folder: str | Path, whisper_path: str | None = None) -> MiniOmniConfig:
    """MiniOmniConfig of an `export_hf` folder, relative paths resolved against it."""
    folder = Path(folder)
    raw = json.loads((folder / HF_CONFIG).read_text(encoding="utf-8"))
    table = raw.pop("token_table", None)
    cfg = MiniOmniConfig(**raw)
    if table is not None and table != json.loads(json.dumps(token_table(cfg.tokens))):
        raise ValueError(f"{folder / HF_CONFIG}: token_table disagrees with the tokens it was written from")
    cfg.backbone_path = str(folder / cfg.backbone_path) if cfg.backbone_path else str(folder / HF_BACKBONE)
    if cfg.tokenizer_path and not Path(cfg.tokenizer_path).is_absolute() and (folder / cfg.tokenizer_path).is_dir():
        cfg.tokenizer_path = str(folder / cfg.tokenizer_path)
    if whisper_path is not None:
        cfg.whisper_path = whisper_path
    return cfg


def load_hf(folder: str | Path, *, whisper_path: str | None = None) -> MiniOmni:
    """Rebuild a MiniOmni from an `export_hf` folder: backbone from `backbone/`, adapter (and encoder when saved)
    from omni_extra.safetensors; otherwise the encoder comes from whisper_path (argument or saved config)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_hf_config(folder, whisper_path)
    extra = load_file(str(folder / HF_EXTRA))
    if not any(k.startswith("audio_encoder.") for k in extra) and not cfg.whisper_path:
        log.warning("%s holds no audio encoder and no whisper_path is known: the encoder is random", folder)
    model = MiniOmni(cfg)
    missing, unexpected = model.load_state_dict(extra, strict=False)
    missing = [k for k in missing if not k.startswith(("backbone.", "audio_encoder.", "vision_encoder."))]
    if missing or unexpected:
        raise ValueError(f"{folder / HF_EXTRA} does not fit: missing={missing} unexpected={unexpected}")
    return model


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
def base_config_from_yaml(path: str | Path) -> MiniOmniConfig:
    """MiniOmniConfig from a conf/model/*.yaml file (its `cfg:` or, in `_global_` packaging, `model.cfg:` node),
    resolvers applied."""
    from omegaconf import OmegaConf

    from omni.config import load_group_config, register_resolvers

    register_resolvers()
    node = load_group_config(path)  # a tiny config inherits its full one through its defaults list
    node = node.model if "model" in node and "cfg" not in node else node
    if "cfg" not in node:
        raise ValueError(f"{path}: no `cfg:` / `model.cfg:` node (expected a conf/model/*.yaml file)")
    raw = OmegaConf.to_container(node.cfg, resolve=True)
    raw.pop("_target_", None), raw.pop("_convert_", None)
    return MiniOmniConfig(**raw)


def init_from(model: MiniOmni, path: str | Path) -> bool:
    """`init_from=` for Mini-Omni: a released litgpt folder (`model_config.yaml` + `lit_model.pth` / safetensors),
    one weights file of such a folder (e.g. `.../lit_model.pth`, its model_config.yaml beside it), or our Hugging
    Face export (`omni_config.json`), all through the converter CLI's readers. The checkpoint's own config is
    compared with the model's first (a mismatch raises naming the key and both values). Folders keep the model's
    own audio encoder (released folders hold no Whisper). False for anything else (a Lightning checkpoint or
    state-dict file of our own names)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".ckpt" and (path.parent / LIT_CONFIG).is_file():
            load_litgpt_into(model, path.parent, weights=path)
            return True
        if path.name == LIT_WEIGHTS:
            raise ValueError(f"{path}: a litgpt weights file needs its {LIT_CONFIG} beside it (the released folder "
                             "holds both); pass the folder, or copy the yaml next to the file")
        return False
    if not path.is_dir():
        return False
    if (path / LIT_CONFIG).exists():
        load_litgpt_into(model, path)
    elif (path / HF_CONFIG).exists():
        other = load_hf(path)
        check_arch_facts({k: v for k, (v, _) in model_arch_facts(other).items()}, model, str(path / HF_CONFIG))
        state = other.state_dict()
        load_omni_state(model, {k: v for k, v in state.items() if not k.startswith("audio_encoder.")}, str(path))
    else:  # omni.checkpoint.load_model_weights then says it is no checkpoint folder this family reads
        log.error("%s: not a Mini-Omni checkpoint folder (expected model_config.yaml + lit_model.pth, or "
                  "omni_config.json from an export)", path)
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    """python -m omni.mini_omni.convert {litgpt-to-hf,hf-to-litgpt,ckpt-to-litgpt,ckpt-to-hf} SRC DST [--whisper-path P]
    [--model-config conf/model/X.yaml] [--skip-vision]"""
    parser = argparse.ArgumentParser(prog="python -m omni.mini_omni.convert", description=main.__doc__)
    parser.add_argument("direction", choices=["litgpt-to-hf", "hf-to-litgpt", "ckpt-to-litgpt", "ckpt-to-hf"])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--whisper-path", default=None, help="local whisper-small folder (HF format)")
    parser.add_argument("--model-config", default=None,
                        help="conf/model yaml whose whisper settings the import keeps (default: whisper-small)")
    parser.add_argument("--skip-vision", action="store_true", help="drop Mini-Omni2 vision_adapter.* tensors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.direction.startswith("ckpt-to-"):  # a train.py checkpoint (model rebuilt from its stored config)
        from omni.checkpoint import load_for_eval

        model, _ = load_for_eval(args.src)
        (export_litgpt if args.direction == "ckpt-to-litgpt" else export_hf)(model, args.dst)
    elif args.direction == "litgpt-to-hf":
        base = (base_config_from_yaml(args.model_config) if args.model_config
                else MiniOmniConfig(whisper=dict(WHISPER_SMALL)))
        if args.whisper_path:
            base.whisper_path = args.whisper_path
        cfg, state = import_litgpt(args.src, base, skip_vision=args.skip_vision)
        model = MiniOmni(cfg)
        load_omni_state(model, state, args.src)
        # without a real encoder, do not write the random one: load_hf(dst, whisper_path=...) supplies it
        export_hf(model, args.dst, include_encoder=False)
    else:
        export_litgpt(load_hf(args.src, whisper_path=args.whisper_path), args.dst)
    log.info("wrote %s", args.dst)


if __name__ == "__main__":
    main()
