"""MiniMind-O: Thinker (transformers Qwen3ForCausalLM, tied head) + Talker (N Qwen3 decoder layers predicting 8
Mimi codebooks per position from a middle-layer bridge) + audio / vision projectors + frozen side modules.

Dims legend: B batch, R = 9 rows (8 codebooks + text), K = 8, L positions, D Thinker width, H Talker width,
E encoder width, V text vocabulary, V_a = 2112 audio ids, A_n audio clips, I_n images, S speaker-embedding width.

Submodule names are the freezing vocabulary of the stage configs and follow the released state dict:
`thinker.model.*` (released `model.*`), `talker.*`, `audio_proj.mlp.*`, `vision_proj.mlp.*`. The frozen
audio encoder and vision tower are NOT submodules: they never appear in parameters(), the optimizer or the
state dict / checkpoint; they are built on first use from their specs (local folder or seeded random weights)
and follow the model's device / dtype.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM

from omni.minimind_o.encoders import AudioEncoderSpec, VisionEncoderSpec
from omni.minimind_o.talker import Talker, moe_aux_loss, use_moe
from omni.minimind_o.tokens import IGNORE, MiniMindOTokens
from omni.packing import attention_inputs, is_packed, item_of_position

THINKER_DERIVED = ("vocab_size", "tie_word_embeddings")
RMS_NORM_EPS = 1e-6  # released: every RMSNorm (Thinker, q/k norms, Talker, codec_proj, embed_proj); spec pinned facts


def minimind_ffn(hidden: int) -> int:
    """MiniMind's SwiGLU width: ceil(hidden * pi / 64) * 64 (768 -> 2432, 512 -> 1664)."""
    return int(math.ceil(hidden * math.pi / 64) * 64)


