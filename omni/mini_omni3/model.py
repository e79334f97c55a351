"""Mini-Omni3 model: Hugging Face Qwen2 LLM + chunk-wise Qwen2.5-Omni audio tower (+ optional projection).

The PAD / AUDIO_PAD placeholder embeddings are replaced by encoder frames; one next-token loss over the targets,
logits only where a target exists. Dims legend: B batch, L sequence, C chunks in the batch, M mel bins,
E encoder output width, D LLM width, V vocabulary, N target positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from omni.mini_omni3.encoder import FRAMES_PER_CHUNK, ChunkwiseAudioEncoder, audio_config, load_tower_weights
from omni.mini_omni3.layout import RELEASED_SYSTEM_PROMPT
from omni.mini_omni3.metrics import decision_counts
from omni.mini_omni3.tokens import IGNORE, MiniOmni3Tokens
from omni.packing import attention_inputs, is_packed, item_of_position

PROJECTIONS = ("auto", "none", "linear")


@dataclass
class MiniOmni3Config:
    """Architecture truth for one Mini-Omni3 model. `backbone` / `encoder` are transformers config kwargs (Qwen2
    and Qwen2.5-Omni audio tower) for random init; `backbone_path` (HF folder), `encoder_config_path` (the
    released nested config) and `encoder_path` (the released tower `.pth`) bring real local weights.
    `projection`: "auto" adds a Linear E -> D only when the tower's output_dim differs from the LLM width (the
    release bakes the projection into the tower), "linear" always, "none" never (widths must then agree)."""

    tokens: MiniOmni3Tokens | dict = field(default_factory=MiniOmni3Tokens)
    backbone: dict[str, Any] = field(default_factory=dict)
    encoder: dict[str, Any] = field(default_factory=dict)
    backbone_path: str | None = None
    encoder_config_path: str | None = None
    encoder_path: str | None = None
    tokenizer_path: str | None = None
    projection: str = "auto"
    system_prompt: str = RELEASED_SYSTEM_PROMPT
    keep_silence_weight: float = 1.0   # < 1 down-weights the dominant KEEP_SILENCE targets (released: 1)

    def __post_init__(self) -> None:
        self.tokens = MiniOmni3Tokens.from_config(self.tokens)
        self.backbone, self.encoder = dict(self.backbone), dict(self.encoder)
        if self.projection not in PROJECTIONS:
            raise ValueError(f"model.projection={self.projection!r} is not one of {list(PROJECTIONS)}")
        if "vocab_size" in self.backbone:
            raise ValueError("model.backbone.vocab_size is derived from model.tokens.vocab_size; remove it")
        if self.keep_silence_weight <= 0:
            raise ValueError(f"keep_silence_weight must be > 0, got {self.keep_silence_weight}")

    @property
    def n_mels(self) -> int:
        return int(audio_config(self.encoder, self.encoder_config_path).num_mel_bins)


def build_backbone(cfg: MiniOmni3Config) -> Qwen2ForCausalLM:
    """Qwen2 LLM with the token table's row count (a local folder is resized to it when it differs)."""
    rows = cfg.tokens.vocab_size
    if cfg.backbone_path:
        model = Qwen2ForCausalLM.from_pretrained(cfg.backbone_path, **cfg.backbone)
        if model.get_input_embeddings().weight.shape[0] != rows:
            model.resize_token_embeddings(rows)
        return model
    return Qwen2ForCausalLM(Qwen2Config(**cfg.backbone, vocab_size=rows))


