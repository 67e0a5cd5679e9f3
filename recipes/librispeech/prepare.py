"""LibriSpeech data preparation: validate a local copy, write JSONL manifests, train the
SentencePiece tokenizer on the training transcripts. Nothing is downloaded.

    python recipes/librispeech/prepare.py --root /data/LibriSpeech --out runs/librispeech/data

Reads ROOT/<split>/<speaker>/<chapter>/*.flac + *.trans.txt with asrquant's LibriSpeech
reader, checks every file with a header read (asrquant.data.readers.validate_utterances:
missing, empty or unreadable file, empty transcript), and writes into OUT:

  train.jsonl              the training splits together, utterances longer than
                           --max-train-duration left out (counted in summary.json)
  <split>.jsonl            each dev/test split, complete (no duration limit: scores stay
                           comparable with published ones)
  tokenizer.json           SentencePiece (asrquant.data.tokenizer) trained on the normalised
                           train.jsonl transcripts, as asrquant-train trains it
  summary.json             utterances, hours, longest utterance and left-out files per split

Manifest lines are NeMo-style: {"id", "audio_filepath" (absolute), "duration", "text"}.
A missing split folder stops with the folders that do exist; a bad training file is left
out and listed; a bad dev/test file stops the preparation (--eval-policy skip to go on).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from asrquant.data.readers import BadDataReport, librispeech_utterances, validate_utterances
from asrquant.data.text import normalize_text
from asrquant.data.tokenizer import train_sentencepiece
from asrquant.io import atomic_write_text

TRAIN_960 = ["train-clean-100", "train-clean-360", "train-other-500"]
DEV = ["dev-clean", "dev-other"]
TEST = ["test-clean", "test-other"]


def _validate_chunk(args):
    utts, policy = args
    report = BadDataReport()
    valid = validate_utterances(utts, policy, report)
    return valid, dict(report.skipped)


def validate(utts: list, policy: str, workers: int) -> tuple[list, dict[str, str]]:
    """validate_utterances over `workers` processes (header reads only), order kept."""
    if workers <= 1 or len(utts) < 2000:
        valid, skipped = _validate_chunk((utts, policy))
        return valid, skipped
    size = 2000
    chunks = [(utts[i:i + size], policy) for i in range(0, len(utts), size)]
    valid, skipped = [], {}
    with ProcessPoolExecutor(workers) as pool:
        for v, s in pool.map(_validate_chunk, chunks):
            valid += v
            skipped.update(s)
    return valid, skipped


def write_manifest(path: Path, utts: list) -> None:
    lines = (json.dumps({"id": u.id, "audio_filepath": str(Path(u.audio_path).resolve()),
                         "duration": round(u.duration, 3), "text": u.text}) for u in utts)
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def stats(utts: list) -> dict:
    seconds = sum(u.duration for u in utts)
    return {"utterances": len(utts), "hours": round(seconds / 3600, 3),
            "longest_s": round(max((u.duration for u in utts), default=0.0), 3)}


def prepare(root: str | os.PathLike, out: str | os.PathLike, train_splits=TRAIN_960,
            dev_splits=DEV[:1], test_splits=TEST, max_train_duration: float | None = 20.0,
            vocab_size: int = 256, model_type: str = "unigram", eval_policy: str = "error",
            workers: int = 1) -> dict:
    started = time.perf_counter()
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech folder {root} does not exist (LIBRISPEECH=...)")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"root": str(root.resolve()), "splits": {}}

    train = list(librispeech_utterances(root, list(train_splits)))
    train, skipped = validate(train, "skip", workers)
    too_long = [u for u in train if max_train_duration and u.duration > max_train_duration]
    kept = [u for u in train if not (max_train_duration and u.duration > max_train_duration)]
    if not kept:
        raise ValueError(f"no usable training utterance in {root} {list(train_splits)}")
    write_manifest(out / "train.jsonl", kept)
    summary["splits"]["train"] = {
        "from": list(train_splits), **stats(kept), "bad_files": skipped,
        "left_out_longer_than_s": max_train_duration, "left_out_long": len(too_long)}

    for split in [*dev_splits, *test_splits]:
        utts = list(librispeech_utterances(root, [split]))
        utts, skipped = validate(utts, eval_policy, workers)
        write_manifest(out / f"{split}.jsonl", utts)
        summary["splits"][split] = {**stats(utts), "bad_files": skipped}

    tokenizer = train_sentencepiece([normalize_text(u.text) for u in kept],
                                    vocab_size=vocab_size, model_type=model_type)
    tokenizer.save(out / "tokenizer.json")
    summary["tokenizer"] = {"kind": "sentencepiece", "model_type": model_type,
                            "vocab_size": tokenizer.vocab_size}
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="folder holding train-clean-100/ etc.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-splits", nargs="+", default=TRAIN_960)
    ap.add_argument("--dev-splits", nargs="+", default=DEV[:1])
    ap.add_argument("--test-splits", nargs="+", default=TEST)
    ap.add_argument("--max-train-duration", type=float, default=20.0,
                    help="seconds; longer training utterances are left out (0: keep all)")
    ap.add_argument("--vocab-size", type=int, default=256, help="SentencePiece pieces")
    ap.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"])
    ap.add_argument("--eval-policy", default="error", choices=["error", "skip"])
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    summary = prepare(args.root, args.out, args.train_splits, args.dev_splits,
                      args.test_splits, args.max_train_duration or None, args.vocab_size,
                      args.model_type, args.eval_policy, args.workers)
    for name, s in summary["splits"].items():
        bad = len(s["bad_files"])
        print(f"   {name}: {s['utterances']} utterances, {s['hours']} h, longest "
              f"{s['longest_s']} s, {bad} bad file(s)", file=sys.stderr)
    print(f"   tokenizer: {summary['tokenizer']}; wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