@dataclass
class MiniMindOConfig:
    """Architecture truth for one MiniMind-O model. `thinker` holds Qwen3Config kwargs (random init) unless
    `thinker_path` names a local Qwen3 folder; `talker` may override Talker layer kwargs (heads, FFN width)."""

    tokens: MiniMindOTokens = field(default_factory=MiniMindOTokens)
    thinker: dict[str, Any] = field(default_factory=dict)
    thinker_path: str | None = None
    tokenizer_path: str | None = None
    talker_hidden: int | None = None          # default: Thinker width
    talker_layers: int = 4
    talker: dict[str, Any] = field(default_factory=dict)
    bridge_layer: int | None = None           # default: num_hidden_layers // 2 - 1
    adapter_dim: int = 256
    spk_dim: int = 192
    text_scale: float = 3.0
    audio_scale: float = 1.0
    talker_init_from_thinker: bool = False    # Talker layer i <- Thinker layer n - n_talker + i (same widths)
    moe: dict[str, Any] | None = None         # {n_experts: 4, top_k: 1, aux_coef: 5e-4}; null = dense
    audio_encoder: AudioEncoderSpec = field(default_factory=AudioEncoderSpec)
    vision_encoder: VisionEncoderSpec = field(default_factory=VisionEncoderSpec)
    text_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.tokens, dict):
            self.tokens = MiniMindOTokens(**self.tokens)
        if isinstance(self.audio_encoder, dict):
            self.audio_encoder = AudioEncoderSpec(**self.audio_encoder)
        if isinstance(self.vision_encoder, dict):
            self.vision_encoder = VisionEncoderSpec(**self.vision_encoder)
        self.thinker, self.talker = dict(self.thinker), dict(self.talker)
        for key in THINKER_DERIVED:
            if key in self.thinker:
                raise ValueError(f"model.thinker.{key} is derived (tokens.text_vocab, tied head); remove it")
        if self.thinker_path is None and "hidden_size" not in self.thinker:
            raise ValueError("model.thinker needs Qwen3Config kwargs (hidden_size, ...) or set model.thinker_path")
        if self.thinker_path is None:
            self.thinker.setdefault("rms_norm_eps", RMS_NORM_EPS)
        n = self.n_thinker_layers
        if self.bridge_layer is None:
            self.bridge_layer = n // 2 - 1
        if not 0 <= self.bridge_layer < n:
            raise ValueError(f"model.bridge_layer={self.bridge_layer} must be a Thinker layer index in [0, {n})")
        if self.talker_layers < 1:
            raise ValueError(f"model.talker_layers must be >= 1, got {self.talker_layers}")
        if self.moe is not None:
            self.moe = {"n_experts": 4, "top_k": 1, "aux_coef": 5e-4, **dict(self.moe)}
            if not 1 <= self.moe["top_k"] <= self.moe["n_experts"]:
                raise ValueError(f"model.moe: need 1 <= top_k <= n_experts, got {self.moe}")
        if self.talker_init_from_thinker and self.talker_width != self.thinker_hidden:
            raise ValueError("model.talker_init_from_thinker needs talker_hidden == Thinker hidden size")

    @property
    def thinker_config(self) -> Qwen3Config:
        if self.thinker_path:
            return Qwen3Config.from_pretrained(self.thinker_path, **self.thinker)
        return Qwen3Config(**self.thinker, vocab_size=self.tokens.text_vocab, tie_word_embeddings=True)

    @property
    def n_thinker_layers(self) -> int:
        return int(self.thinker["num_hidden_layers"]) if "num_hidden_layers" in self.thinker \
            else int(self.thinker_config.num_hidden_layers)

    @property
    def thinker_hidden(self) -> int:
        return int(self.thinker["hidden_size"]) if "hidden_size" in self.thinker \
            else int(self.thinker_config.hidden_size)

    @property
    def talker_width(self) -> int:
        return int(self.talker_hidden or self.thinker_hidden)

    def talker_config(self, thinker: Qwen3Config) -> Qwen3Config:
        """Qwen3 layer config of the Talker: Thinker's heads / norms / RoPE at width H (head_dim = H / heads),
        FFN = the Thinker's at equal width, else MiniMind's rule; `talker` kwargs override."""
        h = self.talker_width
        heads = int(self.talker.get("num_attention_heads", thinker.num_attention_heads))
        kw = dict(
            hidden_size=h, num_hidden_layers=self.talker_layers, num_attention_heads=heads,
            num_key_value_heads=thinker.num_key_value_heads, head_dim=h // heads,
            intermediate_size=thinker.intermediate_size if h == thinker.hidden_size else minimind_ffn(h),
            rms_norm_eps=thinker.rms_norm_eps, rope_parameters=dict(thinker.rope_parameters),
            max_position_embeddings=thinker.max_position_embeddings, vocab_size=1, hidden_act=thinker.hidden_act,
        )
        if h == thinker.hidden_size:
            kw["head_dim"] = thinker.head_dim
        kw.update(self.talker)
        cfg = Qwen3Config(**kw)
        cfg._attn_implementation = thinker._attn_implementation
        return cfg


