"""omni/sampling.py: the one next-token sampler every family calls, against hand-computed distributions.

Every expected value below is worked out by hand in the comments (probabilities chosen so the arithmetic is exact);
each fact has a negative control: the plausible wrong variant gives a different answer.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from omni.sampling import check, processed_logits, sample

torch.set_num_threads(1)


def probs_of(scores: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores, dim=-1)


def test_repetition_penalty_hand_table():
    # id:            0     1     2     3     4
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0])
    # penalty 2 on ids {0, 1, 4} (1 listed twice): positive / 2, negative * 2, zero stays; 2 and 3 untouched
    expect = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0])
    got = processed_logits(logits, repetition_penalty=2.0, penalize=[0, 1, 1, 4])
    assert torch.equal(got, expect)
    # negative controls: a repeated id penalised twice would give -4.0; dividing every score would give -0.5
    assert got[1] != -4.0 and got[1] != -0.5
    # greedy after the penalty: 2.0 / 1.2 = 1.667 < 1.9, so id 1 wins (without it, id 0)
    two = torch.tensor([2.0, 1.9, -1.0, 0.5])
    assert int(sample(two, 0.0, repetition_penalty=1.2, penalize=[0])) == 1
    assert int(sample(two, 0.0)) == 0
    # as a tensor of ids (the form a caller keeps on the device) and a batch of rows: the same penalty per row
    rows = processed_logits(logits.expand(3, -1), repetition_penalty=2.0, penalize=torch.tensor([0, 1, 4]))
    assert torch.equal(rows, expect.expand(3, -1))


def test_top_k_mask_keeps_ties_and_renormalises():
    logits = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0])
    # top-2: the 2nd largest score is 2.0, tied by ids 2 and 3 -> ids {1, 2, 3} kept; with temperature 2 their
    # probabilities are exp(1.5), exp(1), exp(1) over their sum
    p = probs_of(processed_logits(logits, temperature=2.0, top_k=2))
    z = math.exp(1.5) + 2 * math.exp(1.0)
    expect = torch.tensor([0.0, math.exp(1.5) / z, math.exp(1.0) / z, math.exp(1.0) / z, 0.0])
    torch.testing.assert_close(p, expect)
    # negative control: a top-k that breaks ties (exactly 2 ids) would drop id 2 or 3
    assert int((p > 0).sum()) == 3
    # top_k = 0 is off; top_k >= V keeps everything
    assert bool((probs_of(processed_logits(logits, temperature=1.0, top_k=0)) > 0).all())
    assert bool((probs_of(processed_logits(logits, temperature=1.0, top_k=9)) > 0).all())


def test_top_p_keeps_the_crossing_token_and_follows_temperature():
    p_true = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = p_true.log()
    # top-p 0.7: 0.5 < 0.7, 0.5 + 0.3 = 0.8 crosses it -> {0, 1}, renormalised to 0.5/0.8, 0.3/0.8
    p = probs_of(processed_logits(logits, temperature=1.0, top_p=0.7))
    torch.testing.assert_close(p, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    # top-p 0.85: 0.8 < 0.85, + 0.15 = 0.95 crosses -> {0, 1, 2}, / 0.95
    p = probs_of(processed_logits(logits, temperature=1.0, top_p=0.85))
    torch.testing.assert_close(p, torch.tensor([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]))
    # negative control: dropping the crossing token would have kept only {0, 1} at 0.85
    assert p[2] > 0
    # temperature BEFORE top-p (transformers' order): at T = 2 the probabilities are sqrt(p) normalised,
    # sqrt = .7071 .5477 .3873 .2236 (sum 1.8657) -> .379 .294 .208 .120; cumulative .379 .673 .880 -> top-p 0.7
    # keeps {0, 1, 2}; applying top-p first (on p itself) would keep only {0, 1}
    root = p_true.sqrt()
    kept = root[:3] / root[:3].sum()
    p = probs_of(processed_logits(logits, temperature=2.0, top_p=0.7))
    torch.testing.assert_close(p, torch.cat([kept, torch.zeros(1)]))


def test_banned_ids_and_greedy_rules():
    logits = torch.tensor([5.0, 4.0, 1.0, 3.0])
    assert int(sample(logits, 0.0, banned=[0, 1])) == 3               # argmax of what is left
    assert int(sample(logits, 0.7, top_k=1, banned=[0])) == 1          # top-k 1 is greedy at any temperature
    p = probs_of(processed_logits(logits, temperature=1.0, banned=[0, 1]))
    z = math.exp(1.0) + math.exp(3.0)
    torch.testing.assert_close(p, torch.tensor([0.0, 0.0, math.exp(1.0) / z, math.exp(3.0) / z]))


def test_draws_follow_the_hand_distribution_and_repeat_with_a_seed():
    # 20,000 rows of the same logits drawn at once: frequencies of top-p 0.85 over [.5 .3 .15 .05] ~ /0.95
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(20000, -1)
    ids = sample(logits, 1.0, top_p=0.85, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=4).float() / ids.numel()
    torch.testing.assert_close(freq, torch.tensor([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]), atol=0.012, rtol=0)
    again = sample(logits, 1.0, top_p=0.85, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)
    one = sample(logits[0], 1.0, top_p=0.85, generator=torch.Generator().manual_seed(0))
    assert one.dim() == 0


class _Transfers(TorchFunctionMode):
    """Records every tensor call that moves data off its device or to a Python value."""

    NAMES = {"cpu", "to", "item", "tolist", "numpy", "cuda", "__int__", "__float__", "__bool__"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_no_logits_leave_the_device():
    logits = torch.randn(2, 50)
    for kwargs in ({"temperature": 0.0}, {"temperature": 0.7, "top_p": 0.85, "repetition_penalty": 1.3},
                   {"temperature": 0.2, "top_k": 50, "repetition_penalty": 1.05}):
        with _Transfers() as mode:
            out = sample(logits, penalize=torch.tensor([3, 4, 5]), banned=(7,), **kwargs)
        assert out.device == logits.device and out.shape == (2,)
        assert not mode.calls, (kwargs, mode.calls)


def test_settings_are_checked_naming_the_bad_value():
    check(0.0, 0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"top_p=0.0.*repetition_penalty=0"):
        check(0.5, 3, 0.0, 0.0, "x")
    with pytest.raises(ValueError, match="temperature=-1"):
        check(-1, 0, 1.0, 1.0)


# -- every family calls it, with its released defaults; greedy decoding unchanged (argmax) ----------------------
def test_family_defaults_are_the_released_ones():
    from omni.mini_omni.generate import SamplingConfig as MiniOmniSampling
    from omni.mini_omni3.session import SessionConfig
    from omni.minimind_o.generate import SamplingConfig as MiniMindSampling

    mo = MiniOmniSampling()
    assert (mo.temperature, mo.top_k, mo.top_p) == (0.9, 1, 1.0)                   # spec: temperature 0.9, top-k 1
    s3 = SessionConfig()
    assert (s3.temperature, s3.top_k, s3.top_p) == (0.3, 3, 1.0)                   # card: temperature 0.3, top-k 3
    mm = MiniMindSampling()
    assert (mm.temperature, mm.top_p, mm.top_k, mm.repetition_penalty) == (0.7, 0.85, 0, 1.0)
    assert (mm.audio_temperature, mm.audio_top_k, mm.audio_penalty, mm.audio_penalty_window) == (0.2, 50, 1.05, 3)


def test_family_samplers_are_the_shared_one_and_greedy_is_argmax(monkeypatch):
    import omni.mini_omni.generate as mo
    import omni.mini_omni3.session as s3
    import omni.minimind_o.generate as mm

    logits = torch.tensor([[0.1, 2.0, 1.9, -3.0], [4.0, 0.0, 4.5, 1.0]])
    # Mini-Omni's released default (temperature 0.9, top-k 1) is greedy: argmax per row, whatever the seed
    assert mo.sample(logits, mo.SamplingConfig(), torch.Generator().manual_seed(5)).tolist() == [1, 2]
    # MiniMind-O greedy: argmax after the penalty and banned ids (2.0 / 1.05 = 1.905 > 1.9: id 1 still wins;
    # / 1.2 = 1.667: id 2 wins)
    assert mm.sample_logits(logits[0], 0.0, penalty=1.05, penalize=[1]) == 1
    assert mm.sample_logits(logits[0], 0.0, penalty=1.2, penalize=[1]) == 2
    assert mm.sample_logits(logits[1], 0.0, banned=[2]) == 0
    # each family module reaches omni.sampling.sample (a stand-in records the call)
    seen = []

    def spy(x, temperature=0.0, top_k=0, top_p=1.0, *args, **kwargs):
        seen.append((temperature, top_k, top_p))
        return x.argmax(dim=-1)

    for module, name in ((mo, "sample_ids"), (s3, "sample"), (mm, "sample")):
        monkeypatch.setattr(module, name, spy)
    mo.sample(logits, mo.SamplingConfig(temperature=0.5, top_k=4, top_p=0.9))
    mm.sample_logits(logits[0], 0.7, 0, 0.85)
    session = object.__new__(s3.StreamingSession)
    session.cfg, session.generator, session.generated = s3.SessionConfig(), None, 0
    assert session._sample(logits[1]) == 2
    assert seen == [(0.5, 4, 0.9), (0.7, 0, 0.85), (0.3, 3, 1.0)]
