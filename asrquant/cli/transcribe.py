"""asrquant-transcribe: transcripts of audio files by a model file (asrquant/runs/transcribe.py).

    asrquant-transcribe model.onnx a.wav b.flac [--threads 2] [--batch-size 8]
    asrquant-transcribe models/cpu_an4_float.safetensors ../shared/data/an4/test/*.flac

Prints one line per file: path<TAB>transcript (greedy CTC).
"""

from __future__ import annotations

import argparse

from asrquant.runs.transcribe import transcribe_files


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a .safetensors (asrquant-export) or .onnx file")
    ap.add_argument("audio", nargs="+", help="audio files (any rate; resampled to 16 kHz)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)
    for path, text in transcribe_files(args.model, args.audio, args.threads, args.batch_size):
        print(f"{path}\t{text}")


if __name__ == "__main__":
    main()
