"""Greedy (best-path) CTC decoding. (Beam search over a lexicon: `lexicon_decoding`.)"""

from __future__ import annotations

import torch
from torch import Tensor

from asrquant.data.tokenizer import Tokenizer


def greedy_ctc_decode(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best path per utterance: argmax per frame, collapse repeats, drop blanks.

    log_probs: (B, T, V) scores (log-probs or logits); lengths: (B,) valid frames per utterance.
    Frames beyond an utterance's length are never decoded.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs has shape {tuple(log_probs.shape)}; expected (B, T, V)")
    batch, frames, _ = log_probs.shape
    if lengths.shape != (batch,):
        raise ValueError(f"lengths has shape {tuple(lengths.shape)}; expected ({batch},)")
    if batch and int(lengths.max()) > frames:
        raise ValueError(f"a length of {int(lengths.max())} exceeds the {frames} frames given")

    best = log_probs.argmax(dim=-1)  # (B, T)
    previous = torch.cat([best.new_full((batch, 1), -1), best[:, :-1]], dim=1)
    valid = torch.arange(frames, device=best.device) < lengths.to(best.device)[:, None]
    keep = (best != previous) & (best != blank) & valid
    best, keep = best.cpu(), keep.cpu()
    return [tokens[kept].tolist() for tokens, kept in zip(best, keep, strict=True)]


class GreedyDecoder:
    """(B, T, V) CTC scores -> the best path's text per utterance: ASRModule's default decoder.
    Any object called as `decoder(log_probs, lengths) -> list[str]` can take its place."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        decoded = greedy_ctc_decode(log_probs, lengths, self.tokenizer.blank_id)
        return [self.tokenizer.decode(ids) for ids in decoded]
