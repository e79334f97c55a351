"""The text normaliser applied to hypotheses AND references before CER/WER.

Steps, in order:
1. Unicode NFKC (full-width forms, ligatures -> plain characters);
2. lower-case;
3. every character that is not a letter, digit, apostrophe or whitespace becomes a space
   (punctuation never counts as an error; "don't" keeps its apostrophe);
4. apostrophes not between two letters are dropped ('quoted' -> quoted);
5. runs of whitespace collapse to one space; leading/trailing space removed.
Numbers are NOT spelled out: "7" and "seven" differ, so references and outputs should use one convention.
"""
from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^\w'\s]|_", re.UNICODE)
_LOOSE_APOSTROPHE = re.compile(r"(?<![^\W\d_])'|'(?![^\W\d_])", re.UNICODE)
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = _NON_WORD.sub(" ", text)
    text = _LOOSE_APOSTROPHE.sub("", text)
    return _SPACES.sub(" ", text).strip()
