"""asrquant-transcribe: transcripts of audio files and manifests by a float, fake-quantized,
packed or ONNX model (the work is asrquant/runs/transcribe.py; see docs/transcribe.md)."""

from __future__ import annotations

import argparse
import sys

from asrquant.data.readers import POLICIES
from asrquant.runs.transcribe import PROG, recipe_names, run_transcribe

DESCRIPTION = "greedy CTC transcripts by a float, fake-quantized, packed or ONNX model"
EPILOG = """examples:
  asrquant-transcribe pretrained:cpu_synthetic_float a.wav b.flac
  asrquant-transcribe best.ckpt test.jsonl --quant int2_asym_g32 --out hyp.jsonl
  asrquant-transcribe model.onnx *.flac --policy skip --threads 2 --batch-size 8

Prints path<TAB>transcript per file (greedy CTC), or with --out writes JSONL: id,
audio_filepath, text, duration, and ref, wer, cer where the manifest line has a "text";
a summary (corpus WER/CER) goes to stderr. A bad file or manifest line is named in one
line on stderr; the others are still transcribed and written, and with --policy error
the exit status is then 1."""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a float .ckpt or .safetensors (pretrained:<name> for a shipped "
                    "one), a packed .safetensors (asrquant-export) or an .onnx file")
    ap.add_argument("inputs", nargs="+", metavar="audio", help="audio files (wav, flac, ogg; any "
                    "sample rate, mono or stereo) and/or JSONL manifests (.jsonl, .json: "
                    "audio_filepath, optional text and id)")
    ap.add_argument("--quant", metavar="RECIPE", help="fake-quantize a float model with conf/"
                    f"quant/RECIPE.yaml (round to nearest); one of: {', '.join(recipe_names())}")
    ap.add_argument("--quant-override", action="append", default=[], metavar="KEY=VALUE",
                    help="change a field of the recipe, e.g. group_size=64 (repeatable)")
    ap.add_argument("--out", help="write JSONL here (atomically) instead of printing")
    ap.add_argument("--policy", choices=POLICIES, default="error",
                    help="a bad file: skip it (exit 0) or fail the run (exit 1); default: error")
    ap.add_argument("--threads", type=int, default=2, help="torch or onnxruntime threads")
    ap.add_argument("--batch-size", type=int, default=8, help="files read and decoded at once")
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    args = ap.parse_args(argv)
    try:
        status = run_transcribe(args.model, args.inputs, args.out, args.quant, args.quant_override,
                                args.policy, args.threads, args.batch_size, args.quiet)
    except (ValueError, OSError, ImportError) as e:  # one line, naming the bad value
        sys.exit(f"{PROG}: error: {e}")
    sys.exit(status)


if __name__ == "__main__":
    main()
