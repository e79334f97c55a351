"""CTC prefix scoring for hybrid CTC/attention decoding (Watanabe et al. 2017, "Hybrid CTC/Attention Architecture
for End-to-End Speech Recognition", Algorithm 2; the same recursion as ESPnet's CTCPrefixScore).

A model with an auxiliary CTC head over its audio frames (Mini-Omni's `audio_ctc`) can steer its own text decoder
while transcribing: each candidate next token c of the decoder is scored

    (1 - w) * log p_att(c | h, audio) + w * log p_ctc(h + c ... | audio)

where p_ctc(h + c ...) is the CTC probability that the transcript starts with prefix h + c, and for the end token
the probability that it is exactly h. The CTC term enforces the monotonic, frame-synchronous alignment the
attention decoder lacks (no skipped or repeated words); the decoder keeps its language model.
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


class CTCPrefixScorer:
    """Prefix scores of one utterance's CTC log-posteriors `log_probs` (T, V + 1) with `blank` the blank index.

    State: for the current prefix h (label ids), r_n[t] / r_b[t] = log-probability that frames 0..t emit exactly h
    with the last frame non-blank / blank. `score(c)` gives log p(h + c ... ) for candidate labels c (K,) without
    changing the state; `final()` gives log p(h) (the whole utterance emits exactly h); `advance(c)` appends c.
    """

    def __init__(self, log_probs: torch.Tensor, blank: int) -> None:
        if log_probs.dim() != 2 or log_probs.shape[0] == 0:
            raise ValueError(f"CTC log-probs must be (T > 0, V + 1), got {tuple(log_probs.shape)}")
        self.x = log_probs.detach().float().cpu()  # (T, V + 1)
        self.blank = int(blank)
        self.prefix: list[int] = []
        self.r_n = torch.full((self.x.shape[0],), NEG_INF)
        self.r_b = torch.cumsum(self.x[:, self.blank], dim=0)  # empty prefix: blanks only
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (cands, r_n, r_b) of score()

    def final(self) -> float:
        """log p(transcript == prefix)."""
        return float(torch.logaddexp(self.r_n[-1], self.r_b[-1]))

    def score(self, cands: torch.Tensor) -> torch.Tensor:
        """cands (K,) label ids (no blank) -> (K,) log p(transcript starts with prefix + c)."""
        cands = cands.long().cpu()
        if bool((cands == self.blank).any()):
            raise ValueError("the blank label is not a candidate token")
        T, K = self.x.shape[0], cands.shape[0]
        xc = self.x[:, cands]  # (T, K)
        same = cands == self.prefix[-1] if self.prefix else torch.zeros(K, dtype=torch.bool)  # (K,)
        # phi[t]: prefix h done by frame t, ready for c (a repeated label needs a blank in between)
        phi = torch.where(same.view(1, K), self.r_b.view(T, 1), torch.logaddexp(self.r_n, self.r_b).view(T, 1))
        r_n = torch.full((T, K), NEG_INF)
        r_b = torch.full((T, K), NEG_INF)
        if not self.prefix:
            r_n[0] = xc[0]  # c starts at frame 0
        for t in range(1, T):
            r_n[t] = torch.logaddexp(r_n[t - 1], phi[t - 1]) + xc[t]
            r_b[t] = torch.logaddexp(r_b[t - 1], r_n[t - 1]) + self.x[t, self.blank]
        self._last = (cands, r_n, r_b)
        # psi: c first emitted at frame 0 (empty prefix) or at frame t >= 1 right after h
        return torch.logsumexp(torch.cat([r_n[:1], phi[:-1] + xc[1:]]), dim=0)

    def advance(self, label: int) -> None:
        """Append `label` to the prefix (reusing the last `score` call's recursion when it scored it)."""
        label = int(label)
        if self._last is None or not bool((self._last[0] == label).any()):
            self.score(torch.tensor([label]))
        cands, r_n, r_b = self._last
        k = int((cands == label).nonzero()[0, 0])
        self.r_n, self.r_b = r_n[:, k].clone(), r_b[:, k].clone()
        self.prefix.append(label)
        self._last = None


class JointCTCPicker:
    """Greedy hybrid decoding of one transcript: picks the next text token among the decoder's `candidates` best by
    (1 - weight) * log p_att + weight * log p_ctc(prefix), where `end` (the decoder's end-of-text id) is scored by
    the CTC probability of the finished transcript and tokens outside the CTC vocabulary (other specials) are
    never picked. Call it with the decoder's (1, V_row) logits of each step; it advances its CTC state itself."""

    def __init__(self, scorer: CTCPrefixScorer, weight: float, end: int, vocab: int, candidates: int = 8) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"joint CTC weight must be in (0, 1], got {weight}")
        self.scorer, self.weight, self.end, self.vocab, self.candidates = scorer, float(weight), int(end), \
            int(vocab), int(candidates)
        self.done = False

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(1, V_row) decoder logits -> (1,) chosen id."""
        if self.done:
            return torch.tensor([self.end], device=logits.device)
        att = logits[0].float().log_softmax(-1).cpu()  # (V_row,)
        top = att.topk(min(self.candidates, att.shape[0])).indices
        top = top[(top < self.vocab) | (top == self.end)]
        if self.end not in top.tolist():
            top = torch.cat([top, torch.tensor([self.end])])  # the transcript may always end
        text = top[top != self.end]
        ctc = torch.full((top.shape[0],), NEG_INF)
        if text.numel():
            ctc[top != self.end] = self.scorer.score(text)
        ctc[top == self.end] = self.scorer.final()
        total = (1 - self.weight) * att[top] + self.weight * ctc
        pick = int(top[int(total.argmax())])
        if pick == self.end:
            self.done = True
        else:
            self.scorer.advance(pick)
        return torch.tensor([pick], device=logits.device)
