"""A tiny folder in LibriSpeech's layout, spoken by the built-in eSpeak NG synthesizer, for
the recipe's QUICK mode and its test (no LibriSpeech needed):

    python recipes/librispeech/make_tiny.py /tmp/tiny_librispeech
    QUICK=1 LIBRISPEECH=/tmp/tiny_librispeech bash recipes/librispeech/run.sh

ROOT/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac (16 kHz mono FLAC) and
<speaker>-<chapter>.trans.txt with upper-case transcripts, as in LibriSpeech. Splits:
train-clean-100, dev-clean, test-clean, test-other; sentences from asrquant's synthetic
grammar, different voices per speaker, deterministic for a seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from asrquant.data.synthetic import espeak, unique_sentences

VOICES = ["en-us", "en", "en-us+m3", "en+f2", "en-us+f3", "en+m5"]
SPLITS = {  # split: (speakers, chapters per speaker, utterances per chapter)
    "train-clean-100": (3, 2, 8),
    "dev-clean": (1, 1, 6),
    "test-clean": (1, 1, 6),
    "test-other": (1, 1, 6),
}


def make_tiny_librispeech(root: str | Path, seed: int = 0, splits: dict | None = None) -> Path:
    root = Path(root)
    splits = splits or SPLITS
    rng = np.random.default_rng(seed)
    total = sum(s * c * u for s, c, u in splits.values())
    sentences = iter(unique_sentences(total, rng))
    tts = espeak()
    speaker = 100
    for split, (speakers, chapters, utts) in splits.items():
        for _ in range(speakers):
            speaker += 1
            voice = VOICES[speaker % len(VOICES)]
            for chapter in range(1000 + speaker, 1000 + speaker + chapters):
                folder = root / split / str(speaker) / str(chapter)
                folder.mkdir(parents=True, exist_ok=True)
                lines = []
                for utt in range(utts):
                    utt_id = f"{speaker}-{chapter}-{utt:04d}"
                    text = next(sentences)
                    samples = tts.synthesize(text, voice=voice, rate=int(rng.integers(150, 190)))
                    wave = torch.from_numpy(samples.astype(np.float32) / 32768.0)
                    wave = torchaudio.functional.resample(wave, tts.sample_rate, 16000)
                    soundfile.write(folder / f"{utt_id}.flac", wave.numpy(), 16000,
                                    format="FLAC")
                    lines.append(f"{utt_id} {text.upper()}\n")
                (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    return root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(make_tiny_librispeech(args.root, args.seed))


if __name__ == "__main__":
    main()
