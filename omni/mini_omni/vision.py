"""Mini-Omni2 image input: a transformers vision tower (CLIP or SigLIP) that returns every token, and the
Pillow image processor that matches it. The SwiGLU `vision_adapter` (512 -> 4864 -> 896) lives in model.py.

CLIP: the released model feeds all 50 ViT-B/32 tokens (CLS + 7 x 7 patches) after the final LayerNorm and the
visual projection (dim 512), i.e. `visual_projection(post_layernorm(last_hidden_state))` for every token (the
Hugging Face CLIP model applies both only to the pooled CLS token). SigLIP: `last_hidden_state` (already
post-normed; no CLS, (image / patch)^2 tokens, dim hidden_size).

Dims legend: B_i images, N image tokens, C feature width.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

VISION_ARCHS = ("clip", "siglip")


def check_arch(arch: str) -> str:
    if arch not in VISION_ARCHS:
        raise ValueError(f"vision_arch={arch!r} is not one of {list(VISION_ARCHS)}")
    return arch


def n_image_tokens(arch: str, image_size: int, patch_size: int) -> int:
    """Tokens one image becomes: (image / patch)^2 patches, + 1 CLS for CLIP (ViT-B/32 at 224: 50)."""
    check_arch(arch)
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    return (image_size // patch_size) ** 2 + (1 if arch == "clip" else 0)


def image_tokens(arch: Any, image_size: Any, patch_size: Any) -> int:
    """`${omni.image_tokens:arch,size,patch}` (data configs read it from the model config; this family's resolver)."""
    return n_image_tokens(str(arch), int(image_size), int(patch_size))


class VisionTower(nn.Module):
    """Frozen image encoder: (B_i, 3, H, W) pixels -> (B_i, N, C) token features (C = `feature_dim`)."""

    def __init__(self, arch: str, config: dict[str, Any] | None = None, path: str | None = None) -> None:
        super().__init__()
        self.arch = check_arch(arch)
        if arch == "clip":
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            self.model = CLIPVisionModelWithProjection.from_pretrained(path) if path else \
                CLIPVisionModelWithProjection(CLIPVisionConfig(**(config or {})))
            self.feature_dim = int(self.model.config.projection_dim)
        else:
            from transformers import SiglipVisionConfig, SiglipVisionModel

            self.model = SiglipVisionModel.from_pretrained(path) if path else \
                SiglipVisionModel(SiglipVisionConfig(**(config or {})))
            self.feature_dim = int(self.model.config.hidden_size)
        cfg = self.model.config
        self.n_tokens = n_image_tokens(arch, int(cfg.image_size), int(cfg.patch_size))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.arch == "clip":
            vm = self.model.vision_model
            h = vm(pixel_values=pixels).last_hidden_state  # (B_i, N, hidden), before the final LayerNorm
            return self.model.visual_projection(vm.post_layernorm(h))  # (B_i, N, projection_dim)
        return self.model(pixel_values=pixels).last_hidden_state  # (B_i, N, hidden)


_ROUND_CROP_CLIP = None


def released_clip_processor_class():
    """CLIPImageProcessorPil whose centre crop takes the released (torchvision CenterCrop) offsets
    `round((H - crop) / 2)`, `round((W - crop) / 2)` (Python round), where Hugging Face floors them: after the
    bicubic short-side-224 resize an odd overhang of 3, 7, 11... rows would otherwise crop one row off (spec pin
    2026-12). Resize (short side -> 224, long side int(224 * long / short), PIL bicubic) is already the released one."""
    global _ROUND_CROP_CLIP
    if _ROUND_CROP_CLIP is None:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        class ReleasedCLIPImageProcessor(CLIPImageProcessorPil):
            def center_crop(self, image, size, **kwargs):
                height, width = image.shape[-2:]  # the PIL backend works channels-first
                if size.height is None or size.width is None or size.height > height or size.width > width:
                    return super().center_crop(image, size, **kwargs)  # (padding case: never after the resize)
                top, left = int(round((height - size.height) / 2)), int(round((width - size.width) / 2))
                return image[..., top: top + size.height, left: left + size.width]

        _ROUND_CROP_CLIP = ReleasedCLIPImageProcessor
    return _ROUND_CROP_CLIP


def image_processor(arch: str, path: str | None = None, image_size: int = 224):
    """The Pillow (no torchvision) processor of `arch`: from the tower's local folder when given, else the
    architecture's defaults at `image_size` (CLIP: bicubic resize of the shortest edge + centre crop with the
    released rounded offsets, `released_clip_processor_class`; SigLIP: resize)."""
    check_arch(arch)
    if arch == "clip":
        Processor = released_clip_processor_class()
        kwargs = {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}
    else:
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as Processor

        kwargs = {"size": {"height": image_size, "width": image_size}}
    return Processor.from_pretrained(path) if path else Processor(**kwargs)


def load_pixels(data: bytes, processor) -> torch.Tensor:
    """Encoded image bytes (png / jpeg / ...) -> (3, H, W) float32 normalised pixels. Raises ValueError."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot decode image ({len(data)} bytes): {exc}") from exc
    return processor(images=[rgb], return_tensors="pt")["pixel_values"][0].float()
