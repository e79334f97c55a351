"""Talker of MiniMind-O: N Qwen3 decoder layers that turn the Thinker's bridge states plus the previous Mimi
frame into 8 codebook predictions per position ("MTP"), and the optional MoE feed-forward.

Dims legend: B batch, L positions, K = 8 codebooks, D Thinker width, H Talker width, V_a = 2112 audio ids,
A = adapter width (256). Parameter names follow the released state dict (spec "Released state-dict prefixes").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3Config
from transformers.masking_utils import create_causal_mask
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3DecoderLayer, Qwen3MLP, Qwen3RMSNorm, Qwen3RotaryEmbedding,
)


class CodebookEmbedding(nn.Module):
    """Shared Embedding(V_a, H) + per-codebook Embedding(V_a, A) -> GELU -> Linear(A, H, no bias);
    (B, K, L) ids -> (B, L, H) = mean over codebooks of (base + adapter_c)."""

    def __init__(self, n_codebooks: int, vocab: int, hidden: int, adapter: int) -> None:
        super().__init__()
        self.base = nn.Embedding(vocab, hidden)
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Embedding(vocab, adapter), nn.GELU(), nn.Linear(adapter, hidden, bias=False))
            for _ in range(n_codebooks))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids).mean(dim=1)  # (B, L, H)
        for c, adapter in enumerate(self.adapters):
            out = out + adapter(ids[:, c]) / len(self.adapters)
        return out


class CodebookHead(nn.Module):
    """Shared Linear(H, V_a) + per-codebook Linear(H, A) -> GELU -> Linear(A, V_a), no biases;
    logits_c = base(h) + adapter_c(h). Called per codebook on the positions that have a target."""

    def __init__(self, n_codebooks: int, vocab: int, hidden: int, adapter: int) -> None:
        super().__init__()
        self.base = nn.Linear(hidden, vocab, bias=False)
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, adapter, bias=False), nn.GELU(), nn.Linear(adapter, vocab, bias=False))
            for _ in range(n_codebooks))

    def forward(self, h: torch.Tensor, codebook: int) -> torch.Tensor:
        """(..., H) -> (..., V_a) logits of one codebook."""
        return self.base(h) + self.adapters[codebook](h)


def mlp_proj(d_in: int, d_out: int, eps: float) -> nn.Sequential:
    """Linear(d_in, d_in) -> GELU -> Linear(d_in, d_out) -> RMSNorm (codec_proj / embed_proj; released eps 1e-6,
    the Talker layers' eps)."""
    return nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out), Qwen3RMSNorm(d_out, eps=eps))


class MoEFeedForward(nn.Module):
    """Top-k routed SwiGLU experts (released MoE: 4 experts, top-1, no shared expert). The chosen experts' softmax
    probabilities are renormalised to sum to 1 for EVERY k, top-1 included (released: a top-1 expert's output is
    not scaled by its probability; the gate then learns through the aux loss only). `aux_loss` after a forward is
    the Switch-style load-balancing loss E * sum_i f_i * P_i (f: routed fraction, P: mean probability)."""

    def __init__(self, config: Qwen3Config, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(config.hidden_size, n_experts, bias=False)
        self.experts = nn.ModuleList(Qwen3MLP(config) for _ in range(n_experts))
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, H)
        probs = self.gate(flat).float().softmax(dim=-1)  # (N, E)
        weight, idx = probs.topk(self.top_k, dim=-1)  # (N, k)
        weight = weight / weight.sum(dim=-1, keepdim=True)  # (N, k); all ones for top-1
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.nonzero(idx == e, as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(flat[rows]) * weight[rows, slot].unsqueeze(-1).to(flat.dtype))
        routed = F.one_hot(idx, len(self.experts)).float().sum(dim=1).mean(dim=0) / self.top_k  # (E,)
        self.aux_loss = len(self.experts) * (routed * probs.mean(dim=0)).sum()
        return out.view(shape)


def use_moe(layers: nn.ModuleList, config: Qwen3Config, n_experts: int, top_k: int) -> None:
    """Replace the SwiGLU feed-forward of every decoder layer in `layers` by MoEFeedForward."""
    for layer in layers:
        layer.mlp = MoEFeedForward(config, n_experts, top_k)


def moe_aux_loss(module: nn.Module) -> torch.Tensor | None:
    losses = [m.aux_loss for m in module.modules() if isinstance(m, MoEFeedForward) and m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


class Talker(nn.Module):
    """inputs(bridge, audio ids, speaker) -> (B, L, H); hidden() runs the decoder layers; lm_head scores."""

    def __init__(self, config: Qwen3Config, thinker_hidden: int, n_codebooks: int, audio_vocab: int,
                 adapter_dim: int, spk_dim: int, text_scale: float, audio_scale: float) -> None:
        super().__init__()
        h = config.hidden_size
        self.config = config
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Qwen3RMSNorm(h, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)
        self.lm_head = CodebookHead(n_codebooks, audio_vocab, h, adapter_dim)
        self.embed_tokens = CodebookEmbedding(n_codebooks, audio_vocab, h, adapter_dim)
        self.codec_proj = mlp_proj(h, h, config.rms_norm_eps)
        self.embed_proj = mlp_proj(thinker_hidden, h, config.rms_norm_eps)
        self.text_scale = nn.Parameter(torch.tensor(float(text_scale)))
        self.audio_scale = nn.Parameter(torch.tensor(float(audio_scale)))
        self.spk_proj = nn.Linear(spk_dim, h, bias=False)

    def inputs(self, bridge: torch.Tensor, audio_ids: torch.Tensor, speaker_id: int,
               speaker_emb: torch.Tensor | None = None, speaker_index: torch.Tensor | None = None) -> torch.Tensor:
        """bridge (B, L, D) Thinker states, audio_ids (B, K, L) local ids, speaker_emb (B, S) or None ->
        (B, L, H) = embed_proj(bridge) * text_scale + codec_proj(code) * audio_scale, where code is the code
        embedding, replaced by spk_proj(speaker_emb) at positions holding the SPEAKER id (row 0). A packed batch
        gives speaker_emb per row (N, S) and speaker_index (B, L): the row each position belongs to."""
        code = self.embed_tokens(audio_ids)  # (B, L, H)
        at_speaker = audio_ids[:, 0] == speaker_id  # (B, L)
        if speaker_emb is not None and bool(at_speaker.any()):
            spk = self.spk_proj(speaker_emb.to(code.dtype))  # (B, H), packed: (N, H)
            spk = spk[speaker_index] if speaker_index is not None else spk.unsqueeze(1).expand_as(code)
            code = torch.where(at_speaker.unsqueeze(-1), spk, code)
        return self.embed_proj(bridge) * self.text_scale + self.codec_proj(code) * self.audio_scale

    def hidden(self, x: torch.Tensor, position_ids: torch.Tensor | None = None, past_key_values=None,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H) -> (B, L, H) final-normed Talker states; causal attention over the same positions as the
        Thinker (right padding needs no mask: real positions never see later ones)."""
        if position_ids is None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(x.shape[1], device=x.device) + past).unsqueeze(0)
        mask = create_causal_mask(config=self.config, inputs_embeds=x, attention_mask=attention_mask,
                                  past_key_values=past_key_values, position_ids=position_ids)
        pos = self.rotary_emb(x, position_ids)
        for layer in self.layers:
            x = layer(x, attention_mask=mask, position_embeddings=pos, position_ids=position_ids,
                      past_key_values=past_key_values, use_cache=past_key_values is not None)
        return self.norm(x)
