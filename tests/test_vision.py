"""Mini-Omni2 image input (spec "Mini-Omni2 image QA") and the optional TTS adapter."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from omni.mini_omni.layout import IMAGE_TOKENS, build_example, image_prompt, image_spans
from omni.mini_omni.model import MiniOmni, MiniOmniConfig
from omni.mini_omni.tokens import IGNORE, MiniOmniTokens
from omni.mini_omni.vision import VisionTower, image_processor, load_pixels, n_image_tokens

TOK = MiniOmniTokens()  # released ids
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=224,
                 patch_size=32, projection_dim=24)


def test_image_prompt_hand_drawn_small():
    # 3 image tokens, T = 2 audio frames, spoken question with a spoken answer (image_a1a2)
    I, PA, EI, IA, EOA, AA = 4101, 4097, 4102, 4098, 4096, 4099
    PT, AT = 151937, 151939
    audio_row = [I, PA, PA, PA, EI, IA, PA, PA, EOA, AA]
    text_row = [PT] * 9 + [AT]
    got = image_prompt(TOK, n_frames=2, task="image_a1a2", n_image=3)
    assert got.shape == (8, 10)
    for r in range(7):
        assert got[r].tolist() == audio_row
    assert got[7].tolist() == text_row
    # text answer: the last audio slot is PAD_A instead of ANSWER_A
    assert image_prompt(TOK, 2, "image_a1t2", n_image=3)[0].tolist() == audio_row[:-1] + [PA]


def test_image_prompt_released_positions():
    """CLIP ViT-B/32: length 55 + T; vision features at 1..50, Whisper features at 52..52+T-1."""
    T = 7
    p = image_prompt(TOK, T, "image_a1a2")
    assert IMAGE_TOKENS == 50 and p.shape == (8, 55 + T)
    assert p[0, 0] == TOK.image and p[0, 51] == TOK.end_image and p[0, 52] == TOK.input_a
    assert p[0, 53 + T] == TOK.eoa and p[0, 54 + T] == TOK.answer_a
    assert (p[0, 1:51] == TOK.pad_a).all() and (p[0, 53:53 + T] == TOK.pad_a).all()
    assert (p[7, : 54 + T] == TOK.pad_t).all() and p[7, 54 + T] == TOK.answer_t
    assert image_spans() == (1, 52)
    lay = build_example(TOK, "image_a1t2", answer_ids=[5, 6], n_audio_frames=T)
    assert (lay.image_start, lay.image_len, lay.audio_start, lay.audio_len) == (1, 50, 52, T)
    assert lay.prompt_len == 55 + T
    # the text answer is scored from the ANSWER_T position on: [5, 6, EOT]; nothing in the prompt is a target
    assert lay.targets[7, 54 + T : 57 + T].tolist() == [5, 6, TOK.eot]
    assert (lay.targets[:, : 54 + T] == IGNORE).all() and (lay.targets[:7] == IGNORE).all()


def test_caption_layout_has_no_audio_span():
    lay = build_example(TOK, "caption", answer_ids=[9], n_image_tokens=4)
    assert (lay.image_start, lay.image_len, lay.audio_len, lay.prompt_len) == (1, 4, 0, 9)
    assert lay.inputs[0, :9].tolist() == [TOK.image, *[TOK.pad_a] * 4, TOK.end_image, TOK.input_a, TOK.eoa,
                                         TOK.pad_a]
    with pytest.raises(ValueError, match="needs audio frames"):
        build_example(TOK, "image_a1t2", answer_ids=[9])


def test_n_image_tokens():
    assert n_image_tokens("clip", 224, 32) == 50
    assert n_image_tokens("siglip", 256, 32) == 64
    with pytest.raises(ValueError, match="clip"):
        n_image_tokens("vit", 224, 32)


def test_clip_tower_returns_projected_normed_tokens():
    """Every token gets post_layernorm + visual_projection; token 0 equals HF's pooled `image_embeds`."""
    torch.manual_seed(0)
    tower = VisionTower("clip", TINY_CLIP).eval()
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = tower(pixels)
        pooled = tower.model(pixel_values=pixels).image_embeds
    assert feats.shape == (2, 50, 24) and tower.feature_dim == 24 and tower.n_tokens == 50
    torch.testing.assert_close(feats[:, 0], pooled)


