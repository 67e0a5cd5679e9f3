"""Beam search over a lexicon (flashlight-text), the Kneser-Ney word LM it can use, the
`decode` config of asrquant-eval and what results.json records of it. Hand-made log-probs,
tiny tokenizers and the tiny synthetic corpus: seconds."""

import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from asrquant.data.readers import read_utterances
from asrquant.data.text import normalize_text
from asrquant.data.tokenizer import CharTokenizer, train_sentencepiece
from asrquant.lightning.module import ASRModule
from asrquant.models import GreedyDecoder
from asrquant.models.lexicon_decoding import (
    BeamSettings,
    LexiconBeamDecoder,
    spell,
    word_separator,
)
from asrquant.models.ngram_lm import kneser_ney_arpa
from asrquant.models.sizes import size_config
from asrquant.runs import run_eval, validate_config
from asrquant.runs.decoder import build_decoder, decode_settings

TEXTS = ["the cat sat on the mat", "the cat ran to the hat", "a hat is red",
         "a red hat sat on a cat", "the dog ran", "my dog sat on the mat"]
WORDS = sorted({w for t in TEXTS for w in t.split()})
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "cpu_synthetic_float.safetensors"


@pytest.fixture(scope="module")
def sentencepiece():
    return train_sentencepiece(TEXTS, vocab_size=42)


def log_probs_of(frames: list[dict[int, float]], vocab_size: int) -> torch.Tensor:
    """(1, T, V) log-probs: each frame gives the listed tokens their probability and shares
    what is left among the others."""
    out = torch.empty(1, len(frames), vocab_size)
    for t, probs in enumerate(frames):
        rest = (1.0 - sum(probs.values())) / (vocab_size - len(probs))
        out[0, t] = math.log(rest)
        for token, p in probs.items():
            out[0, t, token] = math.log(p)
    return out


def clean_frames(token_ids: list[int], p: float = 0.9) -> list[dict[int, float]]:
    """One frame per token, a blank frame after each (so that repeats stay apart)."""
    return [frame for token in token_ids for frame in ({token: p}, {0: p})]


def decode_one(decoder, frames, vocab_size) -> str:
    return decoder(log_probs_of(frames, vocab_size), torch.tensor([len(frames)]))[0]


# -------------------------------------------------------------------- spelling and search

@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_the_lexicon_spells_each_word_as_the_tokenizer_writes_it_in_a_sentence(
        kind, sentencepiece):
    tok = CharTokenizer() if kind == "char" else sentencepiece
    separator = word_separator(tok)
    for text in TEXTS:
        spelt = [spell(tok, w) for w in text.split()]
        if kind == "char":  # a space token between words
            assert separator == tok.encode(" ")[0]
            joined = [t for i, s in enumerate(spelt) for t in ([separator] if i else []) + s]
        else:  # the '▁' inside each word's first piece marks the boundary: no token between
            assert tok.pieces()[separator] == "<unk>"
            assert all(tok.pieces()[s[0]].startswith("▁") for s in spelt)
            joined = [t for s in spelt for t in s]
        assert joined == tok.encode(text)


def test_greedy_writes_a_non_word_where_the_lexicon_beam_finds_the_word():
    tok = CharTokenizer()
    c, a, q, t = (tok.encode(x)[0] for x in "caqt")
    frames = [{c: 0.9}, {q: 0.5, a: 0.4}, {t: 0.9}]  # 'q' a little likelier than 'a'
    log_probs = log_probs_of(frames, tok.vocab_size)
    assert GreedyDecoder(tok)(log_probs, torch.tensor([3])) == ["cqt"]
    assert LexiconBeamDecoder(tok, WORDS)(log_probs, torch.tensor([3])) == ["cat"]


def test_with_characters_a_word_ends_only_where_a_space_is_emitted():
    """AN4 spells words letter by letter, so single letters are lexicon words: 'eight' must not
    be read as 'e i g h t' unless the model put spaces between the letters."""
    tok = CharTokenizer()
    words = ["eight", "ten", *"eighnt"]
    decoder = LexiconBeamDecoder(tok, words)
    assert decode_one(decoder, clean_frames(tok.encode("eight ten")), tok.vocab_size) == (
        "eight ten")
    assert decode_one(decoder, clean_frames(tok.encode("e i g h t")), tok.vocab_size) == (
        "e i g h t")
    assert decode_one(decoder, clean_frames(tok.encode("t e n eight")), tok.vocab_size) == (
        "t e n eight")