class MiniOmni3(nn.Module):
    """Submodule names are the freezing vocabulary of the stage configs: `backbone.*` (LLM), `audio_encoder.*`
    (the tower), `audio_projector.*` (only when a projection exists)."""

    def __init__(self, cfg: MiniOmni3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens = cfg.tokens
        self.backbone = build_backbone(cfg)
        self.audio_encoder = ChunkwiseAudioEncoder(audio_config(cfg.encoder, cfg.encoder_config_path))
        if cfg.encoder_path:
            load_tower_weights(self.audio_encoder, cfg.encoder_path)
        d_model, d_enc = self.backbone.config.hidden_size, self.audio_encoder.output_dim
        project = cfg.projection == "linear" or (cfg.projection == "auto" and d_enc != d_model)
        if cfg.projection == "none" and d_enc != d_model:
            raise ValueError(f"projection=none but the tower outputs {d_enc} and the LLM width is {d_model}")
        self.audio_projector = nn.Linear(d_enc, d_model) if project else None

    # -- pieces ------------------------------------------------------------------------------------------------
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.audio_encoder.parameters())

    def encode_chunks(self, mels: torch.Tensor) -> torch.Tensor:
        """(C, M, 40) per-chunk log-mel -> (C, 10, E) tower frames (no graph when the tower is frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen()):
            return self.audio_encoder(mels)

    def project(self, frames: torch.Tensor) -> torch.Tensor:
        """(..., E) tower frames -> (..., D) LLM-width frames."""
        return self.audio_projector(frames) if self.audio_projector is not None else frames

    def embed(self, input_ids: torch.Tensor, frames: torch.Tensor | None = None,
              positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids -> (B, L, D) embeddings with frames (n, D) written at flat positions (n,) into B * L."""
        x = self.backbone.get_input_embeddings()(input_ids)
        if frames is None or positions is None or positions.numel() == 0:
            return x
        B, L, D = x.shape
        if frames.shape[0] != positions.numel():
            raise ValueError(f"{frames.shape[0]} audio frames for {positions.numel()} placeholder positions")
        return x.reshape(B * L, D).index_copy(0, positions, frames.to(x.dtype)).view(B, L, D)

    def encode_clips(self, mels: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Offline clips (M, sum F) + lens (K,) -> (sum N, E), each clip ONE tower audio (no graph when frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen()):
            return self.audio_encoder.encode_clip(mels, lens)

    def clip_frames(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """(sum N, D) offline frames of a batch (whole-clip tower calls), or None."""
        feats = batch.get("clip_features")
        if feats is None and batch.get("clip_mels") is not None:
            feats = self.encode_clips(batch["clip_mels"], batch["clip_lens"])
        return None if feats is None else self.project(feats)

    def audio_frames(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """(C * 10, D) frames of a batch, from precomputed tower features or from per-chunk mels."""
        feats = batch.get("audio_features")
        if feats is None and batch.get("audio_mels") is not None:
            feats = self.encode_chunks(batch["audio_mels"])
        if feats is None:
            return None
        return self.project(feats.reshape(-1, feats.shape[-1]))

    def embed_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, L, D) input embeddings of a collated batch: chunk frames at `audio_positions`, offline whole-clip
        frames at `clip_positions`."""
        x = self.embed(batch["input_ids"], self.audio_frames(batch), batch.get("audio_positions"))
        clips = self.clip_frames(batch)
        pos = batch.get("clip_positions")
        if clips is None and (pos is None or pos.numel() == 0):
            return x
        if clips is None or pos is None or clips.shape[0] != pos.numel():
            raise ValueError(f"{0 if clips is None else clips.shape[0]} offline audio frames for "
                             f"{0 if pos is None else pos.numel()} AUDIO_PAD positions")
        B, L, D = x.shape
        return x.reshape(B * L, D).index_copy(0, pos, clips.to(x.dtype)).view(B, L, D)

    def hidden(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any):
        """LLM without its head: (B, L, D) -> BaseModelOutputWithPast."""
        return self.backbone.model(inputs_embeds=embeds, attention_mask=attention_mask, **kw)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V)."""
        return self.backbone.lm_head(h)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Loss over a collated streaming batch (legend: data/mini_omni3/collate.py)."""
        x = self.embed_batch(batch)
        # a packed batch (data.packing=true): block-diagonal causal mask + per-row positions (omni/packing.py)
        mask, positions = attention_inputs(batch, self.backbone.config._attn_implementation, x.dtype)
        h = self.hidden(x, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state  # no KV cache
        rows = None if not is_packed(batch) else item_of_position(batch, None)
        return self.loss_from_hidden(h, batch["targets"], batch.get("decision_mask"), rows)

    def loss_from_hidden(self, h: torch.Tensor, targets: torch.Tensor,
                         decision_mask: torch.Tensor | None = None, rows: torch.Tensor | None = None
                         ) -> dict[str, Any]:
        """h (B, L, D), targets (B, L) next-token ids or IGNORE, decision_mask (B, L) bool, rows (B, L) the
        session each position belongs to (a packed batch; default: its sequence). Logits only at the N target
        positions; KEEP_SILENCE targets weigh `keep_silence_weight`. Also returns the batch's decision counts
        (`decision_counts`; the split's scores come from their sums: metrics.DecisionMetrics)."""
        tok = self.tokens
        sel = targets != IGNORE  # (B, L)
        tgt = targets[sel]  # (N,)
        logits = self.logits(h[sel]).float()  # (N, V)
        ce = F.cross_entropy(logits, tgt, reduction="none")
        w = torch.where(tgt == tok.keep_silence, self.cfg.keep_silence_weight, 1.0).to(ce.dtype)
        loss = (ce * w).sum() / w.sum().clamp(min=1e-6)
        out: dict[str, Any] = {
            "loss": loss, "loss_text": loss, "loss_audio": loss.new_zeros(()),
            "n_text_targets": sel.sum(), "n_audio_targets": torch.zeros((), dtype=torch.long, device=h.device),
        }
        if decision_mask is not None and bool(decision_mask.any()):
            counts = self.decision_counts(logits.detach(), tgt, sel, decision_mask, rows)
            out["decision_counts"] = counts
        return out

    def decision_counts(self, logits: torch.Tensor, tgt: torch.Tensor, sel: torch.Tensor,
                        decision_mask: torch.Tensor, rows: torch.Tensor | None = None) -> dict[str, int]:
        """Argmax at the decision positions (a subset of the target positions) -> summable counts."""
        tok = self.tokens
        is_dec = decision_mask[sel]  # (N,) which target positions are decisions
        pred, true = logits[is_dec].argmax(-1), tgt[is_dec]
        # (n_dec,) batch item (session) of each, in sequence order
        item = (sel.nonzero()[:, 0] if rows is None else rows[sel])[is_dec]
        return decision_counts(pred == tok.text_begin, true == tok.text_begin, pred == true, item)

    @property
    def frames_per_chunk(self) -> int:
        return FRAMES_PER_CHUNK


def config_from_yaml(path: str) -> MiniOmni3Config:
    """MiniOmni3Config from a conf/model/mini_omni3*.yaml file (`cfg:` or, in `_global_` packaging,
    `model.cfg:`), resolvers applied."""
    from omegaconf import OmegaConf

    from omni.config import load_group_config, register_resolvers

    register_resolvers()
    node = load_group_config(path)  # a tiny config inherits its full one through its defaults list
    node = node.model if "model" in node and "cfg" not in node else node
    if "cfg" not in node:
        raise ValueError(f"{path}: no `cfg:` / `model.cfg:` node (expected a conf/model/mini_omni3*.yaml file)")
    raw = OmegaConf.to_container(node.cfg, resolve=True)
    raw.pop("_target_", None), raw.pop("_convert_", None)
    return MiniOmni3Config(**raw)
