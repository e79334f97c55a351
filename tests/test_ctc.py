"""Hybrid CTC/attention decoding (omni/ctc.py): prefix scores equal brute-force sums over every alignment path,
the full-transcript score equals torch's CTC loss, the picker trades the two scores by its weight, and Mini-Omni's
ASR decoding follows its CTC head when asked to."""
import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from omni.ctc import CTCPrefixScorer, JointCTCPicker
from omni.mini_omni.generate import MiniOmniDecoder, SamplingConfig
from omni.mini_omni.infer import MiniOmniInference


def _collapse(path, blank):
    out, prev = [], None
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return out


def _brute(logp, blank):
    """{transcript tuple: probability} over all (V + 1)^T alignment paths."""
    T, V1 = logp.shape
    probs: dict[tuple, float] = {}
    for path in itertools.product(range(V1), repeat=T):
        key = tuple(_collapse(path, blank))
        probs[key] = probs.get(key, 0.0) + math.exp(float(sum(logp[t, s] for t, s in enumerate(path))))
    return probs


@pytest.mark.parametrize("prefix", [[], [0], [0, 1], [1, 1]])
def test_prefix_scores_equal_brute_force_sums_over_alignments(prefix):
    torch.manual_seed(0)
    logp = torch.randn(5, 3).log_softmax(-1)  # labels 0, 1; blank 2
    probs = _brute(logp, blank=2)
    scorer = CTCPrefixScorer(logp, blank=2)
    for label in prefix:
        scorer.score(torch.tensor([0, 1]))  # a scored step, then advanced from its cache
        scorer.advance(label)
    assert scorer.prefix == prefix
    assert math.exp(scorer.final()) == pytest.approx(probs.get(tuple(prefix), 0.0), rel=1e-4, abs=1e-9)
    got = scorer.score(torch.tensor([0, 1])).exp()
    for c, p in zip((0, 1), got.tolist()):
        want = sum(v for k, v in probs.items() if list(k[: len(prefix) + 1]) == prefix + [c])
        assert p == pytest.approx(want, rel=1e-4, abs=1e-9), (prefix, c)


def test_full_transcript_score_equals_torch_ctc_loss():
    torch.manual_seed(1)
    logp = torch.randn(30, 7).log_softmax(-1)  # labels 0..5, blank 6
    target = [3, 1, 1, 4, 0]
    scorer = CTCPrefixScorer(logp, blank=6)
    for label in target:
        scorer.advance(label)
    nll = F.ctc_loss(logp.unsqueeze(1), torch.tensor([target]), torch.tensor([30]), torch.tensor([5]), blank=6,
                     reduction="sum")
    assert scorer.final() == pytest.approx(-float(nll), rel=1e-5)
    with pytest.raises(ValueError, match="blank"):
        scorer.score(torch.tensor([6]))


def _peaked(labels_by_frame, n_labels, blank):
    logp = torch.full((len(labels_by_frame), n_labels + 1), -8.0)
    for t, s in enumerate(labels_by_frame):
        logp[t, blank if s is None else s] = 0.0
    return logp.log_softmax(-1)


def test_picker_trades_ctc_against_the_decoder_by_its_weight():
    vocab, end, other = 8, 8, 9  # text tokens 0..7, end-of-text 8, another special 9 (V_row = 10)
    logp = _peaked([2, 2, None, None, 3, 3, None], vocab, blank=vocab)  # CTC reads "2 3"
    att = torch.zeros(1, 10)
    att[0, 1], att[0, other], att[0, 2], att[0, 3] = 6.0, 9.0, 1.0, 1.0  # the decoder insists on token 1 (and
    # on a special); 2 and 3 are among its 8 best candidates, which are all the picker considers

    def decode(weight):
        pick = JointCTCPicker(CTCPrefixScorer(logp, blank=vocab), weight, end=end, vocab=vocab)
        out = []
        for _ in range(6):
            out.append(int(pick(att)))
            if out[-1] == end:
                break
        return out

    assert decode(1.0) == [2, 3, end]  # CTC only: its transcript, then the end
    first = decode(0.01)[0]
    assert first == 1  # mostly the decoder; the special it prefers is never a transcript token
    assert other not in decode(0.01) + decode(0.5)
    with pytest.raises(ValueError, match="weight"):
        JointCTCPicker(CTCPrefixScorer(logp, blank=vocab), 0.0, end=end, vocab=vocab)
    with pytest.raises(ValueError, match="ctc_weight"):
        SamplingConfig(ctc_weight=1.5)


def test_mini_omni_asr_decoding_follows_its_ctc_head(tiny_model_cfg):
    from omni.mini_omni.model import MiniOmni

    torch.manual_seed(0)
    model = MiniOmni(dataclasses.replace(tiny_model_cfg, ctc_weight=1.0)).eval()
    tok = model.tokens
    infer = MiniOmniInference(model, tokenizer=None)
    infer.decode_text = lambda ids: " ".join(map(str, ids))
    ex = {"mels": torch.randn(tiny_model_cfg.n_mels, 2 * tiny_model_cfg.max_source_positions),
          "n_audio_frames": 20}
    prompt, mels, T = infer.prompt(ex, "asr")
    h, _ = MiniOmniDecoder(model).prefill(prompt, mels, 1, T)
    top = model.row_logits(h.text, tok.text_row)[0].topk(8).indices.tolist()  # the decoder's first candidates
    target = next(t for t in top[1:] if t < tok.text_vocab)  # one it does not rank first
    with torch.no_grad():  # the CTC head reads `target` at every frame, whatever the audio
        model.audio_ctc.weight.zero_()
        model.audio_ctc.bias.fill_(-10.0)
        model.audio_ctc.bias[target] = 10.0
    joint = infer.answer(ex, "asr", SamplingConfig(temperature=0.0, max_new_tokens=8, ctc_weight=1.0))
    plain = infer.answer(ex, "asr", SamplingConfig(temperature=0.0, max_new_tokens=8))
    assert joint.text_ids == [target] and plain.text_ids[0] == top[0] != target
    # only ASR transcribes the audio: an answer task ignores the CTC head
    a1t2 = infer.answer(ex, "a1t2", SamplingConfig(temperature=0.0, max_new_tokens=8, ctc_weight=1.0))
    assert a1t2.text_ids == infer.answer(ex, "a1t2", SamplingConfig(temperature=0.0, max_new_tokens=8)).text_ids
    no_head = MiniOmniInference(MiniOmni(tiny_model_cfg).eval(), tokenizer=None)
    with pytest.raises(ValueError, match="CTC head"):
        no_head.answer(ex, "asr", SamplingConfig(temperature=0.0, max_new_tokens=8, ctc_weight=0.3))


def test_minimind_o_sampling_takes_mini_omni_settings_without_joint_ctc():
    from omni.minimind_o.infer import sampling_config

    cfg = sampling_config(SamplingConfig(temperature=0.0, top_k=1, max_new_tokens=5), speech=False)
    assert cfg.max_new_tokens == 5 and not cfg.speech
    with pytest.raises(ValueError, match="CTC head"):
        sampling_config(SamplingConfig(temperature=0.0, max_new_tokens=5, ctc_weight=0.3), speech=False)
