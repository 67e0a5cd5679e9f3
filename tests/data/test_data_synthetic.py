import json
import shutil

import numpy as np
import pytest
import soundfile

from asrquant.data.readers import manifest_utterances, read_utterances, validate_utterances
from asrquant.data.synthetic import (
    COMPLETE_MARKER,
    HELDOUT_VARIANTS,
    TRAIN_VARIANTS,
    SyntheticCorpusConfig,
    add_white_noise,
    build_synthetic_corpus,
    random_sentence,
)
from asrquant.data.text import normalize_text

SIZES = {"n_train": 6, "n_dev": 2, "n_test": 2, "n_test_voices": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cache = tmp_path_factory.mktemp("synthetic")
    return build_synthetic_corpus(cache, **SIZES, seed=0, progress=False)


def read_manifest(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def folder_bytes(folder):
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_manifests_for_every_split(corpus):
    assert list(corpus) == ["train", "dev", "test", "test_heldout_voices"]
    sizes = [len(read_manifest(path)) for path in corpus.values()]
    assert sizes == [6, 2, 2, 2]


def test_audio_files_are_16k_mono_int16_of_the_stated_duration(corpus):
    for manifest in corpus.values():
        for entry in read_manifest(manifest):
            info = soundfile.info(manifest.parent / entry["audio_filepath"])
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert entry["duration"] == pytest.approx(info.duration)
            assert 0.5 < info.duration < 15


def test_audio_is_speech_not_silence(corpus):
    entry = read_manifest(corpus["train"])[0]
    samples, _ = soundfile.read(corpus["train"].parent / entry["audio_filepath"])
    assert np.sqrt(np.mean(samples**2)) > 0.01


def test_manifests_carry_nemo_keys_and_voice_rate_pitch(corpus):
    for entry in read_manifest(corpus["train"]):
        assert {"audio_filepath", "duration", "text", "voice", "rate", "pitch"} <= set(entry)
        assert 130 <= entry["rate"] <= 200 and 0 <= entry["pitch"] <= 100
        assert normalize_text(entry["text"]) == entry["text"]
        assert 4 <= len(entry["text"].split()) <= 12


def test_manifests_read_through_the_manifest_reader(corpus):
    utterances = validate_utterances(manifest_utterances(corpus["dev"]), policy="error")
    assert [u.id for u in utterances] == ["dev-000000", "dev-000001"]


def test_splits_have_disjoint_sentences(corpus):
    texts = {split: {e["text"] for e in read_manifest(path)} for split, path in corpus.items()}
    splits = list(texts)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not texts[a] & texts[b], (a, b)


def test_heldout_voices_never_occur_in_train(corpus):
    assert not set(TRAIN_VARIANTS) & set(HELDOUT_VARIANTS)
    train_voices = {e["voice"] for e in read_manifest(corpus["train"])}
    heldout_voices = {e["voice"] for e in read_manifest(corpus["test_heldout_voices"])}
    assert not train_voices & heldout_voices
    assert {v.split("+")[1] for v in heldout_voices} <= set(HELDOUT_VARIANTS)


def test_same_seed_gives_byte_identical_files(corpus, tmp_path):
    again = build_synthetic_corpus(tmp_path, **SIZES, seed=0, progress=False)
    original = folder_bytes(corpus["train"].parent)
    rebuilt = folder_bytes(again["train"].parent)
    assert rebuilt.keys() == original.keys()
    assert [name for name in original if original[name] != rebuilt[name]] == [COMPLETE_MARKER]


def test_complete_corpus_is_reused_not_rebuilt(corpus):
    marker = corpus["train"].parent / COMPLETE_MARKER
    before = marker.stat().st_mtime_ns
    build_synthetic_corpus(corpus["train"].parent.parent, **SIZES, seed=0, progress=False)
    assert marker.stat().st_mtime_ns == before


def test_interrupted_build_is_rebuilt(corpus, tmp_path):
    folder = tmp_path / corpus["train"].parent.name
    shutil.copytree(corpus["train"].parent, folder)
    (folder / COMPLETE_MARKER).unlink()  # as if killed before the end
    first_wav = folder / read_manifest(corpus["train"])[0]["audio_filepath"]
    first_wav.write_bytes(first_wav.read_bytes()[:100])
    (folder / "leftover.tmp").write_text("partial")
    rebuilt = build_synthetic_corpus(tmp_path, **SIZES, seed=0, progress=False)
    assert rebuilt["train"].parent == folder
    assert (folder / COMPLETE_MARKER).exists() and not (folder / "leftover.tmp").exists()
    assert (
        first_wav.read_bytes()
        == (corpus["train"].parent / first_wav.relative_to(folder)).read_bytes()
    )


def test_cache_folder_is_keyed_by_the_config(corpus):
    assert corpus["train"].parent.name == SyntheticCorpusConfig(**SIZES, seed=0).config_hash()
    assert SyntheticCorpusConfig(**SIZES, seed=1).config_hash() != corpus["train"].parent.name
    noisy = SyntheticCorpusConfig(**SIZES, seed=0, noise_snr_db=20.0)
    assert noisy.config_hash() != corpus["train"].parent.name


def test_sentence_generator_is_seeded():
    first = [random_sentence(np.random.default_rng(7)) for _ in range(3)]
    assert first == [random_sentence(np.random.default_rng(7)) for _ in range(3)]


def test_white_noise_has_the_requested_snr():
    rng = np.random.default_rng(0)
    clean = np.sin(np.linspace(0, 2000, 160000)).astype(np.float32)
    noise = add_white_noise(clean, 10.0, rng) - clean
    snr_db = 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))
    assert snr_db == pytest.approx(10.0, abs=0.1)


def test_reader_config_reuses_the_built_corpus(corpus):
    cache_dir = corpus["train"].parent.parent
    config = {"synthetic": {"cache_dir": cache_dir, **SIZES, "progress": False}, "split": "dev"}
    utterances = read_utterances(config)
    assert [u.id for u in utterances] == ["dev-000000", "dev-000001"]