def test_sentencepiece_word_boundary_the_model_was_unsure_of_is_restored(sentencepiece):
    tok, pieces = sentencepiece, sentencepiece.pieces()
    ids = tok.encode("the cat sat")
    assert [pieces[i] for i in ids][3:6] == ["▁", "c", "at"]  # "cat" starts with a bare '▁'
    frames = clean_frames(ids)
    frames[6] = {ids[3]: 0.4, 0: 0.5}  # blank a little likelier than cat's '▁'
    assert GreedyDecoder(tok)(log_probs_of(frames, tok.vocab_size),
                              torch.tensor([len(frames)])) == ["thecat sat"]
    assert decode_one(LexiconBeamDecoder(tok, WORDS), frames, tok.vocab_size) == "the cat sat"


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_every_hypothesis_word_is_a_lexicon_word_and_batches_decode_as_single_utterances(
        kind, sentencepiece):
    tok = CharTokenizer() if kind == "char" else sentencepiece
    decoder = LexiconBeamDecoder(tok, WORDS, settings=BeamSettings(beam_size=4))
    g = torch.Generator().manual_seed(0)
    log_probs = torch.randn(5, 60, tok.vocab_size, generator=g) * 3
    log_probs[..., 0] -= 2.0  # fewer blanks: random frames then spell many tokens
    log_probs = log_probs.log_softmax(-1)
    lengths = torch.tensor([60, 45, 30, 7, 0])
    hyps = decoder(log_probs, lengths)
    assert sum(len(h.split()) for h in hyps) >= 10  # not vacuous
    assert all(w in WORDS for h in hyps for w in h.split())
    assert hyps[-1] == ""  # no frames, no words
    alone = [decoder(log_probs[b:b + 1, :n].contiguous(), torch.tensor([n]))[0]
             for b, n in enumerate(lengths.tolist())]
    assert hyps == alone  # frames past an utterance's length are never read
    assert decoder(log_probs.double(), lengths) == hyps  # any float dtype: decoded in float32


def test_a_clean_path_decodes_to_its_sentence_and_a_pickled_decoder_decodes_alike(
        sentencepiece):
    decoder = LexiconBeamDecoder(sentencepiece, WORDS)
    frames = clean_frames(sentencepiece.encode("my dog sat on a cat"))
    assert decode_one(decoder, frames, sentencepiece.vocab_size) == "my dog sat on a cat"
    copy = pickle.loads(pickle.dumps(decoder))  # DDP spawn, deepcopy: rebuilt, not shared
    assert copy is not decoder and copy.decoder is not decoder.decoder
    assert decode_one(copy, frames, sentencepiece.vocab_size) == "my dog sat on a cat"


def test_the_lm_turns_the_choice_between_two_close_words_towards_the_likely_one(tmp_path):
    """'cat' follows 'the' and 'hat' follows 'a' in the texts; the sounds lean the other way."""
    tok = CharTokenizer()
    arpa = tmp_path / "lm.arpa"
    arpa.write_text(kneser_ney_arpa([t.split() for t in TEXTS], 3))
    c, h = tok.encode("c")[0], tok.encode("h")[0]

    def frames(first_word: str, lean: int, other: int) -> list[dict[int, float]]:
        out = clean_frames(tok.encode(first_word + " "))
        return out + [{lean: 0.52, other: 0.46}, {0: 0.9}] + clean_frames(tok.encode("at"))

    no_lm = LexiconBeamDecoder(tok, WORDS)
    lm = LexiconBeamDecoder(tok, WORDS, arpa, BeamSettings(lm_weight=2.0))
    zero_weight = LexiconBeamDecoder(tok, WORDS, arpa, BeamSettings(lm_weight=0.0))
    the_hat, a_cat = frames("the", h, c), frames("a", c, h)
    assert decode_one(no_lm, the_hat, tok.vocab_size) == "the hat"
    assert decode_one(no_lm, a_cat, tok.vocab_size) == "a cat"
    assert decode_one(zero_weight, the_hat, tok.vocab_size) == "the hat"
    assert decode_one(lm, the_hat, tok.vocab_size) == "the cat"
    assert decode_one(lm, a_cat, tok.vocab_size) == "a hat"


