"""Corpus readers yielding Utterance records, up-front validation, and the torch Dataset.

Readers only parse the corpus layout; `validate_utterances` then checks every audio file with a
header read (soundfile.info, no decoding) so that bad files are found before training starts.
What happens to a bad utterance is decided by the policy: "error" raises BadDataError naming the
file and reason, "skip" drops it and records it in a BadDataReport.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from asrquant.checks import check_choice
from asrquant.data.audio import SAMPLE_RATE, AudioError, BadDataError, audio_info, read_audio
from asrquant.data.synthetic import SPLITS, build_synthetic_corpus
from asrquant.data.text import normalize_text

Policy = Literal["skip", "error"]
POLICIES = ("skip", "error")
# A manifest duration further than this from the file's own length (seconds, and share of the
# file's length; the larger applies) means the line and the file do not belong together.
DURATION_TOLERANCE_S, DURATION_TOLERANCE_SHARE = 0.5, 0.1


@dataclass(frozen=True)
class Utterance:
    id: str
    audio_path: str
    text: str  # raw transcript, as found in the corpus
    duration: float | None = None  # seconds; None until known
    speaker: str | None = None  # a manifest's "speaker" field, LibriSpeech's speaker id

    def load_audio(self, target_sr: int = SAMPLE_RATE, resample: bool = True) -> torch.Tensor:
        return read_audio(self.audio_path, target_sr, resample)


class BadDataReport:
    """The utterances left out under policy="skip", by id, with the reason for each."""

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}

    def add(self, utt_id: str, reason: str) -> None:
        # Setdefault: an item that fails again in a later epoch is still one skipped utterance.
        self.skipped.setdefault(utt_id, reason)

    def update(self, other: BadDataReport | Iterable[tuple[str, str]]) -> None:
        items = other.skipped.items() if isinstance(other, BadDataReport) else other
        for utt_id, reason in items:
            self.add(utt_id, reason)

    def __len__(self) -> int:
        return len(self.skipped)

    def __str__(self) -> str:
        if not self.skipped:
            return "skipped 0 utterances"
        items = ", ".join(f"{utt_id} ({reason})" for utt_id, reason in self.skipped.items())
        noun = "utterance" if len(self.skipped) == 1 else "utterances"
        return f"skipped {len(self.skipped)} {noun}: {items}"


def check_policy(policy: str, where: str = "policy") -> None:
    """The bad-data policy: "skip" (drop and report) or "error" (stop at the first)."""
    check_choice(where, policy, POLICIES)


def handle_bad_data(
    policy: Policy, report: BadDataReport | None, utt_id: str, error: BadDataError
) -> None:
    """Raises `error` under policy "error"; records it in `report` under policy "skip"."""
    if policy == "error":
        raise error
    if report is not None:
        report.add(utt_id, describe(error))


def describe(error: BadDataError) -> str:
    """Short reason for a report, e.g. "missing file /data/x.wav"."""
    return f"{error.reason} {error.path}" if isinstance(error, AudioError) else str(error)


def librispeech_utterances(root: str | os.PathLike, splits: Iterable[str]) -> Iterator[Utterance]:
    """Yields the utterances of one or more LibriSpeech splits, in sorted order.

    Layout: root/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt with lines
    "<speaker>-<chapter>-<utt> TRANSCRIPT", next to <speaker>-<chapter>-<utt>.flac.
    Nothing is downloaded. Audio files are not opened here (see validate_utterances).
    """
    root = Path(root)
    if isinstance(splits, str):
        splits = [splits]
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise FileNotFoundError(
                f"LibriSpeech split folder {split_dir} does not exist; folders in {root}: "
                f"{present if present else 'none (root missing or empty)'}"
            )
        for transcript_file in sorted(split_dir.glob("*/*/*.trans.txt")):
            with open(transcript_file, encoding="utf-8") as lines:
                for line in lines:
                    if not line.strip():
                        continue
                    utt_id, _, text = line.strip().partition(" ")
                    audio_path = transcript_file.parent / f"{utt_id}.flac"
                    yield Utterance(utt_id, str(audio_path), text.strip(),
                                    speaker=utt_id.split("-", 1)[0])


def manifest_entries(path: str | os.PathLike) -> Iterator[tuple[str, dict | BadDataError]]:
    """("<manifest>:<line>", the line's JSON object) for every non-empty line of a JSONL
    manifest, or a BadDataError naming the line when it is not JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                yield where, BadDataError(f"{where}: not JSON ({err})")
                continue
            if not isinstance(entry, dict):
                yield where, BadDataError(f"{where}: expected a JSON object, got "
                                          f"{type(entry).__name__}")
                continue
            yield where, entry


def entry_audio_and_id(manifest: str | os.PathLike, entry: dict) -> tuple[Path, str]:
    """A manifest entry's audio path (relative ones against the manifest's folder) and its
    utterance id: "id", else "audio_filepath" without its extension."""
    audio_path = Path(entry["audio_filepath"])
    if not audio_path.is_absolute():
        audio_path = Path(manifest).parent / audio_path
    return audio_path, str(entry.get("id") or Path(entry["audio_filepath"]).with_suffix(""))


def manifest_utterances(
    path: str | os.PathLike, policy: Policy = "error", report: BadDataReport | None = None
) -> Iterator[Utterance]:
    """Yields the utterances of a NeMo-style JSONL manifest.

    Each line is a JSON object with "audio_filepath" (relative paths are resolved against the
    manifest's folder), "duration" (seconds) and "text", optionally "speaker"; other keys are
    ignored. The utterance id
    is the "id" key if present, else the audio path relative to the manifest folder without its
    extension. Bad lines (not JSON, missing key, empty transcript) raise BadDataError naming the
    manifest and line number, or are skipped and recorded in `report`, per `policy`.
    """
    check_policy(policy)
    for where, entry in manifest_entries(path):
        if isinstance(entry, BadDataError):
            handle_bad_data(policy, report, where, entry)
            continue
        missing = [key for key in ("audio_filepath", "duration", "text") if key not in entry]
        if missing:
            error = BadDataError(f"{where}: missing key(s) {missing}; has {sorted(entry)}")
            handle_bad_data(policy, report, where, error)
            continue
        audio_path, utt_id = entry_audio_and_id(path, entry)
        text = entry["text"]
        if not isinstance(text, str) or not normalize_text(text):
            error = BadDataError(f"{where}: empty transcript {text!r} for {audio_path}"
                                 f"{_empty_after_normalisation(text)}")
            handle_bad_data(policy, report, utt_id, error)
            continue
        try:
            duration = float(entry["duration"])
        except (TypeError, ValueError):
            error = BadDataError(f"{where}: duration {entry['duration']!r} is not a number")
            handle_bad_data(policy, report, utt_id, error)
            continue
        speaker = entry.get("speaker")
        yield Utterance(utt_id, str(audio_path), text, duration,
                        None if speaker is None else str(speaker))


def read_utterances(
    source: Iterable[Utterance] | str | os.PathLike | Mapping,
    policy: Policy = "error",
    report: BadDataReport | None = None,
) -> list[Utterance]:
    """Lists the utterances of a source, without validating audio files.

    A source is a list of Utterances; a path to a .jsonl manifest; or a reader config mapping:
    {"manifest": path}, {"librispeech": root, "splits": [split, ...]}, or
    {"synthetic": {build_synthetic_corpus arguments}, "split": "train"} (built on first use).
    """
    if isinstance(source, (str, os.PathLike)):
        return list(manifest_utterances(source, policy, report))
    if isinstance(source, Mapping):
        if "manifest" in source:
            return list(manifest_utterances(source["manifest"], policy, report))
        if "librispeech" in source:
            splits = source.get("splits")
            if not splits:
                raise ValueError(f"LibriSpeech reader config {dict(source)} needs 'splits'")
            return list(librispeech_utterances(source["librispeech"], list(splits)))
        if "synthetic" in source:
            split = source.get("split")
            if split not in SPLITS:
                raise ValueError(f"synthetic reader config needs 'split', one of {SPLITS}")
            manifests = build_synthetic_corpus(**dict(source["synthetic"] or {}))
            return list(manifest_utterances(manifests[split], policy, report))
        raise ValueError(
            f"reader config {dict(source)} needs a 'manifest', 'librispeech' (+ 'splits') "
            "or 'synthetic' (+ 'split') key"
        )
    utterances = list(source)
    for item in utterances:
        if not isinstance(item, Utterance):
            raise TypeError(f"expected Utterance records, got {type(item).__name__}: {item!r}")
    return utterances


def validate_utterances(
    utterances: Iterable[Utterance],
    policy: Policy = "error",
    report: BadDataReport | None = None,
    max_duration: float | None = None,
    target_sr: int = SAMPLE_RATE,
    resample: bool = True,
) -> list[Utterance]:
    """Checks every utterance cheaply (audio header only) and returns the usable ones.

    Problems: missing, empty or unreadable file; a sample rate other than `target_sr` when
    `resample` is False; an empty transcript (after normalisation); a manifest duration far from
    the file's own length (see DURATION_TOLERANCE_S); audio longer than `max_duration` seconds.
    The returned records carry the duration measured from the file.
    """
    check_policy(policy)
    valid = []
    for utt in utterances:
        try:
            if not normalize_text(utt.text):
                raise BadDataError(f"{utt.audio_path}: empty transcript {utt.text!r}"
                                   f"{_empty_after_normalisation(utt.text)}")
            info = audio_info(utt.audio_path)
            if info.sample_rate != target_sr and not resample:
                raise AudioError(
                    utt.audio_path,
                    f"sample rate {info.sample_rate} Hz, expected {target_sr} Hz "
                    "(resampling is off)",
                )
            if max_duration is not None and info.duration > max_duration:
                raise AudioError(
                    utt.audio_path,
                    f"too long: {info.duration:.2f} s > max_duration {max_duration:g} s",
                )
            if utt.duration is not None and not _duration_agrees(utt.duration, info.duration):
                raise AudioError(
                    utt.audio_path,
                    f"duration {utt.duration!r} s in the manifest, but the file holds "
                    f"{info.duration:.2f} s (allowed: within {DURATION_TOLERANCE_S:g} s or "
                    f"{DURATION_TOLERANCE_SHARE:.0%}, whichever is larger)",
                )
        except BadDataError as error:
            handle_bad_data(policy, report, utt.id, error)
            continue
        valid.append(dataclasses.replace(utt, duration=info.duration))
    return valid


def _duration_agrees(stated: float, actual: float) -> bool:
    tolerance = max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_SHARE * actual)
    return abs(stated - actual) <= tolerance  # False for NaN


