"""The `decode` config -> the decoder an evaluation scores with: greedy CTC, or a beam search
constrained to the words of the training transcripts, optionally with an n-gram LM of them
(interpolated Kneser-Ney, built here, kept in the cache folder by content)."""

from __future__ import annotations

import hashlib
from importlib.metadata import version
from pathlib import Path

from asrquant.checks import check_choice, check_keys, config_key
from asrquant.data.readers import read_utterances
from asrquant.data.text import normalize_text
from asrquant.io import atomic_write_text, cache_dir
from asrquant.models.decoding import GreedyDecoder
from asrquant.models.lexicon_decoding import BeamSettings, LexiconBeamDecoder
from asrquant.models.ngram_lm import check_order, kneser_ney_arpa

DECODE_KINDS = ("greedy", "beam")
LEXICONS = ("train",)  # where the words come from: the training transcripts
BEAM_KEYS = ("beam_size", "beam_threshold", "lm_weight", "word_score")
DECODE_KEYS = {"greedy": ("kind",), "beam": ("kind", "lexicon", "lm_order", *BEAM_KEYS)}
LM_VERSION = 1  # bump when kneser_ney_arpa changes what it writes


def decode_settings(decode: dict | None) -> dict:
    """The `decode` config, checked and completed with the defaults (no data touched): what
    results.json records as the decoder."""
    decode = dict(decode or {"kind": "greedy"})
    kind = decode.get("kind", "greedy")
    check_choice("decode.kind", kind, DECODE_KINDS)
    check_keys(f"decode (kind {kind})", decode, DECODE_KEYS[kind])
    if kind == "greedy":
        return {"kind": "greedy"}
    lexicon = decode.get("lexicon", "train")
    check_choice("decode.lexicon", lexicon, LEXICONS)
    lm_order = decode.get("lm_order")
    with config_key("decode."):
        if lm_order is not None:
            check_order(lm_order)
        beam = BeamSettings(**{key: decode[key] for key in BEAM_KEYS if key in decode})
    return {"kind": "beam", "lexicon": lexicon, "lm_order": lm_order, **beam.to_dict()}


def build_decoder(decode: dict | None, tokenizer, train_source) -> tuple:
    """(decoder for ASRModule, its settings for results.json). A beam decoder's words and LM
    come from the normalised transcripts of `train_source` (the data config's train split)."""
    settings = decode_settings(decode)
    if settings["kind"] == "greedy":
        return GreedyDecoder(tokenizer), settings
    if train_source is None:
        raise ValueError("decode.lexicon='train' needs the training transcripts, and the data "
                         "config has no train split (data.train or data.train_splits); "
                         "allowed: a data config with one, or decode=greedy")
    sentences = [text.split() for text in
                 (normalize_text(u.text) for u in read_utterances(train_source, "skip"))]
    words = {word for sentence in sentences for word in sentence}
    arpa = lm_file(sentences, settings["lm_order"]) if settings["lm_order"] else None
    beam = BeamSettings(**{key: settings[key] for key in BEAM_KEYS})
    decoder = LexiconBeamDecoder(tokenizer, words, arpa, beam)
    return decoder, {**settings, "lexicon_words": len(decoder.words),
                     "lm_file": str(arpa) if arpa else None,
                     "engine": f"flashlight-text {version('flashlight-text')}"}


def lm_file(sentences: list[list[str]], order: int) -> Path:
    """The ARPA file of an `order`-gram LM of `sentences`, built once per content into
    $ASRQUANT_CACHE/lm (a sweep evaluates many models with one LM)."""
    digest = hashlib.sha1(f"{LM_VERSION} {order}\n".encode())
    for sentence in sentences:
        digest.update((" ".join(sentence) + "\n").encode())
    path = cache_dir("lm") / f"kn{order}_{digest.hexdigest()[:16]}.arpa"
    if not path.is_file():
        atomic_write_text(path, kneser_ney_arpa(sentences, order))
    return path