class Projector(nn.Module):
    """(..., E) encoder features -> (..., D): LayerNorm -> Linear(E, D) -> GELU -> Linear(D, D) (released `mlp`)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def build_thinker(cfg: MiniMindOConfig) -> Qwen3ForCausalLM:
    if cfg.thinker_path:
        model = Qwen3ForCausalLM.from_pretrained(cfg.thinker_path, **cfg.thinker)
        if model.config.vocab_size != cfg.tokens.text_vocab or not model.config.tie_word_embeddings:
            raise ValueError(f"{cfg.thinker_path}: vocab {model.config.vocab_size} / tied "
                             f"{model.config.tie_word_embeddings}; expected {cfg.tokens.text_vocab} with a tied head")
        return model
    return Qwen3ForCausalLM(cfg.thinker_config)


class MiniMindO(nn.Module):
    def __init__(self, cfg: MiniMindOConfig) -> None:
        super().__init__()
        self.cfg, self.tokens = cfg, cfg.tokens
        self.thinker = build_thinker(cfg)
        tcfg = self.thinker.config
        talker_cfg = cfg.talker_config(tcfg)
        self.talker = Talker(talker_cfg, tcfg.hidden_size, cfg.tokens.n_codebooks, cfg.tokens.audio_vocab,
                             cfg.adapter_dim, cfg.spk_dim, cfg.text_scale, cfg.audio_scale)
        if cfg.moe:
            use_moe(self.thinker.model.layers, tcfg, cfg.moe["n_experts"], cfg.moe["top_k"])
            use_moe(self.talker.layers, talker_cfg, cfg.moe["n_experts"], cfg.moe["top_k"])
        self.audio_proj = Projector(cfg.audio_encoder.out_dim, tcfg.hidden_size)
        self.vision_proj = Projector(cfg.vision_encoder.out_dim, tcfg.hidden_size)
        self.__dict__["_side"] = {}  # frozen side modules, deliberately not registered (see module doc)
        if cfg.talker_init_from_thinker:
            self.init_talker_from_thinker()

    # -- frozen side modules -----------------------------------------------------------------------------------
    def side_module(self, name: str) -> nn.Module:
        """The frozen `audio_encoder` / `vision_encoder`, built on first use on this model's device and dtype."""
        side = self.__dict__["_side"]
        if name not in side:
            spec = {"audio_encoder": self.cfg.audio_encoder, "vision_encoder": self.cfg.vision_encoder}[name]
            ref = self.audio_proj.mlp[1].weight
            side[name] = spec.build().to(device=ref.device, dtype=ref.dtype)
        return side[name]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for module in self.__dict__["_side"].values():
            module._apply(fn)
        return self

    @torch.no_grad()
    def init_talker_from_thinker(self) -> None:
        """Talker layer i <- Thinker layer (n_thinker - n_talker + i): the released init when no Talker weights
        exist and the widths agree."""
        thinker_layers, talker_layers = self.thinker.model.layers, self.talker.layers
        if len(talker_layers) > len(thinker_layers):
            raise ValueError(f"cannot init {len(talker_layers)} Talker layers from {len(thinker_layers)} Thinker layers")
        offset = len(thinker_layers) - len(talker_layers)
        for i, layer in enumerate(talker_layers):
            layer.load_state_dict(thinker_layers[offset + i].state_dict())

    # -- pieces ------------------------------------------------------------------------------------------------
    def embed(self, text_ids: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """(B, L) text ids -> (B, L, D) Thinker input embeddings; projected audio / vision features overwrite the
        `<|audio_pad|>` / `<|image_pad|>` positions in reading order (clips and images ordered by item, then
        position: the collator's order)."""
        x = self.thinker.model.embed_tokens(text_ids)
        for pad_id, feats in ((self.tokens.audio_pad, self.audio_features(batch)),
                              (self.tokens.image_pad, self.image_features(batch))):
            mask = text_ids == pad_id  # (B, L)
            n = int(mask.sum())
            have = 0 if feats is None else feats.shape[0]
            if n != have:
                raise ValueError(f"{n} placeholder ids {pad_id} in the batch but {have} feature frames")
            if n:
                x = x.masked_scatter(mask.unsqueeze(-1), feats.to(x.dtype))
        return x

    def audio_features(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """audio_mels (A_n, n_mels, F) + audio_frames (A_n,) -> (sum frames, D) projected features."""
        mels = batch.get("audio_mels")
        if mels is None or mels.shape[0] == 0:
            return None
        with torch.no_grad():
            enc = self.side_module("audio_encoder")(mels.to(self.audio_proj.mlp[1].weight.dtype))  # (A_n, T, E)
        keep = torch.arange(enc.shape[1], device=enc.device) < batch["audio_frames"].to(enc.device).view(-1, 1)
        return self.audio_proj(enc[keep])

    def image_features(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """pixel_values (I_n, 3, S, S) -> (I_n * tokens, D) projected features."""
        pixels = batch.get("pixel_values")
        if pixels is None or pixels.shape[0] == 0:
            return None
        with torch.no_grad():
            tower = self.side_module("vision_encoder")
            feats = tower(pixel_values=pixels.to(self.vision_proj.mlp[1].weight.dtype)).last_hidden_state
        return self.vision_proj(feats.reshape(-1, feats.shape[-1]))

    @contextmanager
    def _capture_bridge(self, store: list):
        handle = self.thinker.model.layers[self.cfg.bridge_layer].register_forward_hook(
            lambda module, args, out: store.append(out[0] if isinstance(out, tuple) else out))
        try:
            yield
        finally:
            handle.remove()

    def hidden(self, batch: dict[str, Any], thinker_cache=None, talker_cache=None,
               position_ids: torch.Tensor | None = None, talker: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batch (input_ids (B, R, L), features, speaker_emb) -> (Thinker final states (B, L, D),
        Talker final states (B, L, H), or None with talker=False: text-only decoding skips the Talker).
        Caches (transformers DynamicCache) make it incremental for generation."""
        ids = batch["input_ids"]
        x = self.embed(ids[:, self.tokens.text_row], batch)
        # a packed batch (data.packing=true): block-diagonal causal mask + per-row positions for the Thinker AND the
        # Talker, each position's speaker embedding from its own row (omni/packing.py); None / None otherwise
        mask, speaker_index = None, None
        if is_packed(batch):
            mask, position_ids = attention_inputs(batch, self.thinker.config._attn_implementation, x.dtype)
            speaker_index = item_of_position(batch, None)
        bridge: list[torch.Tensor] = []
        with self._capture_bridge(bridge):
            h = self.thinker.model(inputs_embeds=x, attention_mask=mask, position_ids=position_ids,
                                   past_key_values=thinker_cache, use_cache=thinker_cache is not None).last_hidden_state
        if not talker:
            return h, None
        t_in = self.talker.inputs(bridge[0], ids[:, : self.tokens.n_codebooks], self.tokens.speaker,
                                  batch.get("speaker_emb"), speaker_index=speaker_index)
        return h, self.talker.hidden(t_in, position_ids=position_ids, past_key_values=talker_cache,
                                     attention_mask=mask)

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.thinker.lm_head(h)

    def audio_logits(self, g: torch.Tensor, codebook: int) -> torch.Tensor:
        return self.talker.lm_head(g, codebook)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Losses over a collated batch (legend: data/minimind_o/collate.py). Logits only where a target exists."""
        h, g = self.hidden(batch)
        out = self.loss_from_hidden(h, g, batch["targets"], batch["audio_weights"])
        aux = moe_aux_loss(self) if self.cfg.moe else None
        if aux is not None:
            out["loss"] = out["loss"] + self.cfg.moe["aux_coef"] * aux
            out["metrics"] = {"loss_moe_aux": aux.detach()}
        return out

    def loss_from_hidden(self, h: torch.Tensor, g: torch.Tensor, targets: torch.Tensor,
                         weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """h (B, L, D), g (B, L, H), targets (B, R, L), weights (B, K, L) -> text CE (mean over valid targets)
        + mean over codebooks of sum(CE * weight) / count(valid) (spec "Loss and training")."""
        tok = self.tokens
        text_t = targets[:, tok.text_row]
        sel = text_t != IGNORE
        n_text = sel.sum()
        loss_text = F.cross_entropy(self.text_logits(h[sel]).float(), text_t[sel], reduction="sum") \
            / n_text.clamp(min=1)
        # the shared base head is scored once per position with any audio target, then each codebook adds its
        # adapter at its own targets (8x fewer base-head FLOPs than scoring base + adapter per codebook)
        audio_t = targets[:, : tok.n_codebooks].transpose(1, 2)  # (B, L, K)
        any_t = (audio_t != IGNORE).any(-1)  # (B, L)
        g_any, t_any, w_any = g[any_t], audio_t[any_t], weights.transpose(1, 2)[any_t]  # (M, H), (M, K), (M, K)
        base = self.talker.lm_head.base(g_any)  # (M, V_a)
        terms = []
        for c in range(tok.n_codebooks):
            sel_c = t_any[:, c] != IGNORE
            logits = base[sel_c] + self.talker.lm_head.adapters[c](g_any[sel_c])
            ce = F.cross_entropy(logits.float(), t_any[sel_c, c], reduction="none")
            terms.append((ce * w_any[sel_c, c]).sum() / sel_c.sum().clamp(min=1))
        n_audio = (t_any != IGNORE).sum()
        loss_audio = torch.stack(terms).mean()
        return {
            "loss": self.cfg.text_loss_weight * loss_text + self.cfg.audio_loss_weight * loss_audio,
            "loss_text": loss_text, "loss_audio": loss_audio, "n_text_targets": n_text, "n_audio_targets": n_audio,
        }
