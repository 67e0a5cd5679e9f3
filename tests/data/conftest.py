from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def write_tone(path, seconds=0.5, sample_rate=16000, channels=1, frequency=440.0):
    """Writes a sine tone (format from the file extension) and returns its samples."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    samples = (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    if channels > 1:
        samples = np.stack([samples] * channels, axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, sample_rate)
    return samples


@pytest.fixture
def tone():
    return write_tone


@pytest.fixture
def shared_dataset():
    """shared_dataset("fsdd") -> the folder in ../shared/data, or skip the test if absent."""

    def find(name: str) -> Path:
        folder = SHARED_DATA / name
        if not folder.is_dir():
            pytest.skip(f"shared test data {folder} is not available (it sits beside the checkout)")
        return folder.resolve()

    return find