def _empty_after_normalisation(text) -> str:
    """Why a non-blank transcript counts as empty: nothing of it is in the alphabet."""
    if isinstance(text, str) and text.strip():
        return " (nothing left after normalisation to a-z, 0-9 and apostrophes)"
    return ""


@dataclass(frozen=True)
class FailedItem:
    """Returned by UtteranceDataset under policy "skip" in place of an unreadable item."""

    id: str
    reason: str


class UtteranceDataset(Dataset):
    """Items are (waveform at `target_sr` as 1-D float32, normalised transcript, utterance id).

    Under policy "skip" a file that fails to decode (e.g. NaN samples, truncated data) gives a
    FailedItem instead of raising, so an epoch never stops on one bad file; collate_batch drops
    it and lists it in the batch's "skipped" entry.
    """

    def __init__(
        self,
        utterances: Iterable[Utterance],
        target_sr: int = SAMPLE_RATE,
        policy: Policy = "skip",
        resample: bool = True,
    ) -> None:
        check_policy(policy)
        self.utterances = list(utterances)
        self.target_sr = target_sr
        self.policy = policy
        self.resample = resample

    def __len__(self) -> int:
        return len(self.utterances)

    def durations(self) -> list[float]:
        missing = [u.id for u in self.utterances if u.duration is None][:5]
        if missing:
            raise ValueError(
                f"utterances without a duration (e.g. {missing}); run validate_utterances first"
            )
        return [u.duration for u in self.utterances]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str] | FailedItem:
        utt = self.utterances[index]
        try:
            waveform = utt.load_audio(self.target_sr, self.resample)
        except AudioError as error:
            if self.policy == "error":
                raise
            return FailedItem(utt.id, describe(error))
        return waveform, normalize_text(utt.text), utt.id