def test_image_processor_and_bad_image(tmp_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (255, 0, 0)).save(buf, format="PNG")
    pixels = load_pixels(buf.getvalue(), image_processor("clip", image_size=224))
    assert pixels.shape == (3, 224, 224)
    assert pixels[0].mean() > 1.5 and pixels[1].mean() < -1.0  # red, CLIP-normalised
    with pytest.raises(ValueError, match="cannot decode image"):
        load_pixels(b"not an image", image_processor("clip"))


@pytest.fixture(scope="module")
def vision_model(tiny_model_cfg):
    cfg = dataclasses.replace(tiny_model_cfg, vision=dict(TINY_CLIP), vision_adapter_hidden=40)
    torch.manual_seed(0)
    return MiniOmni(cfg).eval()


def test_embed_injects_image_and_audio_at_spec_positions(vision_model):
    m, tok = vision_model, vision_model.tokens
    T = 3
    lay = build_example(tok, "image_a1t2", answer_ids=[5], n_audio_frames=T)
    ids = lay.inputs.unsqueeze(0)
    image = torch.randn(1, 50, 64)
    audio = torch.randn(1, T, 64)
    one, i0 = torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        got = m.embed(ids, audio, i0, one * lay.audio_start, one * T, image, i0, one * lay.image_start, one * 50)
        plain = m.embed(ids)
        text_emb = m.backbone.get_input_embeddings()(ids[:, 7])  # (1, L, D)
    expect = plain.clone()
    expect[0, 1:51] = (7 * image[0] + text_emb[0, 1:51]) / 8
    expect[0, 52:52 + T] = (7 * audio[0] + text_emb[0, 52:52 + T]) / 8
    torch.testing.assert_close(got, expect)


def test_vision_model_trains_only_vision_adapter(vision_model, tiny_model_cfg):
    from omni.stages.freeze import apply_trainable

    cfg = dataclasses.replace(tiny_model_cfg, vision=dict(TINY_CLIP), vision_adapter_hidden=40)
    torch.manual_seed(0)
    m = MiniOmni(cfg)
    tok = m.tokens
    counts = apply_trainable(m, ["vision_adapter.*"])
    assert counts["trainable"] == sum(p.numel() for p in m.vision_adapter.parameters())
    lay = build_example(tok, "caption", answer_ids=[5, 6, 7])
    batch = {
        "input_ids": lay.inputs.unsqueeze(0), "targets": lay.targets.unsqueeze(0),
        "attention_mask": torch.ones(1, lay.inputs.shape[1], dtype=torch.long),
        "image_pixels": torch.randn(1, 3, 224, 224), "image_index": torch.zeros(1, dtype=torch.long),
        "image_start": torch.ones(1, dtype=torch.long), "image_len": torch.full((1,), 50),
    }
    out = m(batch)
    out["loss"].backward()
    assert int(out["n_text_targets"]) == 4
    assert m.vision_adapter.fc_1.weight.grad is not None and m.vision_adapter.fc_1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in m.named_parameters() if not n.startswith("vision_adapter."))


def test_model_without_vision_rejects_images(tiny_model):
    with pytest.raises(ValueError, match="no vision tower"):
        tiny_model.encode_image(torch.randn(1, 3, 224, 224))


# -- TTS adapter ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tts_model(tiny_model_cfg):
    cfg = dataclasses.replace(tiny_model_cfg, tts_adapter={"n_layers": 2})
    torch.manual_seed(0)
    return MiniOmni(cfg).eval()


def test_tts_adapter_shapes_and_config_errors(tts_model, tiny_model_cfg):
    tok = tts_model.tokens
    assert tts_model.tts_adapter.head.weight.shape == (7 * tok.audio_padded, 64)
    assert len(tts_model.tts_adapter.blocks.layers) == 2
    assert MiniOmniTokens().n_audio_layers * MiniOmniTokens().audio_padded == 29120  # full-size head
    with pytest.raises(ValueError, match="tts_adapter"):
        dataclasses.replace(tiny_model_cfg, tts_adapter={"layers": 6})


