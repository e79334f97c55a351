"""Mini-Omni model: Hugging Face Qwen2 backbone + Whisper encoder + SwiGLU adapter, 8 streams, one sliced head.

Dims legend: B batch, R = 8 rows (7 audio layers + text), L sequence, T encoder frames, F mel frames,
D backbone width, E encoder width, V vocabulary slice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from omni.mini_omni.tokens import IGNORE, MiniOmniTokens


@dataclass
class MiniOmniConfig:
    """Architecture truth for one Mini-Omni model. `backbone` / `whisper` are transformers config kwargs used for
    random init; `backbone_path` / `whisper_path` load real local weights instead (never a hub id at test time)."""

    tokens: MiniOmniTokens = field(default_factory=MiniOmniTokens)
    backbone: dict[str, Any] = field(default_factory=dict)
    whisper: dict[str, Any] = field(default_factory=dict)
    backbone_path: str | None = None
    whisper_path: str | None = None
    tokenizer_path: str | None = None
    adapter: str = "swiglu"          # "swiglu" (released) or "linear"
    adapter_hidden: int = 4864
    text_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.tokens, dict):
            self.tokens = MiniOmniTokens(**self.tokens)
        if self.adapter not in ADAPTERS:
            raise ValueError(f"model.adapter={self.adapter!r} is not one of {sorted(ADAPTERS)}")
        self.backbone = dict(self.backbone)
        self.whisper = dict(self.whisper)
        for key in ("vocab_size", "tie_word_embeddings"):
            if key in self.backbone:
                raise ValueError(f"model.backbone.{key} is derived from model.tokens; remove it from the config")

    @property
    def n_mels(self) -> int:
        return int(self.whisper.get("num_mel_bins", 80))

    @property
    def max_source_positions(self) -> int:
        return int(self.whisper.get("max_source_positions", 1500))

    @property
    def window_s(self) -> float:
        """Seconds of audio one encoder window covers (30 s for Whisper): 50 encoder frames per second."""
        return self.max_source_positions / 50.0


class SwiGLUAdapter(nn.Module):
    """out = proj(silu(fc_1 x) * fc_2 x); names match the released `whisper_adapter.*` weights."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.fc_1 = nn.Linear(d_in, d_hidden, bias=False)
        self.fc_2 = nn.Linear(d_in, d_hidden, bias=False)
        self.proj = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.fc_1(x)) * self.fc_2(x))


