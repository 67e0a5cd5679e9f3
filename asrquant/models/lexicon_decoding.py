"""Beam search over CTC outputs constrained to a lexicon, optionally with an n-gram word LM.

The engine is flashlight-text's `LexiconDecoder` (the one under torchaudio's `ctc_decoder`),
called directly: a trie of the words' token spellings keeps every hypothesis inside the
lexicon, so each word it outputs is a lexicon word; the LM (an ARPA file, read by the KenLM
built into flashlight-text's wheel) scores whole words.

Word boundaries follow the tokenizer. A character tokenizer writes a space between words, and
a word ends only where the space is emitted: each word is spelt with a closing space (as
wav2letter spells 'w o r d |'), and one frame that is certainly a space is put after the last
frame so the last word can close. Were the space optional between words, a lexicon holding
single letters (AN4's spelled words) would let the search read 'eight' as 'e i g h t' for
free. A SentencePiece tokenizer marks a word's start inside its first piece ('▁the'), so a
word's spelling is the pieces of the word alone, exactly as in a sentence; it has no token
between words, and its <unk> (never emitted: every normalised character is in its
vocabulary) stands in as the silence.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from flashlight.lib.text.decoder import (
    CriterionType,
    LexiconDecoder,
    LexiconDecoderOptions,
    SmearingMode,
    Trie,
    ZeroLM,
)
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary
from torch import Tensor

from asrquant.checks import check_number
from asrquant.data.tokenizer import Tokenizer

UNK_WORD = "<unk>"


@dataclass(frozen=True)
class BeamSettings:
    """The search: hypotheses kept per frame, how far below the best one a hypothesis may fall
    (in log-probability) and still be kept, the LM's weight (its scores are log10, as KenLM's)
    and a score added per word (> 0 favours more words)."""

    beam_size: int = 10
    beam_threshold: float = 25.0
    lm_weight: float = 1.0
    word_score: float = 0.0

    def __post_init__(self) -> None:
        check_number("beam_size", self.beam_size, ge=1, integer=True)
        check_number("beam_threshold", self.beam_threshold, gt=0)
        check_number("lm_weight", self.lm_weight, ge=0)
        check_number("word_score", self.word_score)

    def to_dict(self) -> dict:
        return asdict(self)


def word_separator(tokenizer: Tokenizer) -> int:
    """The token the decoder treats as silence between words (see the module docstring)."""
    space = tokenizer.encode(" ")
    if len(space) == 1:
        return space[0]
    pieces = tokenizer.pieces() if hasattr(tokenizer, "pieces") else []
    if not space and UNK_WORD in pieces:
        return pieces.index(UNK_WORD)
    raise ValueError(f"{type(tokenizer).__name__} has neither a space token nor a sentencepiece "
                     f"{UNK_WORD}: no token can separate words for lexicon decoding")


def spell(tokenizer: Tokenizer, word: str) -> list[int]:
    """The tokens of `word` as the tokenizer writes it inside a sentence."""
    if not word or word != word.strip() or " " in word:
        raise ValueError(f"lexicon word {word!r} is empty or holds a space")
    return tokenizer.encode(word)


class LexiconBeamDecoder:
    """(B, T, V) CTC log-probs -> the best word sequence per utterance, each word from `words`.

    `arpa_path`: an ARPA n-gram LM over the same words (None: no LM, every word scores alike).
    Decoding runs on the CPU in float32, one utterance at a time.
    """

    def __init__(self, tokenizer: Tokenizer, words: Iterable[str],
                 arpa_path: str | os.PathLike | None = None,
                 settings: BeamSettings | None = None) -> None:
        words = sorted(set(words))
        self._args = (tokenizer, words, arpa_path, settings)
        if not words:
            raise ValueError("the lexicon is empty: lexicon decoding needs at least one word")
        self.tokenizer = tokenizer
        self.words = words
        self.settings = settings or BeamSettings()
        self.blank = tokenizer.blank_id
        separator = word_separator(tokenizer)
        # a separator the model emits (a character tokenizer's space) must close every word
        self.closing = separator if tokenizer.encode(" ") == [separator] else None
        unk = len(words)  # the <unk> word: never proposed (unk_score -inf), the LM's <unk>
        self.lm = KenLM(str(arpa_path), Dictionary([*words, UNK_WORD])) if arpa_path else ZeroLM()
        trie = Trie(tokenizer.vocab_size, separator)
        start = self.lm.start(False)
        for index, word in enumerate(words):
            tokens = spell(tokenizer, word)
            if separator in tokens:
                raise ValueError(f"lexicon word {word!r} is spelt with the word separator "
                                 f"token {separator}")
            if self.closing is not None:
                tokens = [*tokens, self.closing]
            # the word's unigram score lets the search look ahead inside a word
            trie.insert(tokens, index, self.lm.score(start, index)[1])
        trie.smear(SmearingMode.MAX)
        options = LexiconDecoderOptions(
            beam_size=self.settings.beam_size,
            beam_size_token=tokenizer.vocab_size,
            beam_threshold=self.settings.beam_threshold,
            lm_weight=self.settings.lm_weight,
            word_score=self.settings.word_score,
            unk_score=float("-inf"),
            sil_score=0.0,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )
        self.trie = trie  # the decoder refers to the trie and LM: keep them alive with it
        self.decoder = LexiconDecoder(options, trie, self.lm, separator, self.blank, unk, [],
                                      False)

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        if log_probs.dim() != 3:
            raise ValueError(f"log_probs has shape {tuple(log_probs.shape)}; expected (B, T, V)")
        batch, frames, vocab = log_probs.shape
        if vocab != self.tokenizer.vocab_size:
            raise ValueError(f"log_probs have {vocab} classes; the tokenizer has "
                             f"{self.tokenizer.vocab_size}")
        if lengths.shape != (batch,) or (batch and int(lengths.max()) > frames):
            raise ValueError(f"lengths {lengths.tolist()} do not fit log_probs of shape "
                             f"{tuple(log_probs.shape)}")
        emissions = log_probs.detach().to("cpu", torch.float32)
        if self.closing is not None:  # room for one certain space after each utterance
            emissions = torch.cat([emissions, emissions.new_full((batch, 1, vocab), -1e9)], 1)
            emissions[torch.arange(batch), lengths.cpu(), :] = -1e9
            emissions[torch.arange(batch), lengths.cpu(), self.closing] = 0.0
            frames += 1
        emissions = emissions.contiguous()
        texts = []
        for b, length in enumerate(lengths.tolist()):
            pointer = emissions.data_ptr() + emissions.element_size() * b * frames * vocab
            if length == 0:
                texts.append("")
                continue
            length += self.closing is not None
            best = self.decoder.decode(pointer, length, vocab)[0]
            texts.append(" ".join(self.words[w] for w in best.words if 0 <= w < len(self.words)))
        return texts

    # Flashlight's objects do not pickle: a copy (DDP spawn, deepcopy) rebuilds them.
    def __getstate__(self) -> tuple:
        return self._args

    def __setstate__(self, args: tuple) -> None:
        self.__init__(*args)