def test_asr_module_decodes_with_its_decoder_greedy_unless_told(tiny_dims):
    tok = CharTokenizer()
    module = ASRModule(size_config("cpu", tok.vocab_size, **tiny_dims), tok)
    assert isinstance(module.decoder, GreedyDecoder)
    seen = []

    def decoder(log_probs, lengths):
        seen.append(tuple(log_probs.shape))
        return ["the cat"] * len(lengths)

    module.decoder = decoder
    assert module.transcribe([torch.randn(8000), torch.randn(12000)]) == ["the cat"] * 2
    assert seen and seen[0][0] == 2 and seen[0][2] == tok.vocab_size


# ------------------------------------------------------------------------------ the n-gram LM

def read_arpa(text: str) -> tuple[dict, dict]:
    logprob, backoff, order = {}, {}, 0
    for line in text.splitlines():
        if line.endswith("-grams:"):
            order = int(line[1])
        elif order and line and not line.startswith("\\"):
            fields = line.split("\t")
            gram = tuple(fields[1].split())
            logprob[gram] = float(fields[0])
            backoff[gram] = float(fields[2]) if len(fields) > 2 else 0.0
    return logprob, backoff


def arpa_log10(logprob: dict, backoff: dict, word: str, context: tuple) -> float:
    """log10 p(word | context) by the ARPA back-off rule."""
    if context + (word,) in logprob:
        return logprob[context + (word,)]
    return backoff.get(context, 0.0) + arpa_log10(logprob, backoff, word, context[1:])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_of_the_lm_is_a_probability_distribution_over_the_vocabulary(order):
    logprob, backoff = read_arpa(kneser_ney_arpa([t.split() for t in TEXTS], order))
    vocab = [g[0] for g in logprob if len(g) == 1 and g[0] != "<s>"]
    assert set(vocab) == set(WORDS) | {"</s>", "<unk>"}
    contexts = {g[:-1] for g in logprob if len(g) > 1} | {(), ("the", "red")}  # one unseen
    for context in contexts:
        total = sum(10 ** arpa_log10(logprob, backoff, w, context) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-5), context


def test_lower_orders_count_continuations_not_occurrences():
    """Kneser-Ney: 'francisco' is as frequent as 'dog' but always after 'san', so a new
    context predicts it less than 'dog', seen after many words."""
    texts = ["san francisco", "san francisco", "san francisco", "a dog", "the dog", "my dog"]
    logprob, backoff = read_arpa(kneser_ney_arpa([t.split() for t in texts], 2))
    assert arpa_log10(logprob, backoff, "francisco", ("my",)) < arpa_log10(
        logprob, backoff, "dog", ("san",))
    assert arpa_log10(logprob, backoff, "francisco", ("san",)) > arpa_log10(
        logprob, backoff, "dog", ("san",))


def test_kenlm_reads_the_arpa_file_as_the_back_off_rule_does(tmp_path):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    text = kneser_ney_arpa([t.split() for t in TEXTS], 3)
    (tmp_path / "lm.arpa").write_text(text)
    logprob, backoff = read_arpa(text)
    words = [*WORDS, "<unk>"]
    lm = KenLM(str(tmp_path / "lm.arpa"), Dictionary(words))
    for sentence in ["the cat sat on the mat", "red dog is my hat"]:  # seen; unseen n-grams
        state, ours, theirs = lm.start(False), 0.0, 0.0
        history = ("<s>",)
        for word in sentence.split():
            state, score = lm.score(state, words.index(word))
            theirs += score
            ours += arpa_log10(logprob, backoff, word, history[-2:])
            history += (word,)
        theirs += lm.finish(state)[1]
        ours += arpa_log10(logprob, backoff, "</s>", history[-2:])
        assert theirs == pytest.approx(ours, abs=1e-4), sentence


# ------------------------------------------------------------------------ config and eval run