class LinearAdapter(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


ADAPTERS = {"swiglu": SwiGLUAdapter, "linear": LinearAdapter}


def build_backbone(cfg: MiniOmniConfig) -> Qwen2ForCausalLM:
    """Qwen2 with the full 8-stream vocabulary and an untied head (local weights resized when given)."""
    total = cfg.tokens.total_vocab
    if cfg.backbone_path:
        model = Qwen2ForCausalLM.from_pretrained(cfg.backbone_path, **cfg.backbone)
        model.resize_token_embeddings(total)
        if model.config.tie_word_embeddings:
            model.config.tie_word_embeddings = False
            model.lm_head.weight = nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        return model
    config = Qwen2Config(**cfg.backbone, vocab_size=total, tie_word_embeddings=False)
    return Qwen2ForCausalLM(config)


def build_whisper_encoder(cfg: MiniOmniConfig) -> WhisperEncoder:
    if cfg.whisper_path:
        from transformers import WhisperModel

        return WhisperModel.from_pretrained(cfg.whisper_path).get_encoder()
    return WhisperEncoder(WhisperConfig(**cfg.whisper))


class MiniOmni(nn.Module):
    """The Mini-Omni network. Submodule names are the freezing vocabulary of the stage configs:
    `backbone.*` (LLM incl. shared embedding and head), `audio_encoder.*` (Whisper), `audio_adapter.*`."""

    def __init__(self, cfg: MiniOmniConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens = cfg.tokens
        self.backbone = build_backbone(cfg)
        self.audio_encoder = build_whisper_encoder(cfg)
        d_model = self.backbone.config.hidden_size
        self.audio_adapter = ADAPTERS[cfg.adapter](self.audio_encoder.config.d_model, cfg.adapter_hidden, d_model)
        self.register_buffer("row_offsets", cfg.tokens.row_offsets(), persistent=False)

    # -- pieces ------------------------------------------------------------------------------------------------
    @property
    def head_weight(self) -> torch.Tensor:
        return self.backbone.lm_head.weight

    def encode_audio(self, mels: torch.Tensor) -> torch.Tensor:
        """(B_a, n_mels, F) padded mel windows -> (B_a, T_max, D) adapter outputs."""
        feats = self.audio_encoder(input_features=mels).last_hidden_state  # (B_a, T_max, E)
        return self.audio_adapter(feats)

    def embed(
        self,
        ids: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_index: torch.Tensor | None = None,
        audio_start: torch.Tensor | None = None,
        audio_len: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean of the 8 stream embeddings; adapter outputs replace the 7 audio rows at the audio span.

        ids: (B, 8, L) LOCAL layout ids. audio: (B_a, T_max, D) for the items audio_index (B_a,), placed at
        positions [audio_start, audio_start + audio_len) of those items. Returns (B, L, D).
        """
        n_audio = self.tokens.n_audio_layers
        emb = self.backbone.get_input_embeddings()(ids + self.row_offsets.view(1, -1, 1))  # (B, 8, L, D)
        audio_sum = emb[:, :n_audio].sum(dim=1)  # (B, L, D)
        if audio is not None and audio_index is not None and audio_index.numel() > 0:
            L = ids.shape[-1]
            t_max = audio.shape[1]
            pos = torch.arange(L, device=ids.device)  # (L,)
            rel = pos.view(1, -1) - audio_start.view(-1, 1)  # (B_a, L) offset into the encoder output
            inside = (rel >= 0) & (rel < audio_len.view(-1, 1))  # (B_a, L)
            gathered = torch.gather(audio, 1, rel.clamp(0, t_max - 1).unsqueeze(-1).expand(-1, -1, audio.shape[-1]))
            injected = torch.where(inside.unsqueeze(-1), n_audio * gathered.to(audio_sum.dtype),
                                   audio_sum[audio_index])
            audio_sum = audio_sum.index_copy(0, audio_index, injected)
        return (audio_sum + emb[:, n_audio]) / self.tokens.n_rows

    def hidden(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any):
        """Backbone transformer without its head: (B, L, D) -> BaseModelOutputWithPast."""
        return self.backbone.model(inputs_embeds=embeds, attention_mask=attention_mask, **kw)

    def row_logits(self, h: torch.Tensor, row: int) -> torch.Tensor:
        """(..., D) hidden -> (..., V_row) logits of one row through its slice of the shared head."""
        w = self.head_weight[self.tokens.head_slice(row)]
        return h @ w.t().to(h.dtype)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss over a collated batch (see data/collate.py for the batch legend). Logits are computed only at
        positions with a target, per row through its head slice (the 181k-way head dominates otherwise)."""
        audio = self.encode_audio(batch["audio_mels"]) if batch.get("audio_mels") is not None else None
        x = self.embed(batch["input_ids"], audio, batch.get("audio_index"), batch.get("audio_start"),
                       batch.get("audio_len"))
        h = self.hidden(x, attention_mask=batch["attention_mask"]).last_hidden_state  # (B, L, D)
        return self.loss_from_hidden(h, batch["targets"])

    def loss_from_hidden(self, h: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """h: (B, L, D); targets: (B, 8, L) local ids or IGNORE. Returns loss, loss_text, loss_audio and counts."""
        tok = self.tokens
        out: dict[str, torch.Tensor] = {}
        text_t = targets[:, tok.text_row]  # (B, L)
        sel = text_t != IGNORE
        n_text = sel.sum()
        loss_text = F.cross_entropy(self.row_logits(h[sel], tok.text_row).float(), text_t[sel], reduction="sum")
        audio_sum = h.new_zeros((), dtype=torch.float32)
        n_audio = torch.zeros((), dtype=torch.long, device=h.device)
        for i in range(tok.n_audio_layers):
            t_i = targets[:, i]
            sel_i = t_i != IGNORE
            if sel_i.any():
                audio_sum = audio_sum + F.cross_entropy(self.row_logits(h[sel_i], i).float(), t_i[sel_i],
                                                        reduction="sum")
                n_audio = n_audio + sel_i.sum()
        out["loss_text"] = loss_text / n_text.clamp(min=1)
        out["loss_audio"] = audio_sum / n_audio.clamp(min=1)
        out["loss"] = self.cfg.text_loss_weight * out["loss_text"] + self.cfg.audio_loss_weight * out["loss_audio"]
        out["n_text_targets"] = n_text
        out["n_audio_targets"] = n_audio
        return out
