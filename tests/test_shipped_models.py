"""The shipped float models load without pickle; the synthetic one recognizes freshly
synthesized speech, the AN4 one real speech of speakers it never heard, each within 3
binomial standard deviations of the WER models/README.md documents on the same sample."""

import itertools
import math
from pathlib import Path

import pytest

from asrquant import load_quantized
from asrquant.data.readers import manifest_utterances
from asrquant.data.synthetic import build_synthetic_corpus
from asrquant.data.text import normalize_text
from asrquant.lightning.metrics import corpus_wer

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.mark.parametrize("name", ["cpu_synthetic_float", "cpu_fsdd_float", "cpu_an4_float"])
def test_shipped_models_load_as_inference_modules(name):
    m = load_quantized(MODELS / f"{name}.safetensors")
    assert not m.training
    assert 2_000_000 < sum(p.numel() for p in m.parameters()) < 2_300_000


def assert_within_3_sd_of_documented(name: str, utts, errors: int, words: int) -> None:
    """Model `name` on `utts` (greedy): the sample holds the `words` models/README.md
    documents, and the WER is at most the documented `errors / words` plus 3 binomial
    standard deviations of that rate on those words."""
    model = load_quantized(MODELS / f"{name}.safetensors")
    hyps = model.transcribe([u.load_audio(16000, True) for u in utts])
    refs = [normalize_text(u.text) for u in utts]
    assert sum(len(r.split()) for r in refs) == words  # the documented sample
    p = errors / words
    assert corpus_wer(refs, [normalize_text(h) for h in hyps]).rate <= (
        p + 3 * math.sqrt(p * (1 - p) / words))


def test_shipped_synthetic_model_transcribes_new_synthetic_sentences(tmp_path):
    paths = build_synthetic_corpus(tmp_path, n_train=2, n_dev=2, n_test=12, n_test_voices=2,
                                   seed=123, progress=False)
    # Documented: 5 errors in 82 words (6.10%); allowed up to 14.0% (11 errors), so a model
    # twice as bad fails.
    assert_within_3_sd_of_documented("cpu_synthetic_float",
                                     list(manifest_utterances(paths["test"])), 5, 82)


def test_shipped_an4_model_recognizes_the_first_40_an4_test_utterances(shared_dir):
    """Speakers absent from AN4's training set (fcaw, fjlp, fvap, marh), greedy decoding."""
    manifest = Path(shared_dir) / "data" / "an4" / "test.jsonl"
    # Documented: 11 errors in 236 words (4.66%); allowed up to 8.78% (20 errors).
    assert_within_3_sd_of_documented(
        "cpu_an4_float", list(itertools.islice(manifest_utterances(manifest), 40)), 11, 236)
