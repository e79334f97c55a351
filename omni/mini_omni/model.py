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
from omni.packing import attention_inputs
from omni.mini_omni.vision import VisionTower, check_arch, n_image_tokens


AUDIO_NORMS = (None, "utterance")


def utterance_norm(mels: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """(B, n_mels, F) Whisper log-mel -> per-item, per-bin mean / variance normalised over the speech frames (frames
    with any bin above the item's floor, i.e. not Whisper's padding); padding frames get the same affine map."""
    floor = mels.amin(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    speech = (mels > floor + eps).any(dim=1, keepdim=True).to(mels.dtype)  # (B, 1, F)
    n = speech.sum(dim=2, keepdim=True).clamp(min=1)
    mean = (mels * speech).sum(dim=2, keepdim=True) / n  # (B, n_mels, 1)
    var = ((mels - mean) ** 2 * speech).sum(dim=2, keepdim=True) / n
    return (mels - mean) / (var + eps).sqrt()


# training-only heads: a released or exported model may lack them (they start fresh) or carry them (dropped)
AUX_PREFIXES = ("audio_ctc.",)


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
    # Mini-Omni2 image input: a CLIP / SigLIP tower (transformers config kwargs, or a local folder) + SwiGLU
    # vision adapter. vision=None and vision_path=None: no image input (Mini-Omni).
    vision: dict[str, Any] | None = None
    vision_path: str | None = None
    vision_arch: str = "clip"
    vision_adapter_hidden: int = 4864
    # The paper's optional TTS adapter: extra decoder blocks over the LLM output + a separate audio head
    # (7 x padded audio vocab = 29120 outputs at full size). None = off (the released weights have none).
    tts_adapter: dict[str, Any] | None = None
    text_loss_weight: float = 1.0
    audio_loss_weight: float = 1.0
    # Auxiliary CTC loss on the audio adapter's outputs against the question transcript (hybrid CTC/attention,
    # Watanabe et al. 2017): a training-only head `audio_ctc` (D -> text vocab + blank) that teaches the encoder
    # token-aligned features long before the LLM finds them by attention. 0 = off (no head; the release has none).
    ctc_weight: float = 0.0
    # Input normalisation of the log-mel before the encoder: None (Whisper's features as they are: the release) or
    # "utterance" (per-utterance mean / variance normalisation of each mel bin over the speech frames, CMVN: removes
    # the long-term spectrum that voices and channels add; for encoders trained from scratch).
    audio_norm: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tokens, dict):
            self.tokens = MiniOmniTokens(**self.tokens)
        if self.adapter not in ADAPTERS:
            raise ValueError(f"model.adapter={self.adapter!r} is not one of {sorted(ADAPTERS)}")
        self.backbone = dict(self.backbone)
        self.whisper = dict(self.whisper)
        check_arch(self.vision_arch)
        self.vision = None if self.vision is None else dict(self.vision)
        if self.tts_adapter is not None:
            self.tts_adapter = dict(self.tts_adapter)
            unknown = set(self.tts_adapter) - {"n_layers"}
            if unknown or int(self.tts_adapter.get("n_layers", 0)) < 1:
                raise ValueError(f"model.tts_adapter must be {{n_layers: >= 1}} or null, got {self.tts_adapter}")
        if self.audio_norm not in AUDIO_NORMS:
            raise ValueError(f"model.audio_norm={self.audio_norm!r} is not one of {list(AUDIO_NORMS)}")
        if not 0.0 <= float(self.ctc_weight):
            raise ValueError(f"model.ctc_weight must be >= 0 (0 = off), got {self.ctc_weight}")
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
    def has_vision(self) -> bool:
        return self.vision is not None or self.vision_path is not None

    @property
    def n_image_tokens(self) -> int:
        """Image tokens per image (50 for CLIP ViT-B/32 at 224 px); read from the tower when loaded from a folder."""
        if self.vision_path:
            from transformers import AutoConfig

            c = AutoConfig.from_pretrained(self.vision_path)
            c = getattr(c, "vision_config", c)
            return n_image_tokens(self.vision_arch, int(c.image_size), int(c.patch_size))
        if self.vision is None:
            return 0
        return n_image_tokens(self.vision_arch, int(self.vision.get("image_size", 224)),
                              int(self.vision.get("patch_size", 32)))

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


class TTSAdapter(nn.Module):
    """Extra decoder blocks over the LLM's final hidden states + a separate audio head (7 x padded audio vocab),
    used for the audio rows only. `blocks` is a transformers Qwen2Model of the backbone's shape (its own rotary
    embedding, causal mask and KV cache; no token embedding); `head` rows [4160 i, 4160 (i + 1)) score layer i."""

    def __init__(self, backbone: Qwen2Config, n_layers: int, tokens: MiniOmniTokens) -> None:
        super().__init__()
        from transformers import Qwen2Model

        cfg = Qwen2Config(**{**backbone.to_dict(), "num_hidden_layers": n_layers, "vocab_size": 1,
                             "layer_types": None})
        self.blocks = Qwen2Model(cfg)
        self.blocks.embed_tokens = None  # inputs are hidden states, never token ids
        self.head = nn.Linear(cfg.hidden_size, tokens.n_audio_layers * tokens.audio_padded, bias=False)
        self.audio_padded = tokens.audio_padded

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any):
        """(B, L, D) LLM hidden states -> BaseModelOutputWithPast of the adapter blocks (kw: past_key_values...)."""
        return self.blocks(inputs_embeds=h, attention_mask=attention_mask, **kw)

    def layer_logits(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        w = self.head.weight[layer * self.audio_padded : (layer + 1) * self.audio_padded]
        return h @ w.t().to(h.dtype)


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
    `backbone.*` (LLM incl. shared embedding and head), `audio_encoder.*` (Whisper), `audio_adapter.*`, and when
    configured `vision_encoder.*` (CLIP / SigLIP), `vision_adapter.*` (Mini-Omni2), `tts_adapter.*`."""

    def __init__(self, cfg: MiniOmniConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens = cfg.tokens
        self.backbone = build_backbone(cfg)
        self.audio_encoder = build_whisper_encoder(cfg)
        d_model = self.backbone.config.hidden_size
        self.audio_adapter = ADAPTERS[cfg.adapter](self.audio_encoder.config.d_model, cfg.adapter_hidden, d_model)
        if cfg.has_vision:
            self.vision_encoder = VisionTower(cfg.vision_arch, cfg.vision, cfg.vision_path)
            self.vision_adapter = SwiGLUAdapter(self.vision_encoder.feature_dim, cfg.vision_adapter_hidden, d_model)
        self.tts_adapter = TTSAdapter(self.backbone.config, int(cfg.tts_adapter["n_layers"]), cfg.tokens) \
            if cfg.tts_adapter else None
        # training-only auxiliary head (see MiniOmniConfig.ctc_weight); blank = the last class
        self.audio_ctc = nn.Linear(d_model, cfg.tokens.text_vocab + 1) if cfg.ctc_weight > 0 else None
        self.register_buffer("row_offsets", cfg.tokens.row_offsets(), persistent=False)

    # -- pieces ------------------------------------------------------------------------------------------------
    @property
    def head_weight(self) -> torch.Tensor:
        return self.backbone.lm_head.weight

    def encode_audio(self, mels: torch.Tensor) -> torch.Tensor:
        """(B_a, n_mels, F) padded mel windows -> (B_a, T_max, D) adapter outputs."""
        if self.cfg.audio_norm == "utterance":
            mels = utterance_norm(mels)
        feats = self.audio_encoder(input_features=mels).last_hidden_state  # (B_a, T_max, E)
        return self.audio_adapter(feats)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B_i, 3, H, W) normalised pixels -> (B_i, N, D) vision-adapter outputs (N image tokens)."""
        if not self.cfg.has_vision:
            raise ValueError("this model has no vision tower: set model.cfg.vision (or vision_path) for image input")
        return self.vision_adapter(self.vision_encoder(pixels))

    def embed(
        self,
        ids: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_index: torch.Tensor | None = None,
        audio_start: torch.Tensor | None = None,
        audio_len: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        image_start: torch.Tensor | None = None,
        image_len: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean of the 8 stream embeddings; adapter outputs replace the 7 audio rows at their spans.

        ids: (B, 8, L) LOCAL layout ids. audio: (B_a, T_max, D) for the items audio_index (B_a,), placed at
        positions [audio_start, audio_start + audio_len) of those items; image: (B_i, N, D) likewise at
        [image_start, image_start + image_len). The text row keeps its own embedding. Returns (B, L, D).
        """
        n_audio = self.tokens.n_audio_layers
        emb = self.backbone.get_input_embeddings()(ids + self.row_offsets.view(1, -1, 1))  # (B, 8, L, D)
        audio_sum = emb[:, :n_audio].sum(dim=1)  # (B, L, D)
        for feats, index, start, length in ((audio, audio_index, audio_start, audio_len),
                                            (image, image_index, image_start, image_len)):
            if feats is not None and index is not None and index.numel() > 0:
                audio_sum = self._inject(audio_sum, feats * n_audio, index, start, length)
        return (audio_sum + emb[:, n_audio]) / self.tokens.n_rows

    @staticmethod
    def _inject(rows: torch.Tensor, feats: torch.Tensor, index: torch.Tensor, start: torch.Tensor,
                length: torch.Tensor) -> torch.Tensor:
        """rows (B, L, D) with feats (B_f, T_max, D) written at [start, start + length) of items `index` (several
        features may go to one sequence: a packed batch, data/packing.py; their spans never overlap)."""
        B, L, D = rows.shape
        t_max = feats.shape[1]
        if bool((length > t_max).any()):
            raise ValueError(f"layout wants {int(length.max())} feature slots but the encoder gave {t_max}")
        t = torch.arange(t_max, device=rows.device)  # (T_max,)
        used = t.view(1, -1) < length.view(-1, 1)  # (B_f, T_max) feature slots that are injected
        flat = (index.view(-1, 1) * L + start.view(-1, 1) + t.view(1, -1))[used]  # (n,) into B * L
        return rows.reshape(B * L, D).index_copy(0, flat, feats[used].to(rows.dtype)).view(B, L, D)

    def hidden(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any):
        """Backbone transformer without its head: (B, L, D) -> BaseModelOutputWithPast."""
        return self.backbone.model(inputs_embeds=embeds, attention_mask=attention_mask, **kw)

    def audio_hidden(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
        """States the audio rows are scored from: the TTS adapter's blocks over h (B, L, D) when configured
        (kw: its own past_key_values / use_cache), else h itself."""
        if self.tts_adapter is None:
            return h
        return self.tts_adapter(h, attention_mask=attention_mask, **kw).last_hidden_state

    def row_logits(self, h: torch.Tensor, row: int) -> torch.Tensor:
        """(..., D) hidden -> (..., V_row) logits of one row: the text row through its slice of the shared head;
        audio rows through theirs, or through the TTS adapter's head (then h must be `audio_hidden` states)."""
        if self.tts_adapter is not None and row != self.tokens.text_row:
            return self.tts_adapter.layer_logits(h, row)
        w = self.head_weight[self.tokens.head_slice(row)]
        return h @ w.t().to(h.dtype)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss over a collated batch (see data/mini_omni/collate.py for the batch legend). Logits are computed only at
        positions with a target, per row through its head slice (the 181k-way head dominates otherwise)."""
        audio = self.encode_audio(batch["audio_mels"]) if batch.get("audio_mels") is not None else None
        image = self.encode_image(batch["image_pixels"]) if batch.get("image_pixels") is not None else None
        x = self.embed(batch["input_ids"], audio, batch.get("audio_index"), batch.get("audio_start"),
                       batch.get("audio_len"), image, batch.get("image_index"), batch.get("image_start"),
                       batch.get("image_len"))
        # a packed batch (data.packing=true): block-diagonal causal mask + per-row positions (omni/packing.py)
        mask, positions = attention_inputs(batch, self.backbone.config._attn_implementation, x.dtype)
        # no KV cache in a training forward (it would hold every layer's keys / values, and a recomputed block,
        # activation_checkpointing=true, would append them twice)
        h = self.hidden(x, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
        targets = batch["targets"]
        h_audio = None
        if self.tts_adapter is not None and bool((targets[:, : self.tokens.n_audio_layers] != IGNORE).any()):
            h_audio = self.audio_hidden(h, attention_mask=mask, position_ids=positions, use_cache=False)
        out = self.loss_from_hidden(h, targets, h_audio)
        if self.audio_ctc is not None and audio is not None and batch.get("audio_text_len") is not None:
            loss_ctc = self.ctc_loss(audio, batch["audio_len"], batch["audio_text"], batch["audio_text_len"])
            out["loss"] = out["loss"] + self.cfg.ctc_weight * loss_ctc
            out["metrics"] = {"loss_ctc": loss_ctc.detach()}  # logged as {split}/loss_ctc
        return out

    def ctc_loss(self, audio: torch.Tensor, audio_len: torch.Tensor, text: torch.Tensor,
                 text_len: torch.Tensor) -> torch.Tensor:
        """Mean per-token CTC loss of the adapter outputs audio (B_a, T_max, D) over their audio_len frames against
        the transcripts text (B_a, S) of text_len tokens (items with text_len 0 carry no transcript: left out)."""
        keep = text_len > 0
        if not bool(keep.any()):
            return audio.new_zeros((), dtype=torch.float32)
        logp = self.audio_ctc(audio[keep]).float().log_softmax(-1).transpose(0, 1)  # (T_max, B_c, V + 1)
        return F.ctc_loss(logp, text[keep], audio_len[keep], text_len[keep], blank=self.tokens.text_vocab,
                          reduction="mean", zero_infinity=True)

    def loss_from_hidden(self, h: torch.Tensor, targets: torch.Tensor,
                         h_audio: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """h: (B, L, D); targets: (B, 8, L) local ids or IGNORE; h_audio: states for the audio rows (the TTS
        adapter's, default h). Returns loss, loss_text, loss_audio and counts."""
        tok = self.tokens
        h_audio = h if h_audio is None else h_audio
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
                audio_sum = audio_sum + F.cross_entropy(self.row_logits(h_audio[sel_i], i).float(), t_i[sel_i],
                                                        reduction="sum")
                n_audio = n_audio + sel_i.sum()
        out["loss_text"] = loss_text / n_text.clamp(min=1)
        out["loss_audio"] = audio_sum / n_audio.clamp(min=1)
        out["loss"] = self.cfg.text_loss_weight * out["loss_text"] + self.cfg.audio_loss_weight * out["loss_audio"]
        out["n_text_targets"] = n_text
        out["n_audio_targets"] = n_audio
        return out
