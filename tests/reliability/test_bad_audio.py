"""Reliability matrix, bad audio and manifests: each case under policy "error" (stops, naming
the file and line) and "skip" (dropped, counted, ids reported), and the two defaults end to
end (training skips, evaluation stops). Cases already covered in tests/data are listed in
docs/reliability.md and not repeated here."""

import json

import numpy as np
import pytest
import soundfile

from asrquant.data.audio import BadDataError, read_audio
from asrquant.data.readers import BadDataReport, manifest_utterances, validate_utterances
from asrquant.runs import run_eval, run_train, validate_config


def tone(path, seconds=0.5, sr=16000, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    soundfile.write(path, np.stack([x] * channels, 1) if channels > 1 else x, sr)


def manifest(folder, lines):
    path = folder / "m.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


GOOD = {"audio_filepath": "good.wav", "duration": 0.5, "text": "good one", "id": "good"}


def read_all(path, policy, report):
    return validate_utterances(manifest_utterances(path, policy, report), policy, report)


# case -> (bad manifest line, text of the error, id the skip report lists; None: "<m>:2")
CASES = {
    "non-ASCII only text": (
        {"audio_filepath": "good.wav", "duration": 0.5, "text": "日本語", "id": "cjk"},
        "empty transcript '日本語' for {folder}/good.wav (nothing left after normalisation to "
        "a-z, 0-9 and apostrophes)", "cjk"),
    "duration far too long": (
        {"audio_filepath": "good.wav", "duration": 12.0, "text": "long one", "id": "d12"},
        "{folder}/good.wav: duration 12.0 s in the manifest, but the file holds 0.50 s "
        "(allowed: within 0.5 s or 10%, whichever is larger)", "d12"),
    "duration negative": (
        {"audio_filepath": "good.wav", "duration": -1.0, "text": "short one", "id": "d0"},
        "{folder}/good.wav: duration -1.0 s in the manifest, but the file holds 0.50 s", "d0"),
    "duration NaN": (
        '{"audio_filepath": "good.wav", "duration": NaN, "text": "x y", "id": "dnan"}',
        "{folder}/good.wav: duration nan s in the manifest", "dnan"),
    "duration not a number": (
        {"audio_filepath": "good.wav", "duration": "long", "text": "x y", "id": "dstr"},
        "{folder}/m.jsonl:2: duration 'long' is not a number", "dstr"),
    "JSON array, not object": ("[1, 2]", "{folder}/m.jsonl:2: expected a JSON object, got list",
                               None),
    "text not a string": (
        {"audio_filepath": "good.wav", "duration": 0.5, "text": 42, "id": "num"},
        "{folder}/m.jsonl:2: empty transcript 42", "num"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_line_stops_under_error_naming_file_and_line(case, tmp_path):
    line, message, _ = CASES[case]
    tone(tmp_path / "good.wav")
    path = manifest(tmp_path, [GOOD, line])
    with pytest.raises(BadDataError) as e:
        read_all(path, "error", BadDataReport())
    assert message.format(folder=tmp_path) in str(e.value)


@pytest.mark.parametrize("case", CASES)
def test_bad_line_is_skipped_counted_and_reported_under_skip(case, tmp_path):
    line, message, bad_id = CASES[case]
    tone(tmp_path / "good.wav")
    path = manifest(tmp_path, [GOOD, line])
    report = BadDataReport()
    assert [u.id for u in read_all(path, "skip", report)] == ["good"]
    bad_id = bad_id or f"{path}:2"
    assert list(report.skipped) == [bad_id]
    assert str(report).startswith(f"skipped 1 utterance: {bad_id} (")
    head = message.format(folder=tmp_path).split(" (allowed")[0]
    assert head.split(": ", 1)[-1] in str(report)


def test_accented_text_is_folded_not_dropped(tmp_path):
    tone(tmp_path / "good.wav")
    path = manifest(tmp_path, [{**GOOD, "text": "Café naïve, Grüße!"}])
    (u,) = read_all(path, "error", BadDataReport())
    from asrquant.data.text import normalize_text

    assert normalize_text(u.text) == "cafe naive grusse"


def test_small_duration_rounding_is_accepted_and_the_file_length_wins(tmp_path):
    tone(tmp_path / "good.wav", seconds=2.0)
    path = manifest(tmp_path, [{**GOOD, "duration": 2.3}])  # within 0.5 s
    (u,) = read_all(path, "error", BadDataReport())
    assert u.duration == pytest.approx(2.0)


def test_stereo_and_other_rates_are_converted_as_documented(tmp_path):
    tone(tmp_path / "st.wav", channels=2)
    tone(tmp_path / "8k.wav", sr=8000)
    assert read_audio(tmp_path / "st.wav").shape == (8000,)
    assert read_audio(tmp_path / "8k.wav").shape == (8000,)


@pytest.fixture(scope="module")
def mixed_manifest(tmp_path_factory):
    """Twelve good tone utterances and four bad lines of different kinds."""
    folder = tmp_path_factory.mktemp("mixed")
    words = ["one two", "three four", "five six", "seven eight"]
    lines = []
    for i in range(12):
        tone(folder / f"g{i}.wav", seconds=0.4 + 0.05 * i)
        lines.append({"audio_filepath": f"g{i}.wav", "duration": 0.4 + 0.05 * i,
                      "text": words[i % 4], "id": f"g{i}"})
    (folder / "junk.wav").write_bytes(b"<html>not audio</html>" * 40)
    lines += [
        {"audio_filepath": "missing.wav", "duration": 0.5, "text": "gone", "id": "b-missing"},
        {"audio_filepath": "junk.wav", "duration": 0.5, "text": "junk", "id": "b-junk"},
        "{broken json",
        {"audio_filepath": "g0.wav", "duration": 9.0, "text": "wrong", "id": "b-duration"},
    ]
    return manifest(folder, lines)


def test_training_default_skips_and_reports_the_ids_evaluation_default_stops(
        mixed_manifest, tmp_path, cfg_of, tiny_model):
    model_only = [o for o in tiny_model if o.startswith("model.")]  # a char tokenizer here
    base = ["data=manifest", "tokenizer=char", *model_only, "trainer.max_steps=2",
            "trainer.enable_progress_bar=false", "threads=1", "normalizer_utterances=4"]
    cfg = cfg_of("train", base + [f"data.train={mixed_manifest}", f"data.test={mixed_manifest}",
                                  "data.eval_policy=skip", "data.dev_fraction=0.5"])
    assert cfg.data.policy == "skip"  # the training default
    results = run_train(validate_config(cfg, "train"), tmp_path / "train")
    summary = json.loads((tmp_path / "train" / "results.json").read_text())["bad_data"]
    assert summary.startswith("skipped 4 utterances: ")
    for bad in ("b-missing (missing file", "b-junk (unreadable audio", f"{mixed_manifest}:15",
                "b-duration (duration 9.0 s in the manifest"):
        assert bad in summary
    assert results["test"]["test"]["utterances"] == 12

    ev = cfg_of("eval", ["data=manifest", "data.train=null", f"data.test={mixed_manifest}",
                         f"ckpt={tmp_path / 'train' / 'checkpoints' / 'last.ckpt'}", "threads=1",
                         "trainer.enable_progress_bar=false"])
    assert ev.data.eval_policy == "error"  # the evaluation default
    with pytest.raises(BadDataError) as e:
        run_eval(validate_config(ev, "eval"), tmp_path / "eval")
    assert str(e.value) == f"{mixed_manifest}:15: not JSON (Expecting property name enclosed " \
                           "in double quotes: line 1 column 2 (char 1))"


def test_synthetic_evaluation_of_a_damaged_corpus_names_the_file(corpus_cache, tiny_ckpt,
                                                                  tmp_path, cfg_of, tiny_data):
    """A test file damaged after the corpus was built: evaluation stops naming it."""
    import shutil

    from asrquant.data.synthetic import build_synthetic_corpus

    cache = tmp_path / "cache"
    shutil.copytree(corpus_cache, cache)
    paths = build_synthetic_corpus(cache, n_train=24, n_dev=6, n_test=6, n_test_voices=6,
                                   progress=False)
    first = json.loads(paths["test"].read_text().splitlines()[0])
    wav = paths["test"].parent / first["audio_filepath"]
    wav.write_bytes(b"")
    cfg = cfg_of("eval", tiny_data + [f"data.synthetic.cache_dir={cache}", f"ckpt={tiny_ckpt}"])
    with pytest.raises(BadDataError) as e:
        run_eval(validate_config(cfg, "eval"), tmp_path / "eval")
    assert str(e.value) == f"{wav}: empty file (0 bytes)"
