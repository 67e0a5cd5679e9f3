"""Corpus-level word and character error rates (via jiwer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jiwer


class ErrorRate(NamedTuple):
    rate: float  # errors / ref_length
    errors: int  # substitutions + deletions + insertions, summed over the corpus
    ref_length: int  # reference words (WER) or characters (CER), summed over the corpus


def corpus_wer(refs: Sequence[str], hyps: Sequence[str]) -> ErrorRate:
    """Total word errors over total reference words (what `jiwer.wer(refs, hyps)` returns).
    Empty hypotheses are fine; empty references only add insertions."""
    _check_pairs(refs, hyps)
    out = jiwer.process_words(list(refs), list(hyps))
    return _error_rate(out.substitutions, out.deletions, out.insertions, out.hits, "words")


def corpus_cer(refs: Sequence[str], hyps: Sequence[str]) -> ErrorRate:
    """Total character errors (spaces included) over total reference characters, as
    `jiwer.cer(refs, hyps)`."""
    _check_pairs(refs, hyps)
    out = jiwer.process_characters(list(refs), list(hyps))
    return _error_rate(out.substitutions, out.deletions, out.insertions, out.hits, "characters")


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if len(refs) == 0:
        raise ValueError("no references given; an error rate needs at least one")
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses")


def _error_rate(subs: int, dels: int, ins: int, hits: int, unit: str) -> ErrorRate:
    ref_length = subs + dels + hits
    if ref_length == 0:
        raise ValueError(f"the references contain no {unit}; the error rate is undefined")
    errors = subs + dels + ins
    return ErrorRate(errors / ref_length, errors, ref_length)
