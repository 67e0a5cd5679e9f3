"""The LibriSpeech recipe's QUICK mode end to end on a tiny LibriSpeech-layout folder.

The folder (FLAC + upper-case .trans.txt in <split>/<speaker>/<chapter>/) is spoken by eSpeak
NG; recipes/librispeech/run.sh then prepares manifests and the tokenizer, trains a 1-layer
model, runs the PTQ grid and QAT (+ float control) and writes the report. Stages 4-5 (packed
export and its check) are left out here to keep the test short: the same export code is
tested in tests/test_pipeline.py and tests/test_export.py.
"""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from asrquant.data.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "librispeech"


def _module(name):
    spec = importlib.util.spec_from_file_location(name, RECIPE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_librispeech(tmp_path_factory):
    return _module("make_tiny").make_tiny_librispeech(tmp_path_factory.mktemp("LibriSpeech"))


def test_prepare_writes_manifests_tokenizer_and_refuses_a_missing_split(tiny_librispeech,
                                                                         tmp_path):
    prepare = _module("prepare")
    summary = prepare.prepare(tiny_librispeech, tmp_path, ["train-clean-100"], ["dev-clean"],
                              ["test-clean", "test-other"], max_train_duration=3.0,
                              vocab_size=40)
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert train and all(x["duration"] <= 3.0 for x in train)
    assert len(train) + summary["splits"]["train"]["left_out_long"] == 48
    assert train[0]["id"] == "101-1101-0000" and train[0]["text"].isupper()
    for split in ("dev-clean", "test-clean", "test-other"):  # complete: no duration limit
        assert summary["splits"][split]["utterances"] == 6
    assert load_tokenizer(tmp_path / "tokenizer.json").vocab_size <= 40
    with pytest.raises(FileNotFoundError, match=r"train-other-500.*train-clean-100"):
        prepare.prepare(tiny_librispeech, tmp_path / "x", ["train-other-500"])


def test_quick_recipe_runs_end_to_end_and_writes_the_results_table(tiny_librispeech,
                                                                   tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "QUICK": "1", "LIBRISPEECH": str(tiny_librispeech), "OUT": str(out),
           "THREADS": "1", "OMP_NUM_THREADS": "1", "STAGES": "0 1 2 3 6"}
    proc = subprocess.run(["bash", str(RECIPE / "run.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("== 0.", "== 1.", "== 2.", "== 3.", "== 6."):
        assert stage in proc.stdout
    md = (out / "report" / "results.md").read_text()
    for name in ("float", "int4 sym ch", "int2 asym g32", "qat"):
        assert name in md, name
    assert "Failed runs" not in md
    runs = [json.loads(p.read_text()) for p in out.rglob("results.json")]
    assert len(runs) == 6 and all(r["status"] == "ok" for r in runs)
    float_run = json.loads((out / "float" / "results.json").read_text())
    # scored on the complete test-clean and test-other, named as asrquant-eval names them
    assert set(float_run["test"]) == {"test", "test-other"}
    assert float_run["test"]["test"]["utterances"] == 6
    # the tokenizer asrquant-train built is the one the preparation saved
    ckpt = __import__("torch").load(float_run["best_checkpoint"], weights_only=True)
    saved = load_tokenizer(out / "data" / "tokenizer.json").to_state()
    assert ckpt["tokenizer_state"] == saved
