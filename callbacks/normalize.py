"""The text normaliser applied to hypotheses AND references before CER/WER.

Steps, in order:
1. Unicode NFKC (full-width forms, ligatures -> plain characters);
2. lower-case;
3. every character that is not a letter, digit, apostrophe or whitespace becomes a space
   (punctuation never counts as an error; "don't" keeps its apostrophe);
4. apostrophes not between two letters are dropped ('quoted' -> quoted);
5. runs of whitespace collapse to one space; leading/trailing space removed.
Numbers are NOT spelled out: "7" and "seven" differ, so references and outputs should use one convention.

`normalize_spoken` is the ASR-of-speech scores' normaliser (callbacks/speech/scoring.py `intelligibility`): what a
recogniser writes for speech is not a convention the model chose ("seven" / "7", "colour" / "color"), so both sides
first go through OpenAI Whisper's English normaliser (the `whisper-normalizer` package, which ships Whisper's British
-> American spelling map; transformers' copy of the class needs that map from a hub tokenizer folder, not offline):
numbers and ordinals to digits ("twenty-one" -> "21", "seven dollars" -> "$7"), spellings to American, contractions
expanded ("I'm" -> "i am"), titles spelled out ("Mr." -> "mister"), fillers ("uh", "hmm") and bracketed text
dropped, punctuation removed. `normalize_text` then applies on top (so "$7" and "3.5" are compared as "7", "3 5").
"""
from __future__ import annotations

import functools
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


@functools.cache
def _whisper_english():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize_spoken(text: str) -> str:
    """Whisper's English normaliser (see the module docstring): for scoring what an ASR heard in generated speech."""
    return _whisper_english()(text)
