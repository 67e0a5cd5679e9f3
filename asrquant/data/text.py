"""Transcript normalisation shared by training targets, references and hypotheses."""

from __future__ import annotations

import re
import unicodedata

# Letters that NFKD does not decompose into a base letter plus combining marks.
_SPECIAL_LETTERS = str.maketrans(
    {"ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"}
)
_APOSTROPHES = str.maketrans({c: "'" for c in "\u2018\u2019\u201b\u02bc\u2032`\u00b4"})
_NOT_ALLOWED = re.compile(r"[^a-z0-9' ]+")
# An apostrophe is kept only inside a word ("don't", "o'clock"); quote marks around words go.
_EDGE_APOSTROPHE = re.compile(r"(?<![a-z0-9])'|'(?![a-z0-9])")
_SPACES = re.compile(r" +")

ALPHABET = " 'abcdefghijklmnopqrstuvwxyz0123456789"
"""Every character normalize_text can output."""


def normalize_text(text: str) -> str:
    """Maps a transcript to lowercase a-z, digits, in-word apostrophes and single spaces.

    The same function is applied to training transcripts, to references and to hypotheses
    before scoring, so WER never counts differences in case, punctuation or accents.

    Steps: Unicode NFKC; lowercase; curly quotes and primes become "'"; accents are stripped
    (NFKD, then combining marks dropped: "é" -> "e"; "ß" -> "ss"); any other character
    (punctuation, hyphens, symbols, other scripts) becomes a space; apostrophes not between two
    letters/digits are dropped ("'tis" -> "tis", "boys'" -> "boys"); whitespace is collapsed
    and stripped. Numbers are kept as digits, not spelled out.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.translate(_APOSTROPHES).translate(_SPECIAL_LETTERS)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = _NOT_ALLOWED.sub(" ", text)
    text = _EDGE_APOSTROPHE.sub(" ", text)
    return _SPACES.sub(" ", text).strip()
