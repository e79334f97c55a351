"""Mini-Omni model: loss only at target positions equals the full-logit reference, audio injection, KV-cache
decoding equals the full forward, batch-parallel decoding, full-size dims on the meta device."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from data.mini_omni.collate import MiniOmniCollator
from omni.mini_omni.generate import MiniOmniDecoder, SamplingConfig, generate_batch_parallel
from omni.mini_omni.layout import audio_prompt
from omni.mini_omni.model import MiniOmni, MiniOmniConfig
from omni.mini_omni.tokens import IGNORE

torch.set_num_threads(1)


def example(model, task, seed=0, n_frames=3, T=5):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    F_mel = cfg.max_source_positions * 2
    return {
        "id": f"{task}-{seed}", "task": task,
        "question_ids": torch.randint(0, 500, (4,), generator=g).tolist(),
        "answer_ids": torch.randint(0, 500, (3,), generator=g).tolist(),
        "answer_codes": torch.randint(0, 4096, (n_frames, 7), generator=g),
        "mels": torch.randn(cfg.n_mels, F_mel, generator=g) if task in ("asr", "a1t2", "a1a2") else None,
        "n_audio_frames": T, "question_text": "q", "answer_text": "a",
    }


def batch_of(model, tasks):
    collate = MiniOmniCollator(model.tokens)
    return collate([example(model, t, seed=i) for i, t in enumerate(tasks)])


def reference_loss(model, batch):
    """Full 181k-style logits everywhere, then masked CE per row: what the sliced, selected loss must equal."""
    audio = model.encode_audio(batch["audio_mels"]) if batch["audio_mels"] is not None else None
    x = model.embed(batch["input_ids"], audio, batch["audio_index"], batch["audio_start"], batch["audio_len"])
    h = model.hidden(x, attention_mask=batch["attention_mask"]).last_hidden_state
    logits = model.backbone.lm_head(h)  # (B, L, V_total)
    tok = model.tokens
    t = batch["targets"]
    text = F.cross_entropy(logits[..., tok.head_slice(7)].flatten(0, 1), t[:, 7].flatten(), ignore_index=IGNORE)
    per_layer = [F.cross_entropy(logits[..., tok.head_slice(i)].flatten(0, 1), t[:, i].flatten(),
                                 ignore_index=IGNORE, reduction="sum") for i in range(7)]
    n_audio = (t[:, :7] != IGNORE).sum()
    return text, sum(per_layer) / n_audio


def test_sliced_loss_equals_full_logits_reference(tiny_model):
    batch = batch_of(tiny_model, ["a1a2", "asr", "t1a2", "t1t2"])
    with torch.no_grad():
        out = tiny_model(batch)
        text, audio = reference_loss(tiny_model, batch)
    torch.testing.assert_close(out["loss_text"], text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_audio"], audio, rtol=1e-5, atol=1e-5)
    assert int(out["n_text_targets"]) == int((batch["targets"][:, 7] != IGNORE).sum())


def test_audio_features_replace_audio_rows_only_at_span(tiny_model):
    tok = tiny_model.tokens
    ids = audio_prompt(tok, 4, "a1t2").unsqueeze(0)  # (1, 8, 7)
    feats = torch.randn(1, 6, tiny_model.backbone.config.hidden_size)
    one = torch.tensor([0]), torch.tensor([1]), torch.tensor([4])
    with torch.no_grad():
        x = tiny_model.embed(ids, feats, *one)
        plain = tiny_model.embed(ids)
        emb = tiny_model.backbone.get_input_embeddings()(ids + tiny_model.row_offsets.view(1, -1, 1))
    expected = (7 * feats[0, :4] + emb[0, 7, 1:5]) / 8  # adapter output on 7 audio rows + PAD_T text row
    torch.testing.assert_close(x[0, 1:5], expected)
    torch.testing.assert_close(x[0, [0, 5, 6]], plain[0, [0, 5, 6]])


@pytest.mark.parametrize("task,audio_out,force", [("a1t2", False, False), ("a1a2", True, False),
                                                  ("a1a2", True, True)])
def test_kv_cache_generation_equals_full_forward(tiny_model, task, audio_out, force):
    tok = tiny_model.tokens
    ex = example(tiny_model, task)
    prompt = audio_prompt(tok, 5, task).unsqueeze(0)
    mels = ex["mels"].unsqueeze(0)
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=12, force_pad_a=force)
    gen = MiniOmniDecoder(tiny_model).generate(prompt, audio_out, cfg, mels, 1, 5)
    assert gen.steps == 12  # random weights never emit the stop token this early
    # columns fed back after each step = the generated tokens; re-run everything in one full forward
    cols = torch.tensor([[gen.audio_layers[0][i][k] if audio_out else tok.pad_a for i in range(7)]
                         + [gen.text_ids[0][k]] for k in range(gen.steps)]).T.unsqueeze(0)  # (1, 8, K)
    seq = torch.cat([prompt, cols[:, :, :-1]], dim=2)
    with torch.no_grad():
        feats = tiny_model.encode_audio(mels)
        x = tiny_model.embed(seq, feats, torch.tensor([0]), torch.tensor([1]), torch.tensor([5]))
        h = tiny_model.hidden(x).last_hidden_state[0, prompt.shape[-1] - 1:]  # (K, D)
    assert tiny_model.row_logits(h, 7).argmax(-1).tolist() == gen.text_ids[0]
    if audio_out:
        for i in range(7):
            expect = tiny_model.row_logits(h, i).argmax(-1).tolist()
            got = gen.audio_layers[0][i]
            if force:
                assert got[: i + 1] == [tok.pad_a] * (i + 1)  # fill forced (option, not the release)
                assert got[i + 1:] == expect[i + 1:]
            else:
                assert got == expect  # released: the fill steps are sampled and fed back like any other


def rigged_model(cfg, text_id, audio_ids):
    """A model whose every position has the same final state h = sqrt(D) e_0 (all embedding rows e_0, every block's
    output projections zero, so the residual stream stays the mean embedding e_0), and whose head column 0 is 1 at
    text id `text_id` and at local id audio_ids[i] of audio layer i, 0 elsewhere: greedy decoding must pick
    exactly those ids at every step, whatever was fed back."""
    torch.manual_seed(0)
    m = MiniOmni(cfg).eval()
    tok = m.tokens
    with torch.no_grad():
        emb = m.backbone.get_input_embeddings().weight
        emb.zero_()
        emb[:, 0] = 1.0
        for layer in m.backbone.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        m.backbone.model.norm.weight.fill_(1.0)
        head = m.head_weight
        head.zero_()
        head[text_id, 0] = 1.0
        for i, a in enumerate(audio_ids):
            head[tok.text_padded + tok.audio_padded * i + a, 0] = 1.0
    return m


def test_decoding_samples_fill_and_after_eoa_by_default(tiny_model_cfg):
    """Spec pin (2026-12): the released decoder feeds back whatever the model produces for layer i at steps k <= i
    and after that layer's EOA; PAD_A is forced only with force_pad_a. Layer 0 always emits EOA (4096), layer i >= 1
    always emits 10 + i, the text 7 (tiny table: PAD_A = 4097)."""
    from omni.mini_omni.layout import text_prompt

    EOA, PAD_A = 4096, 4097
    m = rigged_model(tiny_model_cfg, 7, [EOA] + [10 + i for i in range(1, 7)])
    prompt = text_prompt(m.tokens, [5, 6, 7], "t1a2").unsqueeze(0)
    dec = MiniOmniDecoder(m)
    released = dec.generate(prompt, True, SamplingConfig(temperature=0.0, max_new_tokens=9))
    assert released.steps == 9 and released.text_ids[0] == [7] * 9
    expect = [[EOA] * 9] + [[10 + i] * 9 for i in range(1, 7)]  # every step, fill included, EOA repeated
    assert released.audio_layers[0] == expect
    forced = dec.generate(prompt, True, SamplingConfig(temperature=0.0, max_new_tokens=9, force_pad_a=True))
    expect_forced = [[PAD_A, EOA] + [PAD_A] * 7] + [[PAD_A] * (i + 1) + [10 + i] * (8 - i) for i in range(1, 7)]
    assert forced.audio_layers[0] == expect_forced
    a1a2, a1t2 = audio_prompt(m.tokens, 2, "a1a2").unsqueeze(0), audio_prompt(m.tokens, 2, "a1t2").unsqueeze(0)
    mels = torch.zeros(1, tiny_model_cfg.n_mels, tiny_model_cfg.max_source_positions * 2)
    both = generate_batch_parallel(m, a1a2, a1t2, mels, 2, SamplingConfig(temperature=0.0, max_new_tokens=9))
    assert both.audio_layers[0] == expect and both.text_ids[0] == [7] * 9
    both = generate_batch_parallel(m, a1a2, a1t2, mels, 2,
                                   SamplingConfig(temperature=0.0, max_new_tokens=9, force_pad_a=True))
    assert both.audio_layers[0] == expect_forced


def test_batch_parallel_text_follows_a1t2_decoding(tiny_model):
    tok = tiny_model.tokens
    ex = example(tiny_model, "a1a2")
    mels = ex["mels"].unsqueeze(0)
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=10)
    a1a2, a1t2 = (audio_prompt(tok, 5, t).unsqueeze(0) for t in ("a1a2", "a1t2"))
    both = generate_batch_parallel(tiny_model, a1a2, a1t2, mels, 5, cfg)
    text_only = MiniOmniDecoder(tiny_model).generate(a1t2, False, cfg, mels, 1, 5)
    assert both.text_ids[0] == text_only.text_ids[0]
    assert all(len(layer) == both.steps for layer in both.audio_layers[0])


def ctc_model(cfg, weight=0.5):
    torch.manual_seed(0)
    return MiniOmni(dataclasses.replace(cfg, ctc_weight=weight))


def test_ctc_loss_is_the_mean_ctc_of_the_transcribed_audio_items(tiny_model_cfg):
    model = ctc_model(tiny_model_cfg).eval()
    examples = [example(model, t, seed=i) for i, t in enumerate(["asr", "t1t2", "a1t2", "a1a2"])]
    examples[0]["transcript_ids"], examples[2]["transcript_ids"] = [5, 6, 7], [9, 9]  # a1a2: no transcript
    batch = MiniOmniCollator(model.tokens)(examples)
    with torch.no_grad():
        out = model(batch)
        plain = model({**batch, "audio_text_len": None})
        feats = model.encode_audio(batch["audio_mels"])[:2]  # audio items 0 (asr) and 1 (a1t2) carry transcripts
        logp = model.audio_ctc(feats).log_softmax(-1).transpose(0, 1)
        ref = F.ctc_loss(logp, torch.tensor([[5, 6, 7], [9, 9, 0]]), batch["audio_len"][:2], torch.tensor([3, 2]),
                         blank=model.tokens.text_vocab)
    assert model.audio_ctc.out_features == model.tokens.text_vocab + 1
    torch.testing.assert_close(out["metrics"]["loss_ctc"], ref)
    torch.testing.assert_close(out["loss"], plain["loss"] + 0.5 * ref)
    assert "metrics" not in plain and tiny_model_cfg.ctc_weight == 0 and MiniOmni(tiny_model_cfg).audio_ctc is None
    with pytest.raises(ValueError, match="ctc_weight"):
        dataclasses.replace(tiny_model_cfg, ctc_weight=-1.0)


def test_ctc_head_learns_to_read_two_utterances(tiny_model_cfg):
    """CTC alone, on the encoder + adapter + head: greedy CTC decoding recovers two different transcripts."""
    model = ctc_model(tiny_model_cfg, 1.0).train()
    examples = [example(model, "asr", seed=s, T=20) for s in (1, 2)]
    truth = [[11, 12, 13], [14, 15]]
    for x, t in zip(examples, truth):
        x["transcript_ids"] = t
    batch = MiniOmniCollator(model.tokens)(examples)
    params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.Adam(params, lr=3e-3)
    first = None
    for _ in range(150):
        loss = model.ctc_loss(model.encode_audio(batch["audio_mels"]), batch["audio_len"], batch["audio_text"],
                              batch["audio_text_len"])
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        best = model.audio_ctc(model.encode_audio(batch["audio_mels"])).argmax(-1)  # (2, T)
    decoded = [[int(t) for j, t in enumerate(row[:20]) if t != model.tokens.text_vocab and (j == 0 or t != row[j - 1])]
               for row in best]
    assert float(loss.detach()) < first / 4 and decoded == truth


def test_utterance_norm_whitens_speech_frames_of_each_bin(tiny_model_cfg):
    from omni.mini_omni.model import utterance_norm

    g = torch.Generator().manual_seed(0)
    mels = torch.full((2, 80, 300), -0.5)  # Whisper pads with the item's floor (max - 8, scaled)
    mels[:, :, :100] = (torch.randn(2, 80, 100, generator=g) * 0.3 + 0.2).clamp(min=-0.5)
    mels[1] = mels[0] * 2 + 1  # the same speech in another "voice": another scale and offset
    out = utterance_norm(mels)
    speech = out[:, :, :100]
    torch.testing.assert_close(speech.mean(2), torch.zeros(2, 80), atol=1e-5, rtol=0)
    torch.testing.assert_close(speech.std(2, unbiased=False), torch.ones(2, 80), atol=1e-2, rtol=0)
    torch.testing.assert_close(out[0, :, :100], out[1, :, :100], atol=5e-2, rtol=0)  # scale / offset removed
    assert bool((out[:, :, 100:] == out[:, :, 100:101]).all())  # padding: one value per bin
    model = MiniOmni(dataclasses.replace(tiny_model_cfg, audio_norm="utterance")).eval()
    ref = MiniOmni(tiny_model_cfg).eval()
    ref.load_state_dict(model.state_dict())
    small = torch.randn(1, 80, 100, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_audio(small), ref.encode_audio(utterance_norm(small)))
    with pytest.raises(ValueError, match="audio_norm"):
        dataclasses.replace(tiny_model_cfg, audio_norm="global")


def test_sampling_is_seeded():
    from omni.mini_omni.generate import sample

    logits = torch.randn(4, 50)
    cfg = SamplingConfig(temperature=0.9, top_k=5, seed=3)
    a = sample(logits, cfg, torch.Generator().manual_seed(3))
    b = sample(logits, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    top5 = logits.topk(5, dim=-1).indices
    assert all(int(a[i]) in top5[i].tolist() for i in range(4))


def test_full_size_config_on_meta_device(compose):
    from omegaconf import OmegaConf

    cfg = compose("model=mini_omni")
    raw = OmegaConf.to_container(cfg.model.cfg, resolve=True)
    raw.pop("_target_"), raw.pop("_convert_")
    with torch.device("meta"):
        model = MiniOmni(MiniOmniConfig(**raw))
    assert model.backbone.get_input_embeddings().weight.shape == (181120, 896)
    assert model.head_weight.shape == (181120, 896)
    assert model.head_weight.data_ptr() != model.backbone.get_input_embeddings().weight.data_ptr() or \
        model.head_weight is not model.backbone.get_input_embeddings().weight  # untied
    assert [tuple(p.shape) for p in model.audio_adapter.parameters()] == [(4864, 768), (4864, 768), (896, 4864)]
    assert len(model.backbone.model.layers) == 24 and model.audio_encoder.config.d_model == 768
    attn = model.backbone.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (896, 896) and attn.k_proj.weight.shape == (128, 896)
    assert attn.q_proj.bias is not None  # Qwen2 qkv bias


def test_derived_vocab_cannot_be_typed_twice(tiny_model_cfg):
    with pytest.raises(ValueError, match="derived from model.tokens"):
        MiniOmniConfig(tokens=tiny_model_cfg.tokens, backbone={"vocab_size": 10})
    with pytest.raises(ValueError, match="not one of"):
        MiniOmniConfig(adapter="mlp")
