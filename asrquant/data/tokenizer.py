"""CTC tokenizers over normalised text: characters, or SentencePiece subwords.

Id 0 is always the CTC blank. Both tokenizers serialise to a small dict of str/int/list values
(`to_state`), which fits in a checkpoint loadable with torch.load(weights_only=True) and in JSON.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterable
from typing import Literal

import sentencepiece

from asrquant.data.text import ALPHABET, normalize_text
from asrquant.io import atomic_write_text

BLANK_ID = 0


class Tokenizer:
    """Common interface: encode/decode normalised text, blank_id == 0, vocab_size with blank."""

    blank_id = BLANK_ID
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_state(self) -> dict:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Writes to_state() as JSON (atomically); read it back with load_tokenizer."""
        atomic_write_text(path, json.dumps(self.to_state()))


def _check_alphabet(text: str, alphabet: str) -> None:
    unknown = sorted(set(text) - set(alphabet))
    if unknown:
        raise ValueError(
            f"text {text!r} has characters {unknown} outside the tokenizer alphabet "
            f"{alphabet!r}; pass it through normalize_text first"
        )


def _check_ids(ids: list[int], vocab_size: int) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token ids {bad[:10]} are outside [0, {vocab_size})")


class CharTokenizer(Tokenizer):
    """One token per character: 0 = blank, then space, apostrophe, a-z, 0-9."""

    def __init__(self, alphabet: str = ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet {alphabet!r} has repeated characters")
        self.alphabet = alphabet
        self.vocab_size = len(alphabet) + 1
        self._id_of = {c: i + 1 for i, c in enumerate(alphabet)}

    def encode(self, text: str) -> list[int]:
        _check_alphabet(text, self.alphabet)
        return [self._id_of[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Maps ids back to text, dropping blanks (no CTC collapsing of repeats)."""
        ids = [int(i) for i in ids]
        _check_ids(ids, self.vocab_size)
        return "".join(self.alphabet[i - 1] for i in ids if i != BLANK_ID)

    def to_state(self) -> dict:
        return {"type": "char", "alphabet": self.alphabet}


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece subwords with ids shifted by +1, so that 0 is the CTC blank."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = bytes(model_proto)
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        self.vocab_size = self._processor.get_piece_size() + 1

    def encode(self, text: str) -> list[int]:
        _check_alphabet(text, ALPHABET)
        return [i + 1 for i in self._processor.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Maps ids back to text, dropping blanks (no CTC collapsing of repeats)."""
        ids = [int(i) for i in ids]
        _check_ids(ids, self.vocab_size)
        return self._processor.decode([i - 1 for i in ids if i != BLANK_ID])

    def pieces(self) -> list[str]:
        """Token strings by id; "<blank>" at 0."""
        return ["<blank>"] + [self._processor.id_to_piece(i) for i in range(self.vocab_size - 1)]

    def to_state(self) -> dict:
        return {
            "type": "sentencepiece",
            "model_proto": base64.b64encode(self.model_proto).decode("ascii"),
        }

    def __getstate__(self) -> dict:
        # The SentencePiece processor is a C++ object; DataLoader workers get the proto instead.
        return {"model_proto": self.model_proto}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"])


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int = 128,
    model_type: Literal["unigram", "bpe"] = "unigram",
) -> SentencePieceTokenizer:
    """Trains a SentencePiece model in memory on normalize_text(t) for each training transcript.

    `vocab_size` counts the CTC blank. With few transcripts the unigram model may end up
    smaller than asked for (the real size is the tokenizer's vocab_size). Every character of the
    normalised alphabet is always in the vocabulary, so any normalised text round-trips.
    """
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type {model_type!r} is not one of ('unigram', 'bpe')")
    normalized = [t for t in (normalize_text(text) for text in texts) if t]
    if not normalized:
        raise ValueError("train_sentencepiece needs at least one non-empty transcript")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(normalized),
        model_writer=model,
        vocab_size=vocab_size - 1,
        model_type=model_type,
        required_chars=ALPHABET.replace(" ", ""),
        character_coverage=1.0,
        normalization_rule_name="identity",  # the text is already normalised
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return SentencePieceTokenizer(model.getvalue())


def tokenizer_from_state(state: dict) -> CharTokenizer | SentencePieceTokenizer:
    kind = state.get("type")
    if kind == "char":
        return CharTokenizer(state["alphabet"])
    if kind == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(state["model_proto"]))
    raise ValueError(f"tokenizer state type {kind!r} is not one of ('char', 'sentencepiece')")


def load_tokenizer(path: str | os.PathLike) -> CharTokenizer | SentencePieceTokenizer:
    with open(path, encoding="utf-8") as file:
        try:
            state = json.load(file)
        except json.JSONDecodeError as err:
            raise ValueError(f"tokenizer file {path} is not JSON ({err})") from err
    return tokenizer_from_state(state)
