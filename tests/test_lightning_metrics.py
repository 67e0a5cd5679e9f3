"""Corpus WER/CER agree with hand counts and with jiwer."""

import jiwer
import pytest

from asrquant.lightning import corpus_cer, corpus_wer


def test_one_substitution_and_one_deletion_in_four_words():
    result = corpus_wer(["a b c d"], ["a x c"])
    assert (result.errors, result.ref_length, result.rate) == (2, 4, 0.5)
    assert result.rate == jiwer.wer(["a b c d"], ["a x c"])


def test_corpus_wer_pools_errors_over_all_words_not_utterance_average():
    refs, hyps = ["a b", "c d e f"], ["a", "c d e f"]
    result = corpus_wer(refs, hyps)
    assert (result.errors, result.ref_length) == (1, 6)
    assert result.rate == pytest.approx(1 / 6)
    assert result.rate == jiwer.wer(refs, hyps)


def test_insertions_count_as_errors():
    result = corpus_wer(["a b"], ["a b c d"])
    assert (result.errors, result.ref_length, result.rate) == (2, 2, 1.0)


def test_empty_hypothesis_is_all_deletions():
    result = corpus_wer(["a b c", "d"], ["", "d"])
    assert (result.errors, result.ref_length) == (3, 4)
    assert result.rate == jiwer.wer(["a b c", "d"], ["", "d"])


def test_cer_counts_characters_including_spaces():
    result = corpus_cer(["ab cd", "x"], ["abcd", "y"])
    assert (result.errors, result.ref_length) == (2, 6)
    assert result.rate == pytest.approx(2 / 6)
    assert result.rate == jiwer.cer(["ab cd", "x"], ["abcd", "y"])


def test_empty_reference_list_is_an_error():
    with pytest.raises(ValueError, match="no references"):
        corpus_wer([], [])
    with pytest.raises(ValueError, match="no references"):
        corpus_cer([], [])


def test_references_without_words_are_an_error():
    with pytest.raises(ValueError, match="no words"):
        corpus_wer([""], ["a"])


def test_mismatched_counts_are_an_error():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_wer(["a", "b"], ["a"])
