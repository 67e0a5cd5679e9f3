import json

import numpy as np
import pytest
import soundfile
import torch

from asrquant.data.datamodule import ASRDataModule, DurationBatchSampler, collate_batch
from asrquant.data.readers import FailedItem
from asrquant.data.tokenizer import CharTokenizer

# --- collate ------------------------------------------------------------------------------------


def test_collate_pads_audio_and_targets_with_zeros():
    items = [(torch.ones(5), "ab", "u1"), (torch.full((3,), 2.0), "abc d", "u2")]
    batch = collate_batch(items, CharTokenizer())
    assert batch["audio"].shape == (2, 5) and batch["audio"].dtype == torch.float32
    assert batch["audio"][1].tolist() == [2.0, 2.0, 2.0, 0.0, 0.0]
    assert batch["audio_lens"].tolist() == [5, 3] and batch["audio_lens"].dtype == torch.int64
    assert batch["targets"].tolist() == [[3, 4, 0, 0, 0], [3, 4, 5, 1, 6]]
    assert batch["targets"].dtype == torch.int64
    assert batch["target_lens"].tolist() == [2, 5]
    assert (batch["texts"], batch["ids"], batch["skipped"]) == (["ab", "abc d"], ["u1", "u2"], [])


def test_collate_drops_failed_items_and_lists_them():
    items = [FailedItem("bad", "contains NaN or Inf samples /x.wav"), (torch.ones(4), "a", "ok")]
    batch = collate_batch(items, CharTokenizer())
    assert batch["ids"] == ["ok"] and batch["audio"].shape == (1, 4)
    assert batch["skipped"] == [("bad", "contains NaN or Inf samples /x.wav")]


def test_collate_of_only_failed_items_is_an_empty_batch():
    batch = collate_batch([FailedItem("bad", "reason")], CharTokenizer())
    assert batch["audio"].shape == (0, 0) and batch["targets"].shape == (0, 0)


# --- duration-bucketed batch sampler -------------------------------------------------------------

DURATIONS = list(np.random.default_rng(0).uniform(0.5, 6.0, size=200)) + [25.0]


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_every_index_exactly_once_per_epoch():
    sampler = DurationBatchSampler(DURATIONS, max_batch_seconds=20.0)
    for epoch in range(3):
        indices = [i for batch in epoch_batches(sampler, epoch) for i in batch]
        assert sorted(indices) == list(range(len(DURATIONS)))


def test_padded_batch_seconds_stay_under_the_bound_except_single_long_items():
    sampler = DurationBatchSampler(DURATIONS, max_batch_seconds=20.0)
    for batch in epoch_batches(sampler, 0):
        padded_seconds = len(batch) * max(DURATIONS[i] for i in batch)
        assert padded_seconds <= 20.0 or len(batch) == 1
    assert [24 < DURATIONS[i] for b in sampler for i in b if len(b) == 1].count(True) == 1


def test_batches_group_similar_durations():
    sampler = DurationBatchSampler(DURATIONS, max_batch_seconds=20.0)
    spreads = [np.ptp([DURATIONS[i] for i in batch]) for batch in epoch_batches(sampler, 0)]
    assert np.mean(spreads) < 0.6


def test_order_is_deterministic_per_seed_and_epoch():
    def batches(seed, epoch):
        return epoch_batches(DurationBatchSampler(DURATIONS, 20.0, seed=seed), epoch)

    assert batches(seed=0, epoch=1) == batches(seed=0, epoch=1)
    assert batches(seed=0, epoch=1) != batches(seed=0, epoch=2)
    assert batches(seed=0, epoch=1) != batches(seed=1, epoch=1)