def test_tts_adapter_gives_alignment_tts_a_trainable_path(tiny_model_cfg):
    """With the LLM frozen, TTS (audio loss only) reaches the TTS adapter (DESIGN #6 without the adapter)."""
    from omni.stages.freeze import apply_trainable

    cfg = dataclasses.replace(tiny_model_cfg, tts_adapter={"n_layers": 1})
    torch.manual_seed(0)
    m = MiniOmni(cfg)
    tok = m.tokens
    apply_trainable(m, ["audio_adapter.*", "tts_adapter.*"])
    codes = torch.randint(0, tok.codebook_size, (3, 7))
    lay = build_example(tok, "tts", answer_ids=[5, 6], question_ids=[5, 6], answer_codes=codes)
    batch = {"input_ids": lay.inputs.unsqueeze(0), "targets": lay.targets.unsqueeze(0),
             "attention_mask": torch.ones(1, lay.inputs.shape[1], dtype=torch.long)}
    out = m(batch)
    # every answer step of every layer is an audio target: K = 3 frames + 7 + 1 = 11 steps (fill, EOA, PAD_A after)
    assert out["loss"].requires_grad and int(out["n_audio_targets"]) == 7 * 11
    out["loss"].backward()
    assert m.tts_adapter.head.weight.grad.abs().sum() > 0
    assert m.tts_adapter.blocks.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_tts_adapter_kv_cache_decoding_equals_full_forward(tts_model):
    """Greedy T1A2 decoding with two KV caches (LLM + TTS adapter) picks the argmax of a full forward."""
    from omni.mini_omni.generate import MiniOmniDecoder, SamplingConfig
    from omni.mini_omni.layout import text_prompt

    m, tok = tts_model, tts_model.tokens
    prompt = text_prompt(tok, [5, 6, 7], "t1a2").unsqueeze(0)
    cols = list(MiniOmniDecoder(m).iter_columns(prompt, True, SamplingConfig(top_k=1, max_new_tokens=10)))
    seq = torch.cat([prompt, torch.stack(cols, dim=-1)[..., :-1]], dim=-1)  # (1, 8, P + K - 1)
    with torch.no_grad():
        h = m.hidden(m.embed(seq)).last_hidden_state[0, prompt.shape[-1] - 1 :]
        ha = m.audio_hidden(h.unsqueeze(0))[0]
    for k, col in enumerate(cols):
        assert int(m.row_logits(h[k], 7).argmax()) == int(col[0, 7])
        for i in range(7):
            if k > i and int(col[0, i]) != tok.pad_a:
                assert int(m.row_logits(ha[k], i).argmax()) == int(col[0, i])


def test_vision_alignment_stage_trains_on_bundled_image_sample(compose, tmp_path):
    """`model=mini_omni2_tiny data=sample_vision stage=vision_alignment`: image batches reach the model through
    the datamodule; only the vision adapter changes."""
    from omni.train import build_module, train

    cfg = compose("model=mini_omni2_tiny", "data=sample_vision", "stage=vision_alignment", "debug=fast",
                  "logger=none", "callbacks=none", "test=false", "trainer.limit_val_batches=1")
    dm = __import__("hydra").utils.instantiate(cfg.data)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image_pixels"].shape[1:] == (3, 224, 224)
    assert set(batch["tasks"]) <= {"caption", "image_a1t2"} and len(batch["image_index"]) == len(batch["tasks"])
    assert (batch["image_start"] == 1).all() and (batch["image_len"] == 50).all()
    before = build_module(cfg, None).model.state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in before.items()}}, tmp_path / "init.ckpt")
    cfg.init_from = str(tmp_path / "init.ckpt")
    metrics = train(cfg)
    ckpt = torch.load(metrics["last_checkpoint"], map_location="cpu", weights_only=True)
    after = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()}
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"vision_adapter"}
    assert torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))


