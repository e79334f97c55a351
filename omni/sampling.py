"""Next-token sampling shared by every family: repetition penalty, banned ids, temperature, top-k, top-p.

One function, `sample(logits, ...)`, built on transformers' logits processors (the same ones `generate()` uses,
in its order): `RepetitionPenaltyLogitsProcessor` -> banned ids to -inf -> `TemperatureLogitsWarper` ->
`TopKLogitsWarper` -> `TopPLogitsWarper` -> softmax -> `torch.multinomial`. Everything stays on the logits' device;
only the chosen ids come back (callers `int()` them when they need a Python id).

- Greedy (argmax, after penalty and banned ids) when `temperature == 0` or `top_k == 1`.
- Repetition penalty (CTRL, as in transformers): each DISTINCT id in `penalize` has its score divided by the penalty
  when positive, multiplied when negative (an id repeated in `penalize` is penalised once).
- top-k keeps every id whose score ties the k-th largest; top-p (nucleus) keeps the smallest set of most likely ids
  whose probability reaches `top_p` (the id that crosses it included; an id exactly at the boundary is dropped).
- `generator` must live on the logits' device (`generator(seed, device)` makes one); seeded runs repeat exactly on
  one device.

Family defaults (their released settings) stay in each family's sampling config and are passed in:
Mini-Omni temperature 0.9 / top-k 1 (greedy); MiniMind-O text temperature 0.7 / top-p 0.85 / repetition penalty 1.0,
audio temperature 0.2 / top-k 50 / penalty 1.05 over the codebook's last 3 codes; Mini-Omni3 temperature 0.3 / top-k 3.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)


def check(temperature: float, top_k: int, top_p: float, repetition_penalty: float, where: str = "sampling") -> None:
    """Raise ValueError naming every out-of-range setting (temperature >= 0, top_k >= 0, 0 < top_p <= 1,
    repetition_penalty > 0)."""
    bad = [f"temperature={temperature}"] if temperature < 0 else []
    bad += [f"top_k={top_k}"] if top_k < 0 or int(top_k) != top_k else []
    bad += [f"top_p={top_p}"] if not 0 < top_p <= 1 else []
    bad += [f"repetition_penalty={repetition_penalty}"] if repetition_penalty <= 0 else []
    if bad:
        raise ValueError(f"{where}: invalid {', '.join(bad)} (need temperature >= 0, integer top_k >= 0 (0 = off), "
                         f"0 < top_p <= 1 (1 = off), repetition_penalty > 0 (1 = off))")


@functools.lru_cache(maxsize=64)
def warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """transformers' warpers for a sampled step (temperature > 0): temperature, then top-k, then top-p."""
    out = LogitsProcessorList([TemperatureLogitsWarper(float(temperature))])
    if top_k > 0:
        out.append(TopKLogitsWarper(int(top_k)))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(float(top_p)))
    return out


@functools.lru_cache(maxsize=16)
def _penalty(penalty: float) -> RepetitionPenaltyLogitsProcessor:
    return RepetitionPenaltyLogitsProcessor(float(penalty))


def generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A seeded generator on `device` (None without a seed)."""
    return None if seed is None else torch.Generator(device=device).manual_seed(int(seed))


def processed_logits(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                     repetition_penalty: float = 1.0, penalize: Sequence[int] | torch.Tensor | None = None,
                     banned: Sequence[int] = ()) -> torch.Tensor:
    """(B, V) or (V,) logits -> float32 scores of the same shape after every step `sample` applies before drawing
    (greedy settings: penalty and banned ids only). softmax of the result is the distribution drawn from."""
    squeeze = logits.dim() == 1
    scores = logits.detach().float().reshape(-1, logits.shape[-1])
    if repetition_penalty != 1.0 and penalize is not None and len(penalize):
        ids = torch.as_tensor(penalize, dtype=torch.long, device=scores.device).reshape(1, -1)
        scores = _penalty(repetition_penalty)(ids.expand(scores.shape[0], -1), scores)
    if len(banned):
        scores = scores.clone()
        scores[:, torch.as_tensor(list(banned), dtype=torch.long, device=scores.device)] = float("-inf")
    if not (temperature == 0 or top_k == 1):
        scores = warpers(float(temperature), int(top_k), float(top_p))(None, scores)
    return scores[0] if squeeze else scores


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           repetition_penalty: float = 1.0, penalize: Sequence[int] | torch.Tensor | None = None,
           banned: Sequence[int] = (), generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) ids, or (V,) -> a 0-d id tensor, on the logits' device (see the module doc).
    `penalize`: the ids the repetition penalty applies to (the same for every row)."""
    scores = processed_logits(logits, temperature, top_k, top_p, repetition_penalty, penalize, banned)
    if temperature == 0 or top_k == 1:
        return scores.argmax(dim=-1)
    if generator is not None and generator.device.type != scores.device.type:
        raise ValueError(f"sampling generator is on {generator.device} but the logits are on {scores.device}: "
                         "make it with omni.sampling.generator(seed, device)")
    probs = torch.softmax(scores.reshape(-1, scores.shape[-1]), dim=-1)
    ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return ids[0] if logits.dim() == 1 else ids
