import json

import numpy as np
import pytest
import soundfile

from asrquant.data.audio import BadDataError
from asrquant.data.datamodule import collate_batch
from asrquant.data.readers import (
    BadDataReport,
    Utterance,
    UtteranceDataset,
    librispeech_utterances,
    manifest_utterances,
    read_utterances,
    validate_utterances,
)
from asrquant.data.text import normalize_text
from asrquant.data.tokenizer import CharTokenizer

# --- LibriSpeech layout -------------------------------------------------------------------------


@pytest.fixture
def librispeech_root(tmp_path, tone):
    """Two tiny splits in the standard layout: root/<split>/<speaker>/<chapter>/..."""
    layout = {"dev-clean": {("84", "121123"): 2}, "test-clean": {("61", "70968"): 1}}
    for split, chapters in layout.items():
        for (speaker, chapter), count in chapters.items():
            folder = tmp_path / split / speaker / chapter
            lines = []
            for utt in range(count):
                utt_id = f"{speaker}-{chapter}-{utt:04d}"
                tone(folder / f"{utt_id}.flac", seconds=0.2 + 0.1 * utt)
                lines.append(f"{utt_id} HELLO WORLD NUMBER {utt}\n")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return tmp_path


def test_librispeech_reader_combines_splits(librispeech_root):
    utterances = list(librispeech_utterances(librispeech_root, ["dev-clean", "test-clean"]))
    assert [u.id for u in utterances] == ["84-121123-0000", "84-121123-0001", "61-70968-0000"]
    assert utterances[1].text == "HELLO WORLD NUMBER 1"
    assert utterances[1].audio_path.endswith("dev-clean/84/121123/84-121123-0001.flac")


def test_librispeech_utterance_loads_its_audio(librispeech_root):
    utterance = next(librispeech_utterances(librispeech_root, ["test-clean"]))
    assert len(utterance.load_audio()) == 3200


def test_librispeech_missing_split_error_lists_existing_splits(librispeech_root):
    with pytest.raises(FileNotFoundError, match="train-clean-100") as error:
        list(librispeech_utterances(librispeech_root, ["train-clean-100"]))
    assert "dev-clean" in str(error.value) and "test-clean" in str(error.value)


def test_validation_fills_in_durations(librispeech_root):
    utterances = validate_utterances(librispeech_utterances(librispeech_root, ["dev-clean"]))
    assert [u.duration for u in utterances] == pytest.approx([0.2, 0.3])


# --- NeMo manifests ------------------------------------------------------------------------------


def write_manifest(path, entries):
    lines = [e if isinstance(e, str) else json.dumps(e) for e in entries]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_manifest_paths_are_relative_to_the_manifest_folder(tmp_path, tone):
    tone(tmp_path / "corpus" / "audio" / "a.flac", seconds=0.5, sample_rate=8000)
    manifest = write_manifest(
        tmp_path / "corpus" / "train.jsonl",
        [{"audio_filepath": "audio/a.flac", "duration": 0.5, "text": "Seven!"}],
    )
    [utterance] = manifest_utterances(manifest)
    assert utterance == Utterance(
        "audio/a", str(tmp_path / "corpus" / "audio" / "a.flac"), "Seven!", 0.5
    )
    assert len(utterance.load_audio(16000)) == 8000  # 8 kHz FLAC resampled to 16 kHz


def test_manifest_id_key_is_used_when_present(tmp_path, tone):
    tone(tmp_path / "a.wav")
    entry = {"audio_filepath": "a.wav", "duration": 0.5, "text": "x", "id": "utt-1"}
    [utterance] = manifest_utterances(write_manifest(tmp_path / "m.jsonl", [entry]))
    assert utterance.id == "utt-1"


def test_dataset_items_are_16k_waveform_normalized_text_and_id(tmp_path, tone):
    tone(tmp_path / "a.wav", seconds=0.25, sample_rate=8000)
    entry = {"audio_filepath": "a.wav", "duration": 0.25, "text": "Hello, World"}
    utterances = validate_utterances(
        manifest_utterances(write_manifest(tmp_path / "m.jsonl", [entry]))
    )
    waveform, text, utt_id = UtteranceDataset(utterances)[0]
    assert (len(waveform), text, utt_id) == (4000, "hello world", "a")


def test_reader_config_mappings(tmp_path, tone, librispeech_root):
    tone(tmp_path / "a.wav")
    manifest = write_manifest(
        tmp_path / "m.jsonl", [{"audio_filepath": "a.wav", "duration": 0.5, "text": "x"}]
    )
    assert len(read_utterances({"manifest": str(manifest)})) == 1
    assert len(read_utterances(manifest)) == 1
    config = {"librispeech": str(librispeech_root), "splits": ["dev-clean"]}
    assert len(read_utterances(config)) == 2
    with pytest.raises(ValueError, match="needs a 'manifest', 'librispeech'"):
        read_utterances({"path": "x"})


# --- Bad data, under both policies ---------------------------------------------------------------

GOOD = {"audio_filepath": "good.wav", "duration": 0.5, "text": "good one"}


def bad_audio_case(write_bad_file):
    """A manifest with one good line and one line whose audio file `bad.wav` is bad."""

    def make(folder, tone):
        tone(folder / "good.wav")
        write_bad_file(folder / "bad.wav", tone)
        bad = {"audio_filepath": "bad.wav", "duration": 0.5, "text": "bad one"}
        return write_manifest(folder / "m.jsonl", [GOOD, bad]), str(folder / "bad.wav"), "bad"

    return make


