"""bench/packed_bench.py times real audio and says which: a --manifest, or the small synthetic
corpus under $ASRQUANT_CACHE (built there when missing); with neither it stops, never noise."""

import importlib.util
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from asrquant.data.audio import read_audio

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("packed_bench", ROOT / "bench" / "packed_bench.py")
packed_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(packed_bench)


def write_manifest(folder: Path, seconds: list[float]) -> Path:
    lines = []
    for i, s in enumerate(seconds):
        samples = (3000 * np.sin(np.arange(int(16000 * s)) / 7)).astype(np.int16)
        with wave.open(str(folder / f"u{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(samples.tobytes())
        lines.append(json.dumps({"audio_filepath": f"u{i}.wav", "duration": s, "text": "a b"}))
    path = folder / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_given_manifest_is_what_is_timed_and_reported(tmp_path):
    manifest = write_manifest(tmp_path, [1.0, 0.5, 2.0])
    audio, timed = packed_bench.utterances(2, str(manifest))
    assert timed == {"source": "--manifest", "manifest": str(manifest), "utterances": 2,
                     "seconds": 1.5}
    assert torch.equal(audio[1], read_audio(tmp_path / "u1.wav"))


def test_a_missing_manifest_stops_naming_it(tmp_path):
    with pytest.raises(packed_bench.NoAudioError, match=r"--manifest .*nope\.jsonl is not a file"):
        packed_bench.utterances(2, str(tmp_path / "nope.jsonl"))


def test_without_a_manifest_the_synthetic_corpus_is_built_under_ASRQUANT_CACHE(
        tmp_path, monkeypatch):
    monkeypatch.setenv("ASRQUANT_CACHE", str(tmp_path))
    audio, timed = packed_bench.utterances(2)
    manifest = Path(timed["manifest"])
    assert manifest.is_relative_to(tmp_path / "synthetic") and manifest.name == "test.jsonl"
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert timed["utterances"] == len(audio) == len(entries) == 2
    assert timed["seconds"] == pytest.approx(sum(e["duration"] for e in entries), abs=0.01)
    for a, e in zip(audio, entries, strict=True):  # speech from the manifest's files, not noise
        assert torch.equal(a, read_audio(manifest.parent / e["audio_filepath"]))


def test_no_audio_at_all_stops_with_where_it_looked_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("ASRQUANT_CACHE", str(tmp_path))

    def cannot_build(*args, **kwargs):
        raise RuntimeError("espeak is missing")

    monkeypatch.setattr(packed_bench, "build_synthetic_corpus", cannot_build)
    with pytest.raises(packed_bench.NoAudioError) as e:
        packed_bench.utterances(2)
    message = str(e.value)
    assert str(tmp_path / "synthetic") in message and "espeak is missing" in message
    assert "--manifest PATH" in message
