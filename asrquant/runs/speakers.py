"""Test WER per speaker: from the predictions a test wrote (id, ref, hyp) and the speakers of
its utterances (a manifest's `speaker` field, LibriSpeech's speaker id). Shows whether a
recipe hurts some speakers more than others."""

from __future__ import annotations

from pathlib import Path

from asrquant.data.readers import read_utterances
from asrquant.lightning.metrics import corpus_wer


def read_predictions(path: Path) -> list[tuple[str, str, str]]:
    """(id, ref, hyp) rows of a predictions TSV (lightning.module.write_predictions)."""
    rows = []
    for line in path.read_text().splitlines()[1:]:
        uid, ref, hyp = (line.split("\t") + ["", ""])[:3]
        rows.append((uid, ref, hyp))
    return rows


def per_speaker(predictions: Path, source) -> dict[str, dict] | None:
    """{speaker: {"wer", "errors", "words", "utterances"}} over the utterances of
    `predictions`, sorted by speaker; None when some utterance has no speaker."""
    speakers = {u.id: u.speaker for u in read_utterances(source, "skip")}
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for uid, ref, hyp in read_predictions(predictions):
        speaker = speakers.get(uid)
        if speaker is None:
            return None
        refs, hyps = groups.setdefault(str(speaker), ([], []))
        refs.append(ref)
        hyps.append(hyp)
    out = {}
    for speaker in sorted(groups):
        refs, hyps = groups[speaker]
        wer = corpus_wer(refs, hyps)
        out[speaker] = {"wer": wer.rate, "errors": wer.errors, "words": wer.ref_length,
                        "utterances": len(refs)}
    return out or None


def add_per_speaker(scores: dict[str, dict], predictions_dir: Path, sources: dict,
                    stage: str = "test") -> None:
    """Adds `per_speaker` to each set of `scores` ({set name: scores}) whose utterances all
    have a speaker, from the newest `<stage>_<set>_epoch*.tsv` in `predictions_dir`."""
    for name, entry in scores.items():
        source = sources["test"] if name == "test" else sources["extra_test"].get(name)
        files = sorted(Path(predictions_dir).glob(f"{stage}_{name}_epoch*.tsv"),
                       key=lambda p: p.stat().st_mtime)
        if source is None or not files or not isinstance(entry, dict):
            continue
        table = per_speaker(files[-1], source)
        if table:
            entry["per_speaker"] = table
