"""Dev splits carved out of training data: by utterance (a hash of the id) or by speaker
(whole speakers held out, so the dev WER is speaker-independent), on the real AN4 manifests."""

from pathlib import Path

import pytest

from asrquant.data.readers import Utterance, read_utterances
from asrquant.runs import validate_config
from asrquant.runs.blocks import data_sources, split_dev

AN4 = Path(__file__).resolve().parents[2] / "shared" / "data" / "an4"
needs_an4 = pytest.mark.skipif(not (AN4 / "train.jsonl").is_file(),
                               reason="../shared/data/an4 is not beside this checkout")


@needs_an4
def test_a_speaker_split_holds_out_whole_speakers_deterministically():
    utts = read_utterances(AN4 / "train.jsonl")
    speakers = {u.speaker for u in utts}
    assert len(utts) == 948 and len(speakers) == 74
    train, dev = split_dev(utts, 0.1, "speaker")
    dev_speakers, train_speakers = {u.speaker for u in dev}, {u.speaker for u in train}
    assert not dev_speakers & train_speakers
    assert len(dev_speakers) == 7 and train_speakers | dev_speakers == speakers
    assert len(train) + len(dev) == len(utts)
    again_train, again_dev = split_dev(list(reversed(utts)), 0.1, "speaker")
    assert {u.id for u in again_dev} == {u.id for u in dev}
    other = {u.speaker for u in split_dev(utts, 0.1, "speaker", seed=1)[1]}
    assert other != dev_speakers and len(other) == 7


@needs_an4
def test_an_utterance_split_mixes_speakers_and_keeps_its_old_hash():
    utts = read_utterances(AN4 / "train.jsonl")
    train, dev = split_dev(utts, 0.1, "utterance")
    assert {u.speaker for u in dev} & {u.speaker for u in train}  # speakers shared
    assert 0.05 < len(dev) / len(utts) < 0.15


@needs_an4
def test_the_an4_data_config_gives_a_speaker_independent_dev_split():
    sources = data_sources({"kind": "manifest", "train": str(AN4 / "train.jsonl"),
                            "test": str(AN4 / "test.jsonl"), "dev_fraction": 0.1,
                            "dev_split": "speaker"})
    train_speakers = {u.speaker for u in sources["train"]}
    assert not train_speakers & {u.speaker for u in sources["val"]}
    test_speakers = {u.speaker for u in read_utterances(sources["test"])}
    assert len(test_speakers) == 10 and not test_speakers & train_speakers


def test_a_speaker_split_needs_every_speaker_and_names_what_lacks_one():
    utts = [Utterance("a", "a.wav", "x", 1.0, "s1"), Utterance("b", "b.wav", "x", 1.0)]
    with pytest.raises(ValueError, match=r"needs a speaker for every training utterance; 1 "
                                         r"have none \(e\.g\. \['b'\]\)"):
        split_dev(utts, 0.5, "speaker")
    with pytest.raises(ValueError, match="leaves no training speaker"):
        split_dev(utts[:1], 0.5, "speaker")


def test_a_bad_dev_split_is_refused_before_any_data(cfg_of):
    with pytest.raises(ValueError, match=r"data.dev_split='voice' is invalid; allowed: "
                                         r"\['utterance', 'speaker'\]"):
        validate_config(cfg_of("train", ["data=an4", "data.dir=/nowhere",
                                          "data.dev_split=voice"]), "train")