def bad_line_case(bad_line, bad_id=None):
    """A manifest whose second line is bad; errors name the manifest and line 2.

    The report lists the line by `bad_id`, or by "<manifest>:2" when the line has no usable id.
    """

    def make(folder, tone):
        tone(folder / "good.wav")
        manifest = folder / "m.jsonl"
        return (
            write_manifest(manifest, [GOOD, bad_line]),
            f"{manifest}:2",
            bad_id or f"{manifest}:2",
        )

    return make


def write_nan_wav(path, tone):
    soundfile.write(path, np.array([0.1, np.nan] * 4000, np.float32), 16000, subtype="FLOAT")


BAD_CASES = {
    "missing file": (bad_audio_case(lambda path, tone: None), "missing file"),
    "zero-byte file": (bad_audio_case(lambda path, tone: path.write_bytes(b"")), "empty file"),
    "zero-frame file": (
        bad_audio_case(lambda path, tone: soundfile.write(path, np.zeros(0), 16000)),
        "no audio samples",
    ),
    "non-audio bytes": (
        bad_audio_case(lambda path, tone: path.write_bytes(b"<html>not audio</html>" * 30)),
        "unreadable",
    ),
    "nan samples": (bad_audio_case(write_nan_wav), "NaN"),
    "too long": (bad_audio_case(lambda path, tone: tone(path, seconds=2.5)), "too long"),
    "not json": (bad_line_case("{not json"), "not JSON"),
    "missing key": (bad_line_case('{"audio_filepath": "good.wav", "text": "x"}'), "missing key"),
    "empty text": (
        bad_line_case('{"audio_filepath": "b.wav", "duration": 0.5, "text": " ?! "}', "b"),
        "empty transcript",
    ),
}


def load_everything(manifest, policy, report):
    """The whole pipeline: manifest -> validation -> dataset -> one collated batch."""
    utterances = validate_utterances(
        manifest_utterances(manifest, policy, report), policy, report, max_duration=2.0
    )
    dataset = UtteranceDataset(utterances, policy=policy)
    batch = collate_batch([dataset[i] for i in range(len(dataset))], CharTokenizer())
    report.update(batch["skipped"])
    return batch


def make_case(case, tmp_path, tone):
    make, reason = BAD_CASES[case]
    manifest, named_file, bad_id = make(tmp_path, tone)
    return manifest, named_file, bad_id, reason


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_utterance_raises_naming_the_file_under_error_policy(case, tmp_path, tone):
    manifest, named_file, _, reason = make_case(case, tmp_path, tone)
    with pytest.raises(BadDataError, match=reason) as error:
        load_everything(manifest, "error", BadDataReport())
    assert named_file in str(error.value)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_utterance_is_skipped_and_reported_under_skip_policy(case, tmp_path, tone):
    manifest, named_file, bad_id, reason = make_case(case, tmp_path, tone)
    report = BadDataReport()
    batch = load_everything(manifest, "skip", report)
    assert batch["ids"] == ["good"]
    assert list(report.skipped) == [bad_id]
    assert reason in report.skipped[bad_id]
    assert str(report).startswith(f"skipped 1 utterance: {bad_id} (")
    assert named_file in str(report)


def test_empty_librispeech_transcript_is_bad_data(librispeech_root):
    transcript = librispeech_root / "test-clean" / "61" / "70968" / "61-70968.trans.txt"
    transcript.write_text("61-70968-0000 \n")
    utterances = list(librispeech_utterances(librispeech_root, ["test-clean"]))
    report = BadDataReport()
    assert validate_utterances(utterances, "skip", report) == []
    assert "empty transcript" in report.skipped["61-70968-0000"]
    with pytest.raises(BadDataError, match="61-70968-0000.flac: empty transcript"):
        validate_utterances(utterances, "error")


def test_wrong_sample_rate_is_bad_data_when_resampling_is_off(tmp_path, tone):
    tone(tmp_path / "a.wav", sample_rate=8000)
    utterance = Utterance("a", str(tmp_path / "a.wav"), "hello")
    report = BadDataReport()
    assert validate_utterances([utterance], "skip", report, resample=False) == []
    assert "8000 Hz" in report.skipped["a"]
    assert validate_utterances([utterance], "skip", report)[0].duration == pytest.approx(0.5)


def test_report_lists_every_skipped_utterance_once():
    report = BadDataReport()
    report.add("id1", "missing file /x.wav")
    report.add("id2", "empty file /y.wav")
    report.add("id1", "missing file /x.wav")  # the same item failing again in a later epoch
    assert str(report) == (
        "skipped 2 utterances: id1 (missing file /x.wav), id2 (empty file /y.wav)"
    )


def test_unknown_policy_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="'ignore'"):
        validate_utterances([], policy="ignore")


# --- Shared real-speech data (skipped when ../shared is absent) ----------------------------------


def test_fsdd_manifest_reads_and_8k_audio_resamples(shared_dataset):
    fsdd = shared_dataset("fsdd")
    utterances = list(manifest_utterances(fsdd / "test.jsonl"))
    assert len(utterances) == 300
    assert {normalize_text(u.text) for u in utterances} == {
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"
    }  # fmt: skip
    checked = validate_utterances(utterances[:5])
    for utterance in checked:
        assert utterance.duration == pytest.approx(soundfile.info(utterance.audio_path).duration)
        assert len(utterance.load_audio()) == pytest.approx(utterance.duration * 16000, abs=1)


def test_ljspeech_part1_flac_manifest_reads(shared_dataset):
    ljspeech = shared_dataset("ljspeech-part1")
    utterances = list(manifest_utterances(ljspeech / "all.jsonl"))
    assert len(utterances) == 385
    assert all(normalize_text(u.text) for u in utterances)
    [first] = validate_utterances(utterances[:1])
    assert first.audio_path.endswith(".flac")
    assert len(first.load_audio()) == pytest.approx(first.duration * 16000, abs=1)
    assert first.duration == pytest.approx(utterances[0].duration, abs=1e-3)