def test_len_matches_iteration():
    sampler = DurationBatchSampler(DURATIONS, max_batch_seconds=12.0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert len(sampler) == len(list(sampler))


def test_ddp_ranks_get_disjoint_equal_shares_covering_everything():
    ranks = [
        epoch_batches(DurationBatchSampler(DURATIONS, 20.0, num_replicas=3, rank=r), epoch=4)
        for r in range(3)
    ]
    assert len({len(batches) for batches in ranks}) == 1
    indices = [i for batches in ranks for batch in batches for i in batch]
    assert set(indices) == set(range(len(DURATIONS)))
    total_batches = len(list(DurationBatchSampler(DURATIONS, 20.0)))
    assert sum(len(b) for b in ranks) - total_batches < 3  # at most num_replicas-1 repeats


def test_bad_sampler_arguments_are_rejected():
    with pytest.raises(ValueError, match="max_batch_seconds"):
        DurationBatchSampler([1.0], max_batch_seconds=0)
    with pytest.raises(ValueError, match="rank 2"):
        DurationBatchSampler([1.0], 10.0, num_replicas=2, rank=2)


# --- data module --------------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path, tone):
    """train: 6 good utterances + 1 NaN file; val: 2; test: 2; a named extra test set: 1."""

    def manifest(name, count, extra_entries=()):
        entries = []
        for i in range(count):
            tone(tmp_path / f"{name}{i}.wav", seconds=0.2 + 0.05 * i)
            entries.append({"audio_filepath": f"{name}{i}.wav", "duration": 0, "text": "Hi!"})
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in [*entries, *extra_entries]))
        return path

    nan = np.full(3200, np.nan, np.float32)
    soundfile.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    bad = [
        {"audio_filepath": "nan.wav", "duration": 0.2, "text": "nan"},
        {"audio_filepath": "missing.wav", "duration": 0.2, "text": "missing"},
    ]
    return {
        "train": manifest("train", 6, bad),
        "val": manifest("val", 2),
        "test": manifest("test", 2),
        "voices": manifest("voices", 1),
    }


def make_datamodule(corpus, **kwargs):
    return ASRDataModule(
        CharTokenizer(),
        train=corpus["train"],
        val={"manifest": str(corpus["val"])},
        test=corpus["test"],
        extra_test={"heldout_voices": corpus["voices"]},
        max_batch_seconds=1.0,
        **kwargs,
    )


def test_datamodule_train_loader_yields_padded_batches(corpus):
    datamodule = make_datamodule(corpus)
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    ids = sorted(i for batch in batches for i in batch["ids"])
    assert ids == [f"train{i}" for i in range(6)]
    assert all(batch["audio"].shape[0] == len(batch["ids"]) for batch in batches)
    assert batches[0]["texts"][0] == "hi"
    assert "missing file" in datamodule.bad_data_summary()  # found up front, in setup()


def test_datamodule_returns_one_test_loader_per_test_set(corpus):
    datamodule = make_datamodule(corpus)
    datamodule.setup("test")
    loaders = datamodule.test_dataloader()
    assert datamodule.test_names == ["test", "heldout_voices"]
    assert [sum(len(b["ids"]) for b in loader) for loader in loaders] == [2, 1]


def test_datamodule_error_policy_stops_at_setup(corpus):
    with pytest.raises(ValueError, match="missing.wav"):
        make_datamodule(corpus, policy="error").setup("fit")


def test_datamodule_max_duration_drops_long_utterances(corpus):
    datamodule = make_datamodule(corpus, max_duration=0.32)
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 4  # 0.2, 0.25, 0.3 s and the 0.2 s NaN file
    assert "too long" in datamodule.bad_data_summary()


def test_datamodule_reports_load_time_failures_after_fit(corpus, caplog):
    import lightning

    class TinyModel(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.epochs_seen = []

        def training_step(self, batch, batch_idx):
            self.epochs_seen.append(self.trainer.train_dataloader.batch_sampler.epoch)
            return (self.weight * batch["audio"].sum()).sum()

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    datamodule = make_datamodule(corpus)
    model = TinyModel()
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=datamodule)
    assert sorted(set(model.epochs_seen)) == [0, 1]  # Lightning advanced the sampler's epoch
    summary = datamodule.bad_data_summary()
    assert summary.startswith("skipped 2 utterances")
    assert "nan (contains NaN or Inf samples" in summary and "missing file" in summary
    assert summary in caplog.text


def test_every_epoch_has_the_same_number_of_batches():
    """Lightning reads the length once; a shorter epoch would silently skip validation."""
    import numpy as np

    from asrquant.data.datamodule import DurationBatchSampler

    durations = np.random.default_rng(0).uniform(0.5, 6.0, size=500)
    sampler = DurationBatchSampler(durations, max_batch_seconds=20.0, shuffle=True, seed=3)
    counts = set()
    orders = set()
    for epoch in range(8):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        counts.add(len(batches))
        assert len(batches) == len(sampler)
        orders.add(tuple(tuple(b) for b in batches[:3]))
    assert len(counts) == 1
    assert len(orders) > 1  # the batch order still changes from epoch to epoch
