"""Greedy CTC decoding on hand-made and random log-prob tensors."""

import pytest
import torch

from asrquant.data.tokenizer import CharTokenizer
from asrquant.models import GreedyDecoder, greedy_ctc_decode


def frames_to_log_probs(frame_tokens: list[list[int]], vocab_size: int = 5) -> torch.Tensor:
    """(B, T, V) log-probs whose per-frame argmax is the given token; rows padded with blank."""
    frames = max(len(row) for row in frame_tokens)
    log_probs = torch.full((len(frame_tokens), frames, vocab_size), -10.0)
    for b, row in enumerate(frame_tokens):
        for t, token in enumerate(row):
            log_probs[b, t, token] = 0.0
    return log_probs


def reference_decode(best_path: list[int], blank: int = 0) -> list[int]:
    out, previous = [], None
    for token in best_path:
        if token != previous and token != blank:
            out.append(token)
        previous = token
    return out


def test_repeats_collapse_and_blanks_drop():
    log_probs = frames_to_log_probs([[1, 1, 0, 1, 2, 2, 0, 0, 3]])
    assert greedy_ctc_decode(log_probs, torch.tensor([9])) == [[1, 1, 2, 3]]


def test_blank_only_and_empty_utterances_decode_to_nothing():
    log_probs = frames_to_log_probs([[0, 0, 0], [2, 2, 2]])
    assert greedy_ctc_decode(log_probs, torch.tensor([3, 0])) == [[], []]


def test_frames_beyond_length_are_never_decoded():
    log_probs = frames_to_log_probs([[1, 2, 3, 4], [3, 3, 4, 1]])
    assert greedy_ctc_decode(log_probs, torch.tensor([4, 2])) == [[1, 2, 3, 4], [3]]


def test_repeat_straddling_the_length_boundary_is_not_affected_by_padding():
    log_probs = frames_to_log_probs([[2, 0, 2, 2, 2]])
    assert greedy_ctc_decode(log_probs, torch.tensor([3])) == [[2, 2]]


def test_other_blank_id():
    log_probs = frames_to_log_probs([[4, 1, 1, 4, 0]])
    assert greedy_ctc_decode(log_probs, torch.tensor([5]), blank=4) == [[1, 0]]


@pytest.mark.parametrize("seed", range(5))
def test_matches_frame_by_frame_reference_on_random_scores(seed):
    generator = torch.Generator().manual_seed(seed)
    # few symbols, so that repeats and blanks are frequent
    log_probs = torch.randn(6, 40, 3, generator=generator).log_softmax(-1)
    lengths = torch.randint(0, 41, (6,), generator=generator)
    decoded = greedy_ctc_decode(log_probs, lengths)
    best = log_probs.argmax(-1)
    assert decoded == [reference_decode(best[b, : lengths[b]].tolist()) for b in range(6)]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"expected \(B, T, V\)"):
        greedy_ctc_decode(torch.zeros(3, 4), torch.tensor([3]))
    with pytest.raises(ValueError, match="exceeds the 4 frames"):
        greedy_ctc_decode(torch.zeros(1, 4, 2), torch.tensor([5]))


def test_greedy_decoder_writes_the_best_path_as_text_per_utterance():
    tok = CharTokenizer()
    h, i = tok.encode("hi")
    log_probs = frames_to_log_probs([[h, h, 0, i, i], [i, 0, i, h, 0]], tok.vocab_size)
    assert GreedyDecoder(tok)(log_probs, torch.tensor([5, 3])) == ["hi", "ii"]
