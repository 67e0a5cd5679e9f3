from hypothesis import given
from hypothesis import strategies as st

from asrquant.data.text import ALPHABET, normalize_text


def test_lowercases_and_drops_punctuation():
    assert normalize_text("Hello, World!  How are you?") == "hello world how are you"


def test_hyphens_and_dashes_become_spaces():
    assert normalize_text("well-known — mid–term") == "well known mid term"


def test_curly_apostrophes_inside_words_are_kept():
    assert normalize_text("Don\u2019t stop, it\u2019s 5 o'clock") == "don't stop it's 5 o'clock"


def test_quote_marks_around_words_are_dropped():
    assert normalize_text("\u2018Hello,\u2019 she said. \"Bye\" 'tis the boys'") == (
        "hello she said bye tis the boys"
    )


def test_accents_are_stripped():
    assert normalize_text("Café naïve Straße Ærø") == "cafe naive strasse aero"


def test_compatibility_forms_are_folded():
    assert normalize_text("ﬁne ＡＢＣ ①") == "fine abc 1"


def test_ljspeech_style_sentence():
    text = "Printing, in the only sense with which we are at present concerned, differs"
    assert normalize_text(text) == (
        "printing in the only sense with which we are at present concerned differs"
    )


@given(st.text())
def test_output_uses_only_the_alphabet_with_single_inner_spaces(text):
    normalized = normalize_text(text)
    assert set(normalized) <= set(ALPHABET)
    assert normalized == normalized.strip() and "  " not in normalized


@given(st.text())
def test_is_idempotent(text):
    assert normalize_text(normalize_text(text)) == normalize_text(text)