@pytest.mark.parametrize("overrides, message", [
    (["decode=beam", "decode.kind=beem"],
     "decode.kind='beem' is invalid; allowed: ['greedy', 'beam']"),
    (["decode=beam", "decode.beam_size=0"],
     "decode.beam_size=0 is invalid; allowed: an int >= 1"),
    (["decode=beam", "decode.lm_order=9"],
     "decode.lm_order=9 is invalid; allowed: an int in 1..6"),
    (["decode=beam", "decode.lexicon=test"],
     "decode.lexicon='test' is invalid; allowed: ['train']"),
    (["decode=beam_lm", "decode.lm_weight=-1"],
     "decode.lm_weight=-1 is invalid; allowed: a number >= 0"),
    (["decode=beam", "decode.beam_threshold=0"],
     "decode.beam_threshold=0 is invalid; allowed: a number > 0"),
    (["decode=beam", "decode.kind=greedy"],
     "decode (kind greedy) got unknown key(s) ['beam_size', 'beam_threshold', 'lexicon', "
     "'lm_order', 'lm_weight', 'word_score']; allowed: ['kind']"),
])
def test_bad_decode_values_fail_before_any_work_naming_key_value_and_allowed(
        cfg_of, overrides, message):
    with pytest.raises(ValueError) as err:
        validate_config(cfg_of("eval", overrides), "eval")
    assert str(err.value) == message


def test_the_defaults_are_greedy_and_every_decode_option_validates(cfg_of):
    assert decode_settings(None) == {"kind": "greedy"}
    for option in ["greedy", "beam", "beam_lm"]:
        assert decode_settings(dict(cfg_of("eval", [f"decode={option}"]).decode))["kind"] == (
            "greedy" if option == "greedy" else "beam")


def test_a_lexicon_needs_training_transcripts():
    with pytest.raises(ValueError, match="decode.lexicon='train' needs the training"):
        build_decoder({"kind": "beam"}, CharTokenizer(), None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_data):
    return tiny_data + [f"data.synthetic.cache_dir={tmp_path_factory.mktemp('corpus')}"]


def predicted_words(run_dir: Path) -> set[str]:
    words = set()
    for path in (run_dir / "predictions").glob("*.tsv"):
        for line in path.read_text().splitlines()[1:]:
            words |= set(line.split("\t")[2].split())
    return words


def test_eval_scores_with_the_lexicon_beam_and_records_the_decoder_on_every_path(
        cfg_of, corpus, tmp_path, monkeypatch):
    """Float (fake-quant PTQ too) and packed evals decode with the 3-gram lexicon beam, write
    only training words, and results.json says which decoder scored them."""
    monkeypatch.setenv("ASRQUANT_CACHE", str(tmp_path / "cache"))
    ckpt = f"ckpt={SHIPPED}"
    greedy = run_eval(cfg_of("eval", corpus + [ckpt]), tmp_path / "greedy")
    beam = ["decode=beam_lm", "decode.lm_weight=1.5"]
    ptq = run_eval(cfg_of("eval", corpus + [ckpt, "quant=int8", "export=true", *beam]),
                   tmp_path / "ptq")
    packed = run_eval(cfg_of("eval", corpus + [f"packed={tmp_path / 'ptq' / 'model.safetensors'}",
                                               *beam]), tmp_path / "packed")
    (train,) = Path(corpus[-1].split("=", 1)[1]).glob("*/train.jsonl")
    lexicon = {w for u in read_utterances(train, "skip") for w in normalize_text(u.text).split()}
    assert greedy["decoder"] == {"kind": "greedy"}
    assert predicted_words(tmp_path / "greedy") - lexicon  # the greedy path writes other words
    for name, out in [("ptq", ptq), ("packed", packed)]:
        decoder = json.loads((tmp_path / name / "results.json").read_text())["decoder"]
        assert decoder == out["decoder"]
        assert decoder["kind"] == "beam" and decoder["lexicon"] == "train"
        assert decoder["lm_order"] == 3 and decoder["lm_weight"] == 1.5
        assert decoder["lexicon_words"] == len(lexicon)
        assert decoder["engine"].startswith("flashlight-text ")
        assert Path(decoder["lm_file"]).parent == tmp_path / "cache" / "lm"
        words = predicted_words(tmp_path / name)
        assert words and words <= lexicon
    assert ptq["decoder"] == packed["decoder"]  # one LM file for both: built once
    assert packed["test"] == ptq["test"]  # the packed weights decode as the fake-quant ones