def test_hf_export_round_trips_vision_and_tts_adapter(tmp_path, tiny_model_cfg):
    from omni.mini_omni.convert import export_hf, export_litgpt, load_hf

    cfg = dataclasses.replace(tiny_model_cfg, vision=dict(TINY_CLIP), vision_adapter_hidden=192,
                              tts_adapter={"n_layers": 1})
    torch.manual_seed(0)
    model = MiniOmni(cfg).eval()
    back = load_hf(export_hf(model, tmp_path / "hf"))
    ours, theirs = model.state_dict(), back.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(ValueError, match="TTS adapter"):
        export_litgpt(model, tmp_path / "lit")


def test_alignment_stage_trains_tts_adapter_when_configured(compose, caplog):
    import logging

    from omni.train import build_module

    with caplog.at_level(logging.WARNING):
        module = build_module(compose("stage=alignment", "model.cfg.tts_adapter={n_layers: 1}"), init_from=None)
        plain = build_module(compose("stage=alignment"), init_from=None)
    trainable = {n.split(".")[0] for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable == {"audio_adapter", "tts_adapter"}
    assert {n.split(".")[0] for n, p in plain.model.named_parameters() if p.requires_grad} == {"audio_adapter"}
    assert "matches no parameter" not in caplog.text  # optional patterns stay quiet when the part is absent


def test_image_generation_prompt_matches_training_layout(vision_model):
    """Greedy image_a1t2 decoding through the inference helper = argmax of a teacher-forced full forward over
    the training layout (same injection spans) extended by the generated tokens."""
    from omni.mini_omni.generate import SamplingConfig
    from omni.mini_omni.infer import MiniOmniInference

    m, tok = vision_model, vision_model.tokens
    T = 5
    example = {"pixels": torch.randn(3, 224, 224), "mels": torch.randn(80, 100), "n_audio_frames": T}
    infer = MiniOmniInference(m, tokenizer=None)
    cols = list(infer.iter_columns(example, "image_a1t2", SamplingConfig(top_k=1, max_new_tokens=6)))
    text = [int(c[0, 7]) for c in cols]
    lay = build_example(tok, "image_a1t2", answer_ids=[t for t in text if t != tok.eot] or [5],
                        n_audio_frames=T)
    P = lay.prompt_len
    ids = torch.cat([lay.inputs[:, :P], torch.stack(cols, dim=-1)[0, :, :-1]], dim=-1).unsqueeze(0)
    i0, one = torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)
    with torch.no_grad():
        x = m.embed(ids, m.encode_audio(example["mels"][None]), i0, one * lay.audio_start, one * T,
                    m.encode_image(example["pixels"][None]), i0, one * lay.image_start, one * lay.image_len)
        h = m.hidden(x).last_hidden_state[0, P - 1:]
    assert m.row_logits(h, 7).argmax(-1).tolist()[: len(text)] == text


def test_image_a1a2_decodes_batch_parallel_text_from_the_image_a1t2_item(vision_model):
    """Spec pin (2026-12): Mini-Omni2 image_a1a2 decodes like A1A2 batch-parallel. Item 0 = image_a1a2 prompt (its
    own audio fed back), item 1 = image_a1t2 prompt of the same image + audio (audio rows fed PAD_A); every step's
    text token is item 1's argmax and is fed to both; the audio tokens are item 0's argmax. Checked against two
    teacher-forced full forwards built from the spec layouts."""
    from omni.mini_omni.generate import SamplingConfig
    from omni.mini_omni.infer import MiniOmniInference

    m, tok = vision_model, vision_model.tokens
    T, K = 5, 6
    g = torch.Generator().manual_seed(7)
    example = {"pixels": torch.randn(3, 224, 224, generator=g), "mels": torch.randn(80, 100, generator=g),
               "n_audio_frames": T}
    cols = list(MiniOmniInference(m, tokenizer=None).iter_columns(
        example, "image_a1a2", SamplingConfig(temperature=0.0, max_new_tokens=K)))
    assert len(cols) == K and all(c.shape == (1, 8) for c in cols)
    grid = torch.stack(cols, dim=-1)[0]  # (8, K) item 0's columns: its audio tokens + the shared text token
    item1 = grid.clone()
    item1[:7] = tok.pad_a  # item 1 is fed PAD_A on the audio rows
    i0, one = torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)
    heads = []
    for task, fed in (("image_a1a2", grid), ("image_a1t2", item1)):
        prompt = image_prompt(tok, T, task)  # (8, 55 + T): image at 1..50, audio at 52..
        ids = torch.cat([prompt, fed[:, :-1]], dim=-1).unsqueeze(0)
        with torch.no_grad():
            x = m.embed(ids, m.encode_audio(example["mels"][None]), i0, one * 52, one * T,
                        m.encode_image(example["pixels"][None]), i0, one, one * 50)
            heads.append(m.hidden(x).last_hidden_state[0, 55 + T - 1:])  # (K, D): states that score steps 0..K-1
    h0, h1 = heads
    assert m.row_logits(h1, 7).argmax(-1).tolist() == grid[7].tolist()  # text from item 1 (image_a1t2)
    for i in range(7):
        assert m.row_logits(h0, i).argmax(-1).tolist() == grid[i].tolist()  # speech from item 0
    assert m.row_logits(h0, 7).argmax(-1).tolist() != grid[7].tolist()  # item 0's own text would differ here


