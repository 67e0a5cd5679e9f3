"""Test WER per speaker: computed from a run's predictions and the manifest's speakers,
recorded by asrquant-eval, and tabled by asrquant-report."""

import json
from pathlib import Path

import pytest

from asrquant.report import load_runs
from asrquant.report.tables import speaker_markdown
from asrquant.runs import run_eval
from asrquant.runs.speakers import per_speaker

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "cpu_synthetic_float.safetensors"


def write_manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_per_speaker_wer_counts_each_speakers_own_errors_and_words(tmp_path):
    preds = tmp_path / "test_test_epoch0.tsv"
    preds.write_text("id\tref\thyp\n"
                     "a1\tone two three\tone two three\n"   # speaker a: 0 errors / 5 words
                     "a2\tfour five\tfour five\n"
                     "b1\tsix seven\tsix\n"                  # speaker b: 2 errors / 4 words
                     "b2\teight nine\teight ten\n")
    rows = [{"audio_filepath": f"{u}.wav", "duration": 1.0, "text": "x", "speaker": u[0]}
            for u in ("a1", "a2", "b1", "b2")]
    manifest = write_manifest(tmp_path / "test.jsonl", rows)
    table = per_speaker(preds, manifest)
    assert table == {"a": {"wer": 0.0, "errors": 0, "words": 5, "utterances": 2},
                     "b": {"wer": 0.5, "errors": 2, "words": 4, "utterances": 2}}
    rows[2].pop("speaker")  # one utterance without a speaker: no table rather than a wrong one
    assert per_speaker(preds, write_manifest(tmp_path / "test.jsonl", rows)) is None


def test_eval_records_and_the_report_tables_wer_per_speaker_of_real_an4_speakers(
        shared_dir, cfg_of, tmp_path):
    src = Path(shared_dir) / "data" / "an4" / "test.jsonl"
    lines = [json.loads(x) for x in src.read_text().splitlines()]
    # two utterances of each of the first three speakers
    chosen, seen = [], {}
    for x in lines:
        if seen.get(x["speaker"], 0) < 2 and (x["speaker"] in seen or len(seen) < 3):
            seen[x["speaker"]] = seen.get(x["speaker"], 0) + 1
            chosen.append({**x, "audio_filepath": str(src.parent / x["audio_filepath"])})
    manifest = write_manifest(tmp_path / "an4.jsonl", chosen)
    cfg = cfg_of("eval", ["data=manifest", "data.train=null", f"data.test={manifest}",
                          f"ckpt={SHIPPED}", "threads=1", "trainer.enable_progress_bar=false"])
    run = tmp_path / "runs" / "0"
    out = run_eval(cfg, run)
    test = out["test"]["test"]
    table = test["per_speaker"]
    assert sorted(table) == sorted(seen) and all(e["utterances"] == 2 for e in table.values())
    assert sum(e["words"] for e in table.values()) == test["words"]
    assert sum(e["errors"] for e in table.values()) == pytest.approx(test["wer"] * test["words"])
    md = speaker_markdown(load_runs(tmp_path / "runs"))
    header, _, row, words = md.splitlines()[2:6]
    assert header == "| run | " + " | ".join(sorted(seen)) + " | all |"
    assert row.endswith(f"| {100 * test['wer']:.2f} |")
    assert words == ("| words | " + " | ".join(str(table[s]["words"]) for s in sorted(seen))
                     + f" | {test['words']} |")
