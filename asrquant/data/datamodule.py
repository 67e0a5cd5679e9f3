"""Batching for CTC training: padding collate, duration-bucketed batches, LightningDataModule."""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from asrquant.checks import check_number
from asrquant.data.audio import SAMPLE_RATE
from asrquant.data.augment import Augmentation, AugmentedDataset
from asrquant.data.readers import (
    BadDataReport,
    FailedItem,
    Policy,
    Utterance,
    UtteranceDataset,
    check_policy,
    read_utterances,
    validate_utterances,
)
from asrquant.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

UtteranceSource = Iterable[Utterance] | str | os.PathLike | Mapping


def collate_batch(
    items: Sequence[tuple[torch.Tensor, str, str] | FailedItem], tokenizer: Tokenizer
) -> dict[str, Any]:
    """Pads UtteranceDataset items into a batch.

    Returns {"audio": (B, T) float32, "audio_lens": (B,) int64, "targets": (B, L) int64,
    "target_lens": (B,) int64, "texts": normalised transcripts, "ids": utterance ids,
    "skipped": [(id, reason), ...] for FailedItems, which are left out of the batch}.
    Padding is 0 (the CTC blank for targets). If every item failed, B is 0.
    """
    good = [item for item in items if not isinstance(item, FailedItem)]
    skipped = [(item.id, item.reason) for item in items if isinstance(item, FailedItem)]
    targets = [tokenizer.encode(text) for _, text, _ in good]
    audio_lens = [len(waveform) for waveform, _, _ in good]
    target_lens = [len(target) for target in targets]
    audio = torch.zeros(len(good), max(audio_lens, default=0), dtype=torch.float32)
    padded_targets = torch.zeros(len(good), max(target_lens, default=0), dtype=torch.int64)
    for row, ((waveform, _, _), target) in enumerate(zip(good, targets, strict=True)):
        audio[row, : len(waveform)] = waveform
        padded_targets[row, : len(target)] = torch.tensor(target, dtype=torch.int64)
    return {
        "audio": audio,
        "audio_lens": torch.tensor(audio_lens, dtype=torch.int64),
        "targets": padded_targets,
        "target_lens": torch.tensor(target_lens, dtype=torch.int64),
        "texts": [text for _, text, _ in good],
        "ids": [utt_id for _, _, utt_id in good],
        "skipped": skipped,
    }


