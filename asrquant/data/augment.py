"""On-the-fly augmentation of training waveforms: speed perturbation, additive noise at a
random SNR, random gain (applied in that order). SpecAugment is the model's own
(asrquant.models.conformer_ctc).

Training only: ASRDataModule wraps its train set in AugmentedDataset; dev, test and
evaluation sets are read untouched. Every draw comes from a torch.Generator seeded with
(seed, epoch, utterance index, augmentation), never from the global RNG, so an utterance's audio
in an epoch is the same whatever the DataLoader workers, ranks or other augmentations, and
differs from epoch to epoch. The epoch reaches the worker processes inside the indices
(EpochTaggedBatches in datamodule.py): a worker cannot see the epoch set on the main
process's sampler.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional
from torch.utils.data import Dataset

from asrquant.checks import check_keys, check_number, config_key, invalid
from asrquant.data.audio import SAMPLE_RATE, AudioError, audio_info, read_audio
from asrquant.data.readers import FailedItem, UtteranceDataset

AUGMENT_KEYS = ("speed_factors", "gain_db", "noise_snr_db", "noise_manifest", "prob")
# Speed factors are multiples of 0.01 within these bounds: resampling from sr * factor to sr
# then reduces (by their gcd) to at most 200 -> 100 phases, so it stays cheap per utterance.
SPEED_STEP, SPEED_MIN, SPEED_MAX = 0.01, 0.5, 2.0
SPEED, NOISE, GAIN = 0, 1, 2  # each augmentation draws from its own generator


# ------------------------------------------------------------------------ the math, pure

def speed_perturb(waveform: torch.Tensor, factor: float,
                  sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """The waveform played `factor` times as fast (Kaldi's and ESPnet's speed perturbation):
    read as if recorded at sample_rate * factor and resampled to sample_rate, so duration and
    pitch both change; ceil(len / factor) samples. Factor 1 returns the input itself."""
    if factor == 1:
        return waveform
    return torchaudio.functional.resample(waveform, round(sample_rate * factor), sample_rate)


def apply_gain(waveform: torch.Tensor, gain_db: float) -> torch.Tensor:
    """The waveform scaled by `gain_db` decibels (amplitude x 10^(gain_db/20)), unclipped."""
    return waveform * 10.0 ** (gain_db / 20.0)


def add_noise(waveform: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """waveform + noise scaled so that 10 log10(mean(waveform^2) / mean(scaled^2)) = snr_db.
    Silent waveform or silent noise: the waveform unchanged (no level to scale against)."""
    signal_power = waveform.double().pow(2).mean()
    noise_power = noise.double().pow(2).mean()
    if signal_power == 0 or noise_power == 0:
        return waveform
    scale = torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (waveform.double() + scale * noise.double()).to(waveform.dtype)


def generator_for(seed: int, epoch: int, index: int, stream: int) -> torch.Generator:
    """A torch.Generator seeded from (seed, epoch, index, stream) through numpy's SeedSequence,
    so nearby keys give unrelated streams."""
    key = [seed % 2**64, epoch, index, stream]
    state = np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# ------------------------------------------------------------------------------ the config

def _range(where: str, value, unit: str) -> tuple[float, float] | None:
    """null, or [low, high] of two finite numbers with low <= high."""
    if value is None:
        return None
    if (isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2
            or not all(_is_number(v) for v in value) or value[0] > value[1]):
        raise invalid(where, _shown(value), f"null or [low, high] in {unit}, two numbers with "
                                             "low <= high")
    return float(value[0]), float(value[1])


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _shown(value):
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def _speed_factors(value) -> tuple[float, ...] | None:
    if value is None:
        return None
    allowed = (f"null or a non-empty list of numbers in {SPEED_MIN:g}..{SPEED_MAX:g}, each a "
               f"multiple of {SPEED_STEP:g} (e.g. [0.9, 1.0, 1.1])")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise invalid("speed_factors", _shown(value), allowed)
    for factor in value:
        if (not _is_number(factor) or not SPEED_MIN <= factor <= SPEED_MAX
                or abs(factor / SPEED_STEP - round(factor / SPEED_STEP)) > 1e-6):
            raise invalid("speed_factors", _shown(value), allowed)
    return tuple(float(f) for f in value)


def read_noise_manifest(path: str | os.PathLike) -> tuple[str, ...]:
    """The audio files of a noise manifest: JSONL lines with "audio_filepath" (relative paths
    resolve against the manifest's folder; other keys ignored). Every file's header is checked
    now; a bad line or file raises ValueError naming the manifest, the line and the reason."""
    where = f"noise_manifest={str(path)!r}"
    if not Path(path).is_file():
        raise ValueError(f"{where} is not a file")
    files = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where} line {number}: not JSON ({err})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("audio_filepath"), str):
                raise ValueError(f"{where} line {number}: expected a JSON object with "
                                 f"\"audio_filepath\", got {line.strip()[:80]!r}")
            audio = Path(path).parent / entry["audio_filepath"]  # an absolute path stays as is
            try:
                audio_info(audio)
            except AudioError as err:
                raise ValueError(f"{where} line {number}: {err}") from None
            files.append(str(audio))
    if not files:
        raise ValueError(f"{where} lists no audio files")
    return tuple(files)


class Augmentation:
    """What to do to a training waveform; each augmentation is off when its value is None.

    speed_factors: factors chosen uniformly per utterance (e.g. (0.9, 1.0, 1.1));
    noise_snr_db: (low, high): noise added at an SNR drawn uniformly from it, white Gaussian
    noise, or a random stretch of a random file of `noise_manifest` (looped when shorter);
    gain_db: (low, high): a gain drawn uniformly from it;
    prob: the chance that each one that is on is applied to an utterance.
    Call it with (waveform, seed=, epoch=, index=).
    """

    def __init__(
        self,
        speed_factors: Sequence[float] | None = None,
        gain_db: Sequence[float] | None = None,
        noise_snr_db: Sequence[float] | None = None,
        noise_manifest: str | os.PathLike | None = None,
        prob: float = 1.0,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self.speed_factors = _speed_factors(speed_factors)
        self.gain_db = _range("gain_db", gain_db, "dB")
        self.noise_snr_db = _range("noise_snr_db", noise_snr_db, "dB")
        check_number("prob", prob, ge=0, le=1)
        self.prob = float(prob)
        check_number("sample_rate", sample_rate, gt=0, integer=True)
        self.sample_rate = sample_rate
        if noise_manifest is not None and self.noise_snr_db is None:
            raise invalid("noise_manifest", str(noise_manifest),
                          "null while noise_snr_db is null (set the SNR range to mix it at)")
        if noise_manifest is not None and not isinstance(noise_manifest, (str, os.PathLike)):
            raise invalid("noise_manifest", noise_manifest, "null or the path of a JSONL file")
        self.noise_manifest = None if noise_manifest is None else str(noise_manifest)
        self.noise_files = read_noise_manifest(noise_manifest) if noise_manifest else ()

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and any(
            v is not None for v in (self.speed_factors, self.gain_db, self.noise_snr_db))

    @property
    def max_stretch(self) -> float:
        """How many times longer than the source an utterance can become (1 / slowest factor)."""
        return 1.0 / min(self.speed_factors) if self.speed_factors else 1.0

    def __repr__(self) -> str:
        return (f"Augmentation(speed_factors={self.speed_factors}, gain_db={self.gain_db}, "
                f"noise_snr_db={self.noise_snr_db}, noise_manifest={self.noise_manifest!r}, "
                f"prob={self.prob})")

    def _applies(self, g: torch.Generator) -> bool:
        return bool(torch.rand((), generator=g) < self.prob)

    @staticmethod
    def _uniform(g: torch.Generator, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), dtype=torch.float64, generator=g))

    def _noise(self, length: int, g: torch.Generator) -> torch.Tensor:
        if not self.noise_files:
            return torch.randn(length, generator=g)
        path = self.noise_files[int(torch.randint(len(self.noise_files), (), generator=g))]
        noise = read_audio(path, self.sample_rate)
        if len(noise) < length:
            noise = noise.repeat(math.ceil(length / len(noise)))
        start = int(torch.randint(len(noise) - length + 1, (), generator=g))
        return noise[start:start + length]

    def __call__(self, waveform: torch.Tensor, *, seed: int, epoch: int,
                 index: int) -> torch.Tensor:
        if self.speed_factors is not None:
            g = generator_for(seed, epoch, index, SPEED)
            choice = int(torch.randint(len(self.speed_factors), (), generator=g))
            if self._applies(g):
                waveform = speed_perturb(waveform, self.speed_factors[choice], self.sample_rate)
        if self.noise_snr_db is not None:
            g = generator_for(seed, epoch, index, NOISE)
            snr_db = self._uniform(g, *self.noise_snr_db)
            if self._applies(g):
                waveform = add_noise(waveform, self._noise(len(waveform), g), snr_db)
        if self.gain_db is not None:
            g = generator_for(seed, epoch, index, GAIN)
            gain_db = self._uniform(g, *self.gain_db)
            if self._applies(g):
                waveform = apply_gain(waveform, gain_db)
        return waveform


def augmentation_of(config: Mapping | None,
                    sample_rate: int = SAMPLE_RATE) -> Augmentation | None:
    """The `augment` config (conf/augment/) as an Augmentation, or None when it turns nothing
    on. Errors name the key, e.g. "augment.prob=2 is invalid; allowed: a number >= 0 and <= 1"."""
    config = dict(config or {})
    check_keys("augment", config, AUGMENT_KEYS)
    with config_key("augment."):
        augmentation = Augmentation(**config, sample_rate=sample_rate)
    return augmentation if augmentation.enabled else None


class AugmentedDataset(Dataset):
    """A training set with its waveforms augmented. Items are indexed by (epoch, index) pairs,
    as EpochTaggedBatches yields them; items that failed to load pass through unchanged."""

    def __init__(self, dataset: UtteranceDataset, augmentation: Augmentation,
                 seed: int = 0) -> None:
        self.dataset = dataset
        self.augmentation = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def durations(self) -> list[float]:
        """The longest each item can become (source duration x max_stretch), so duration-based
        batching keeps its padded seconds per batch with speed perturbation on."""
        stretch = self.augmentation.max_stretch
        return [d * stretch for d in self.dataset.durations()]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, str, str] | FailedItem:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(f"AugmentedDataset is indexed by (epoch, index), got {key!r}")
        epoch, index = key
        item = self.dataset[index]
        if isinstance(item, FailedItem):
            return item
        waveform, text, utt_id = item
        waveform = self.augmentation(waveform, seed=self.seed, epoch=epoch, index=index)
        return waveform, text, utt_id
