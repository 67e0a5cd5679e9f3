"""Reliability matrix, load: evaluating thousands of utterances keeps audio memory bounded by
the batch, whatever the number of utterances; what grows with it is a small record per
utterance (id, reference, hypothesis, loss), measured here."""

import json
import tracemalloc

import numpy as np
import pytest
import soundfile

from asrquant.runs import run_eval


def manifest(folder, n, files):
    lines = [json.dumps({"audio_filepath": f"a{i % len(files)}.wav", "duration": 0.3,
                         "text": files[i % len(files)], "id": f"utt-{i:06d}"}) for i in range(n)]
    path = folder / f"m{n}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def peak_bytes_of_eval(cfg_of):
    """peak_bytes_of_eval(ckpt, test, run_dir): the results of evaluating manifest `test`,
    and the peak of memory traced meanwhile."""
    def measure(ckpt, test, run_dir):
        cfg = cfg_of("eval", ["data=manifest", "data.train=null", f"data.test={test}",
                              f"ckpt={ckpt}", "threads=1", "trainer.enable_progress_bar=false",
                              "data.max_batch_seconds=30"])
        tracemalloc.start()
        try:
            out = run_eval(cfg, run_dir)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return out, peak
    return measure


def test_thousands_of_utterances_decode_with_memory_bounded_by_the_batch(tiny_ckpt, tmp_path,
                                                                        peak_bytes_of_eval):
    rng = np.random.default_rng(0)
    words = ["one two", "three", "four five six", "seven", "eight nine", "ten", "zero one",
             "two three"]
    for i in range(len(words)):  # 0.3 s of noise each: 19 KB of float32 audio per utterance
        soundfile.write(tmp_path / f"a{i}.wav", (0.1 * rng.standard_normal(4800)).astype(
            np.float32), 16000)
    small, big = 300, 3000
    _, warm = peak_bytes_of_eval(tiny_ckpt, manifest(tmp_path, small, words), tmp_path / "w")
    out_s, peak_s = peak_bytes_of_eval(tiny_ckpt, manifest(tmp_path, small, words),
                                       tmp_path / "s")
    out_b, peak_b = peak_bytes_of_eval(tiny_ckpt, manifest(tmp_path, big, words),
                                       tmp_path / "b")
    assert out_s["test"]["test"]["utterances"] == small
    assert out_b["test"]["test"]["utterances"] == big
    per_utterance = (peak_b - peak_s) / (big - small)
    print(f"traced peak: {peak_s / 2**20:.1f} MiB for {small} utterances, "
          f"{peak_b / 2**20:.1f} MiB for {big}: {per_utterance:.0f} bytes per utterance")
    # Audio kept per utterance would add >= 19,200 bytes each; records add about 1-2 KB.
    assert per_utterance < 4096
    assert peak_b < 48 * 2**20