class DurationBatchSampler(Sampler[list[int]]):
    """Batches of indices of similar duration, each holding at most `max_batch_seconds` of
    padded audio (batch size x longest item), so batch memory stays about constant.

    Batches are formed once: indices shuffled within duration buckets (durations rounded to
    `bucket_seconds`) with a generator seeded by `seed`, then cut into batches in duration
    order. Each epoch shuffles the order of the batches (generator seeded with (seed, epoch)),
    so an epoch is reproducible and every epoch has the same number of batches: Lightning
    reads the length once, and an epoch with fewer batches would skip its validation. An
    item longer than max_batch_seconds forms a batch of its own.

    With DDP, each of `num_replicas` ranks takes every num_replicas-th batch; the batch list is
    first padded by repeating its first batches (or, with drop_last, cut) so that every rank
    gets the same number of batches. Call set_epoch(epoch) at the start of every epoch
    (Lightning does so through the `sampler` attribute).
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        bucket_seconds: float = 0.5,
    ) -> None:
        check_number("max_batch_seconds", max_batch_seconds, gt=0)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.max_batch_seconds = max_batch_seconds
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.bucket_seconds = bucket_seconds
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    @property
    def sampler(self) -> DurationBatchSampler:
        # Lightning calls set_epoch() on `dataloader.batch_sampler.sampler` at each epoch start.
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        """Batches for every rank, for the current epoch."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        order = np.arange(len(self.durations))
        if self.shuffle:
            order = np.random.default_rng(self.seed).permutation(order)
            buckets = np.floor(self.durations[order] / self.bucket_seconds)
            order = order[np.argsort(buckets, kind="stable")]
        else:
            order = np.argsort(self.durations, kind="stable")
        batches, batch, longest = [], [], 0.0
        for index in order.tolist():
            new_longest = max(longest, self.durations[index])
            if batch and new_longest * (len(batch) + 1) > self.max_batch_seconds:
                batches.append(batch)
                batch, new_longest = [], self.durations[index]
            batch.append(index)
            longest = new_longest
        if batch:
            batches.append(batch)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.num_replicas > 1:
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % self.num_replicas]
            else:
                padding = -len(batches) % self.num_replicas
                batches = batches + (batches * math.ceil(padding / max(len(batches), 1)))[:padding]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._all_batches()[self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return len(self._all_batches()[self.rank :: self.num_replicas])


class EpochTaggedBatches(Sampler[list[tuple[int, int]]]):
    """The batches of a DurationBatchSampler as (epoch, index) pairs, for AugmentedDataset:
    the epoch travels with the indices to the worker processes. set_epoch and Lightning's
    `sampler` hook reach the wrapped sampler."""

    def __init__(self, batches: DurationBatchSampler) -> None:
        self.batches = batches

    @property
    def sampler(self) -> DurationBatchSampler:
        return self.batches

    @property
    def epoch(self) -> int:
        return self.batches.epoch

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.batches.epoch
        for batch in self.batches:
            yield [(epoch, index) for index in batch]

    def __len__(self) -> int:
        return len(self.batches)


class ASRDataModule(lightning.LightningDataModule):
    """Train/val/test loaders of (audio, targets) batches from utterance sources.

    Sources (see read_utterances): a list of Utterances, a manifest path, or a reader config
    such as {"manifest": path} or {"librispeech": root, "splits": ["train-clean-100"]}.
    `extra_test` maps names to more test sources (e.g. held-out voices); test_dataloader then
    returns [test, *extra_test] loaders in that order, named by `test_names`.

    Every file is checked in setup() (header only) under the bad-data `policy`; under "skip",
    bad utterances are dropped and listed by bad_data_summary(), which is also logged at the end
    of fit and test. Batches come from DurationBatchSampler, shuffled for training only. Under
    DDP pass Trainer(use_distributed_sampler=False): training batches are split across ranks
    here, while every rank sees the whole val/test sets.

    `augment` (an Augmentation, see augment.py) changes the training waveforms on the fly,
    seeded by (seed, epoch, index); val and test audio is never augmented. With speed
    perturbation, training batches are formed from the longest each utterance can become
    (duration / slowest factor), so max_batch_seconds still bounds the padded audio.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        train: UtteranceSource | None = None,
        val: UtteranceSource | None = None,
        test: UtteranceSource | None = None,
        extra_test: Mapping[str, UtteranceSource] | None = None,
        max_batch_seconds: float = 200.0,
        num_workers: int = 0,
        policy: Policy = "skip",
        max_duration: float | None = None,
        sample_rate: int = SAMPLE_RATE,
        seed: int = 0,
        augment: Augmentation | None = None,
    ) -> None:
        super().__init__()
        check_policy(policy)
        check_number("max_batch_seconds", max_batch_seconds, gt=0)
        self.tokenizer = tokenizer
        self.sources = {"train": train, "val": val, "test": test}
        self.extra_test = dict(extra_test or {})
        clashes = sorted(set(self.extra_test) & {"train", "val", "test"})
        if clashes:
            raise ValueError(f"extra_test names {clashes} clash with the train/val/test sets")
        self.max_batch_seconds = max_batch_seconds
        self.num_workers = num_workers
        self.policy = policy
        self.max_duration = max_duration
        self.sample_rate = sample_rate
        self.seed = seed
        if augment is not None and not isinstance(augment, Augmentation):
            raise TypeError(f"augment must be an Augmentation or None, got {augment!r}")
        if augment is not None and augment.sample_rate != sample_rate:
            raise ValueError(f"augment works at {augment.sample_rate} Hz but the data is read at "
                             f"{sample_rate} Hz; allowed: the same rate")
        self.augment = augment if augment is not None and augment.enabled else None
        self.report = BadDataReport()
        self.datasets: dict[str, UtteranceDataset] = {}

    @property
    def test_names(self) -> list[str]:
        return ["test"] * (self.sources["test"] is not None) + list(self.extra_test)

    def _dataset(self, source: UtteranceSource) -> UtteranceDataset:
        utterances = read_utterances(source, self.policy, self.report)
        valid = validate_utterances(
            utterances, self.policy, self.report, self.max_duration, self.sample_rate
        )
        return UtteranceDataset(valid, self.sample_rate, self.policy)

    def setup(self, stage: str | None = None) -> None:
        needed = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": self.test_names,
        }.get(stage, ["train", "val", *self.test_names])
        for name in needed:
            source = self.extra_test[name] if name in self.extra_test else self.sources[name]
            if source is not None and name not in self.datasets:
                self.datasets[name] = self._dataset(source)

    def _loader(self, name: str, train: bool) -> DataLoader:
        if name not in self.datasets:
            raise RuntimeError(f"no {name!r} data: pass a {name} source and call setup() first")
        dataset = self.datasets[name]
        augmented = train and self.augment is not None
        if augmented:
            dataset = AugmentedDataset(dataset, self.augment, self.seed)
        trainer = self.trainer
        sampler = DurationBatchSampler(
            dataset.durations(),
            self.max_batch_seconds,
            shuffle=train,
            seed=self.seed,
            num_replicas=trainer.world_size if trainer and train else 1,
            rank=trainer.global_rank if trainer and train else 0,
        )
        return DataLoader(
            dataset,
            batch_sampler=EpochTaggedBatches(sampler) if augmented else sampler,
            collate_fn=functools.partial(collate_batch, tokenizer=self.tokenizer),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0 and train,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.sources["val"] is None:
            return []  # Lightning then skips validation
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(name, train=False) for name in self.test_names]
        return loaders[0] if len(loaders) == 1 else loaders

    def calibration_dataloader(self, num_utterances: int = 128) -> DataLoader:
        """`num_utterances` training utterances (a subset seeded by `seed`, never augmented),
        in batches of similar length: the calibration data of calibration PTQ."""
        check_number("num_utterances", num_utterances, ge=1, integer=True)
        if self.sources["train"] is None:
            raise RuntimeError("calibration needs training data: pass a train source")
        if "train" not in self.datasets:
            self.datasets["train"] = self._dataset(self.sources["train"])
        dataset = self.datasets["train"]
        g = torch.Generator().manual_seed(self.seed)
        keep = torch.randperm(len(dataset), generator=g)[:num_utterances].tolist()
        subset = torch.utils.data.Subset(dataset, sorted(keep))
        durations = [dataset.durations()[i] for i in sorted(keep)]
        sampler = DurationBatchSampler(durations, self.max_batch_seconds, shuffle=False,
                                       seed=self.seed)
        return DataLoader(subset, batch_sampler=sampler,
                          collate_fn=functools.partial(collate_batch, tokenizer=self.tokenizer),
                          num_workers=self.num_workers)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Items that failed to decode inside (possibly worker) processes reach us here.
        if isinstance(batch, dict):
            self.report.update(batch.get("skipped", []))
        return batch

    def bad_data_summary(self) -> str:
        """E.g. "skipped 2 utterances: a-1 (missing file /data/a-1.wav), ..."."""
        return str(self.report)

    def teardown(self, stage: str) -> None:
        if stage in ("fit", "test") and self.report:
            log.warning("%s", self.bad_data_summary())
