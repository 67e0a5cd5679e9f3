"""`asrquant-transcribe`: greedy CTC transcripts of audio files (wav, flac, ...; resampled to
16 kHz) by a model file: a packed or float safetensors file (asrquant-export) run in torch,
or an exported .onnx file run by onnxruntime."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from asrquant.data.audio import read_audio
from asrquant.export import load_quantized
from asrquant.export.onnx import load_onnx
from asrquant.lightning.module import ASRModule

MODEL_SUFFIXES = (".safetensors", ".onnx")


def load_model_file(path: str | os.PathLike, threads: int = 2) -> ASRModule:
    """An eval-mode recognizer from a .safetensors (torch) or .onnx (onnxruntime) file."""
    suffix = Path(path).suffix
    if suffix == ".onnx":
        return load_onnx(path, threads=threads)
    if suffix == ".safetensors":
        torch.set_num_threads(threads)
        return load_quantized(path)
    raise ValueError(f"model file {str(path)!r} has suffix {suffix!r}; allowed: "
                     f"{', '.join(MODEL_SUFFIXES)}")


def transcribe_files(model: str | os.PathLike, audio: list[str | os.PathLike],
                     threads: int = 2, batch_size: int = 8) -> list[tuple[str, str]]:
    """(audio path, transcript) for each file, in order. Every file is read (and checked)
    before any decoding, so a bad path fails at once, naming it."""
    if not audio:
        raise ValueError("no audio files given")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    module = load_model_file(model, threads)
    waves = [read_audio(p) for p in audio]
    return list(zip(map(str, audio), module.transcribe(waves, batch_size=batch_size),
                    strict=True))