# OpenAI CLIP normalisation (the released preprocess: ToTensor, Normalize(mean, std))
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_clip_centre_crop_offsets_are_rounded_not_floored():
    """Spec pin (2026-12): centre crop at round((H - 224) / 2). A 224 x 227 (W x H) image needs no resize (short
    side 224); its overhang 3 gives top = round(1.5) = 2 (floor would give 1), left = 0. Row r holds R = r,
    G = 255 - r, B = column, so output pixel (j, c) must be ((j + 2, 255 - j - 2, c) / 255 - mean) / std."""
    import numpy as np
    from PIL import Image

    H, W = 227, 224
    r = np.arange(H)[:, None].repeat(W, 1)
    c = np.arange(W)[None, :].repeat(H, 0)
    img = Image.fromarray(np.stack([r, 255 - r, c], -1).astype(np.uint8))
    got = load_pixels(_png(img), image_processor("clip", image_size=224))
    assert got.shape == (3, 224, 224)
    j = torch.arange(224, dtype=torch.float64)[:, None].expand(224, 224)
    col = torch.arange(224, dtype=torch.float64)[None, :].expand(224, 224)
    for top, ok in ((2, True), (1, False)):  # rounded offset; the floored one is the negative control
        raw = torch.stack([j + top, 255 - j - top, col]) / 255
        expect = (raw - torch.tensor(CLIP_MEAN, dtype=torch.float64)[:, None, None]) \
            / torch.tensor(CLIP_STD, dtype=torch.float64)[:, None, None]
        assert torch.allclose(got.double(), expect, atol=1e-5) is ok


def test_clip_resize_short_side_bicubic_then_rounded_crop():
    """300 x 310 (W x H): short side 300 -> 224, long side int(224 * 310 / 300) = 231 (PIL bicubic, as torchvision's
    Resize on PIL images), then rows round(7 / 2) = 4 .. 227 (floor: 3 .. 226) and columns 0 .. 223."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    img = Image.fromarray(g.integers(0, 256, (310, 300, 3), dtype=np.uint8))
    got = load_pixels(_png(img), image_processor("clip", image_size=224))
    resized = np.asarray(img.resize((224, 231), Image.Resampling.BICUBIC), dtype=np.float64) / 255  # (231, 224, 3)
    mean, std = np.array(CLIP_MEAN), np.array(CLIP_STD)
    for top, ok in ((4, True), (3, False)):
        expect = torch.from_numpy(((resized[top: top + 224] - mean) / std).transpose(2, 0, 1))
        assert torch.allclose(got.double(), expect, atol=1e-5) is ok
    bilinear = np.asarray(img.resize((224, 231), Image.Resampling.BILINEAR), dtype=np.float64) / 255
    assert not torch.allclose(got.double(), torch.from_numpy(((bilinear[4:228] - mean) / std).transpose(2, 0, 1)),
                              atol=1e-5)  # the interpolation matters too
