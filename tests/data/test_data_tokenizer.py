import functools
import io
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from asrquant.data.synthetic import random_sentence
from asrquant.data.text import normalize_text
from asrquant.data.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    tokenizer_from_state,
    train_sentencepiece,
)

SAMPLES = ["Hello, World!", "It's 5 o'clock; quiz the jury", "naïve café — 1984", "zebra x"]


@functools.cache
def small_sentencepiece():
    rng = np.random.default_rng(1)
    return train_sentencepiece([random_sentence(rng) for _ in range(200)], vocab_size=64)


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def sentencepiece_tokenizer(request):
    rng = np.random.default_rng(0)
    texts = [random_sentence(rng) for _ in range(300)]
    return train_sentencepiece(texts, vocab_size=96, model_type=request.param)


def test_char_vocabulary_is_blank_space_apostrophe_letters_digits():
    tokenizer = CharTokenizer()
    assert (tokenizer.blank_id, tokenizer.vocab_size) == (0, 39)
    assert tokenizer.encode(" 'az09") == [1, 2, 3, 28, 29, 38]


@given(st.text())
def test_char_round_trip_of_normalized_text(text):
    tokenizer = CharTokenizer()
    normalized = normalize_text(text)
    assert tokenizer.decode(tokenizer.encode(normalized)) == normalized


def test_decode_drops_blanks():
    tokenizer = CharTokenizer()
    assert tokenizer.decode([0, 3, 0, 4, 0]) == "ab"


def test_encode_rejects_unnormalized_text_naming_the_characters():
    with pytest.raises(ValueError, match=r"\['!', 'H'\].*normalize_text"):
        CharTokenizer().encode("Hi!")


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match=r"\[39\]"):
        CharTokenizer().decode([1, 39])


def test_sentencepiece_ids_start_after_the_blank(sentencepiece_tokenizer):
    tokenizer = sentencepiece_tokenizer
    assert tokenizer.blank_id == 0
    assert 38 < tokenizer.vocab_size <= 96  # at least every character, at most the request
    ids = tokenizer.encode("the green dog runs over seven small boxes")
    assert ids and all(0 < i < tokenizer.vocab_size for i in ids)


@pytest.mark.parametrize("text", SAMPLES)
def test_sentencepiece_round_trip_of_normalized_text(sentencepiece_tokenizer, text):
    normalized = normalize_text(text)
    assert sentencepiece_tokenizer.decode(sentencepiece_tokenizer.encode(normalized)) == normalized


@given(st.text(alphabet=" 'abcdefghijklmnopqrstuvwxyz0123456789"))
def test_sentencepiece_round_trips_any_normalized_string(text):
    tokenizer = small_sentencepiece()
    normalized = normalize_text(text)
    assert tokenizer.decode(tokenizer.encode(normalized)) == normalized


@pytest.mark.parametrize("make", [CharTokenizer, small_sentencepiece], ids=["char", "sp"])
def test_state_survives_a_weights_only_checkpoint(make):
    tokenizer = make()
    buffer = io.BytesIO()
    torch.save({"tokenizer": tokenizer.to_state()}, buffer)
    buffer.seek(0)
    restored = tokenizer_from_state(torch.load(buffer, weights_only=True)["tokenizer"])
    assert type(restored) is type(tokenizer)
    assert restored.vocab_size == tokenizer.vocab_size
    text = "quiet zebras jump 42 times"
    assert restored.encode(text) == tokenizer.encode(text)


@pytest.mark.parametrize("make", [CharTokenizer, small_sentencepiece], ids=["char", "sp"])
def test_save_and_load_as_json(make, tmp_path):
    tokenizer = make()
    tokenizer.save(tmp_path / "tokenizer.json")
    restored = load_tokenizer(tmp_path / "tokenizer.json")
    assert restored.to_state() == tokenizer.to_state()
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp file left


def test_sentencepiece_tokenizer_pickles_for_dataloader_workers():
    tokenizer = small_sentencepiece()
    restored = pickle.loads(pickle.dumps(tokenizer))
    assert isinstance(restored, SentencePieceTokenizer)
    assert restored.encode("the dog") == tokenizer.encode("the dog")


def test_bad_tokenizer_state_is_rejected():
    with pytest.raises(ValueError, match="'wordpiece'"):
        tokenizer_from_state({"type": "wordpiece"})


def test_unknown_model_type_is_rejected():
    with pytest.raises(ValueError, match="'word'"):
        train_sentencepiece(["a b"], model_type="word")
