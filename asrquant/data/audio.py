"""Reading audio files into 1-D float32 tensors at the model's sample rate.

soundfile (libsndfile) decodes WAV, FLAC and OGG without the torchcodec/ffmpeg dependency that
torchaudio.load needs; torchaudio is only used for resampling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional

SAMPLE_RATE = 16000


class BadDataError(ValueError):
    """An utterance that cannot be used: a bad audio file, transcript or manifest line."""


class AudioError(BadDataError):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    num_frames: int
    num_channels: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.sample_rate


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Reads only the header of an audio file (cheap); raises AudioError if it is not usable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "missing file" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        info = soundfile.info(str(path))
    except RuntimeError as err:  # soundfile.LibsndfileError
        raise AudioError(path, f"unreadable audio ({err})") from err
    if info.frames <= 0:
        raise AudioError(path, "no audio samples (0 frames)")
    return AudioInfo(info.samplerate, info.frames, info.channels)


def read_audio(
    path: str | os.PathLike, target_sr: int = SAMPLE_RATE, resample: bool = True
) -> torch.Tensor:
    """Returns the file's samples as a 1-D float32 tensor in [-1, 1] at `target_sr` Hz.

    Multi-channel audio is averaged to mono. A file at another rate is resampled, or rejected
    with AudioError when `resample` is False. Missing, empty or unreadable files and files with
    NaN/Inf samples raise AudioError naming the file.
    """
    info = audio_info(path)
    if info.sample_rate != target_sr and not resample:
        raise AudioError(
            path, f"sample rate {info.sample_rate} Hz, expected {target_sr} Hz (resampling is off)"
        )
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as err:  # soundfile.LibsndfileError
        raise AudioError(path, f"unreadable audio ({err})") from err
    if samples.shape[0] == 0:
        raise AudioError(path, "no audio samples (0 frames)")
    if not np.isfinite(samples).all():
        raise AudioError(path, "contains NaN or Inf samples")
    waveform = torch.from_numpy(samples.mean(axis=1, dtype=np.float32))
    if sample_rate != target_sr:
        waveform = torchaudio.functional.resample(waveform, sample_rate, target_sr)
    return waveform.contiguous()
