"""Training augmentation (asrquant/data/augment.py): speed perturbation changes length and
pitch by the factor, gain and noise do what the dB say, draws are a function of (seed, epoch,
index) alone, dev/test audio is never touched, and with augmentation off the training audio
is what it was before augmentation existed."""

import json
import math
import re

import numpy as np
import pytest
import soundfile
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from omegaconf import OmegaConf

from asrquant.data.audio import read_audio
from asrquant.data.augment import (
    AUGMENT_KEYS,
    Augmentation,
    AugmentedDataset,
    add_noise,
    apply_gain,
    augmentation_of,
    speed_perturb,
)
from asrquant.data.datamodule import ASRDataModule, DurationBatchSampler, EpochTaggedBatches
from asrquant.data.readers import UtteranceDataset
from asrquant.data.tokenizer import CharTokenizer
from asrquant.runs.blocks import build_datamodule

SR = 16000


def tone(seconds=1.0, frequency=1000.0, amplitude=0.3):
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amplitude * torch.sin(2 * math.pi * frequency * t)).float()


def rms_db(x):
    return 10 * math.log10(float(x.double().pow(2).mean()))


def peak_hz(x):
    spectrum = np.abs(np.fft.rfft(x.numpy()))
    return float(np.argmax(spectrum)) * SR / len(x)


# --- the math ------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.5, 0.9, 1.0, 1.1, 2.0])
def test_speed_factor_f_makes_n_samples_about_n_over_f(factor):
    n = 16000
    out = speed_perturb(tone(n / SR), factor)
    assert abs(len(out) - round(n / factor)) <= 1
    assert out.dtype == torch.float32


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_factor_f_multiplies_pitch_by_f(factor):
    out = speed_perturb(tone(1.0, frequency=1000.0), factor)
    assert peak_hz(out) == pytest.approx(1000.0 * factor, abs=2.0)


def test_speed_factor_one_returns_the_waveform_itself():
    x = tone(0.3)
    assert speed_perturb(x, 1.0) is x


@pytest.mark.parametrize("gain_db", [-12.0, -6.0, 0.0, 3.5, 6.0])
def test_gain_changes_rms_by_the_db_asked(gain_db):
    x = tone(0.5)
    assert rms_db(apply_gain(x, gain_db)) - rms_db(x) == pytest.approx(gain_db, abs=1e-4)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_noise_at_snr_s_gives_measured_snr_s(snr_db):
    x = tone(0.5)
    noise = torch.randn(len(x), generator=torch.Generator().manual_seed(1))
    out = add_noise(x, noise, snr_db)
    assert rms_db(x) - rms_db(out - x) == pytest.approx(snr_db, abs=1e-3)


def test_noise_is_not_added_to_silence():
    silence = torch.zeros(800)
    assert torch.equal(add_noise(silence, torch.randn(800), 10.0), silence)


def test_augmentation_noise_snr_lies_in_the_range_and_varies_by_utterance():
    aug = Augmentation(noise_snr_db=[10, 30])
    x = tone(0.5)
    snrs = [rms_db(x) - rms_db(aug(x, seed=0, epoch=0, index=i) - x) for i in range(20)]
    assert all(10 - 1e-3 <= s <= 30 + 1e-3 for s in snrs)
    assert max(snrs) - min(snrs) > 5  # drawn per utterance, not one SNR for all


def test_augmentation_gain_lies_in_the_range_and_keeps_the_length():
    aug = Augmentation(gain_db=[-6, 6])
    x = tone(0.5)
    outs = [aug(x, seed=0, epoch=0, index=i) for i in range(20)]
    gains = [rms_db(o) - rms_db(x) for o in outs]
    assert all(-6 - 1e-4 <= g <= 6 + 1e-4 for g in gains) and max(gains) - min(gains) > 3
    assert all(len(o) == len(x) for o in outs)


def test_speed_factors_are_chosen_uniformly_per_utterance():
    aug = Augmentation(speed_factors=[0.9, 1.0, 1.1])
    x = tone(0.1)
    lengths = [len(aug(x, seed=0, epoch=0, index=i)) for i in range(300)]
    counts = {n: lengths.count(n) for n in sorted(set(lengths))}
    assert sorted(counts) == [math.ceil(1600 / 1.1), 1600, math.ceil(1600 / 0.9)]
    assert all(70 <= c <= 130 for c in counts.values()), counts


def test_prob_is_the_share_of_utterances_augmented():
    aug = Augmentation(gain_db=[6, 6], prob=0.3)
    x = tone(0.05)
    changed = [not torch.equal(aug(x, seed=0, epoch=0, index=i), x) for i in range(400)]
    assert 0.22 <= sum(changed) / 400 <= 0.38


def test_noise_from_a_manifest_is_a_stretch_of_its_files_at_the_snr(tmp_path):
    noise = 0.1 * np.sin(2 * np.pi * 3000 * np.arange(4000) / SR)  # 0.25 s: looped
    soundfile.write(tmp_path / "hum.wav", noise.astype(np.float32), SR)
    (tmp_path / "noise.jsonl").write_text(json.dumps({"audio_filepath": "hum.wav"}) + "\n")
    aug = Augmentation(noise_snr_db=[5, 5], noise_manifest=str(tmp_path / "noise.jsonl"))
    x = tone(1.0, frequency=500.0)
    out = aug(x, seed=0, epoch=0, index=0)
    assert rms_db(x) - rms_db(out - x) == pytest.approx(5.0, abs=1e-3)
    assert peak_hz(out - x) == pytest.approx(3000.0, abs=2.0)


# --- determinism -----------------------------------------------------------------------------

ALL_ON = {"speed_factors": [0.9, 1.0, 1.1], "gain_db": [-6, 6], "noise_snr_db": [10, 30]}


def test_same_seed_epoch_and_index_give_identical_audio_and_others_differ():
    aug = Augmentation(**ALL_ON)
    x = tone(0.3)
    first = aug(x, seed=7, epoch=2, index=5)
    assert torch.equal(first, aug(x, seed=7, epoch=2, index=5))
    for other in ({"seed": 8, "epoch": 2, "index": 5}, {"seed": 7, "epoch": 3, "index": 5},
                  {"seed": 7, "epoch": 2, "index": 6}):
        out = aug(x, **other)
        assert len(out) != len(first) or not torch.equal(out, first), other


def test_augmentation_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    Augmentation(**ALL_ON)(tone(0.2), seed=0, epoch=0, index=0)
    assert torch.equal(torch.rand(3), expected)


def test_each_augmentation_draws_apart_from_the_others():
    """Turning gain on does not change which speed factor or SNR an utterance gets."""
    x = tone(0.2)
    without_gain = Augmentation(speed_factors=[0.9, 1.1], noise_snr_db=[10, 30])
    with_gain = Augmentation(speed_factors=[0.9, 1.1], noise_snr_db=[10, 30], gain_db=[3, 3])
    for index in range(5):
        a = without_gain(x, seed=0, epoch=0, index=index)
        b = with_gain(x, seed=0, epoch=0, index=index)
        assert torch.allclose(apply_gain(a, 3.0), b, atol=1e-6)


# --- the DataModule ------------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path, tone):
    """Manifests of 0.2-0.45 s tones: train (6), val (2), test (2)."""

    def manifest(name, n):
        lines = []
        for i in range(n):
            seconds = 0.2 + 0.05 * i
            tone(tmp_path / f"{name}{i}.wav", seconds=seconds, frequency=300.0 + 50 * i)
            lines.append({"audio_filepath": f"{name}{i}.wav", "duration": seconds,
                          "text": "hi", "id": f"{name}{i}"})
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return path

    return {"train": manifest("train", 6), "val": manifest("val", 2),
            "test": manifest("test", 2), "dir": tmp_path}


def datamodule(corpus, augment=None, **kwargs):
    dm = ASRDataModule(CharTokenizer(), train=corpus["train"], val=corpus["val"],
                       test=corpus["test"], max_batch_seconds=1.0, seed=3, augment=augment,
                       **kwargs)
    dm.setup()
    return dm


def audio_by_id(loader):
    """{utterance id: its unpadded waveform} over one pass of a loader."""
    out = {}
    for batch in loader:
        for row, utt_id in enumerate(batch["ids"]):
            out[utt_id] = batch["audio"][row, : batch["audio_lens"][row]].clone()
    return out


def test_off_the_train_waveform_is_bit_identical_to_before(corpus):
    before = audio_by_id(datamodule(corpus).train_dataloader())  # no augment argument at all
    all_null = {k: None for k in AUGMENT_KEYS if k != "prob"}
    for off in (augmentation_of(None), augmentation_of(all_null), Augmentation(),
                Augmentation(gain_db=[-6, 6], prob=0.0)):
        dm = datamodule(corpus, augment=off)
        assert dm.augment is None
        loader = dm.train_dataloader()
        assert type(loader.dataset) is UtteranceDataset
        assert type(loader.batch_sampler) is DurationBatchSampler
        after = audio_by_id(loader)
        assert after.keys() == before.keys()
        assert all(torch.equal(after[k], before[k]) for k in before)
    for k, waveform in before.items():
        assert torch.equal(waveform, read_audio(corpus["dir"] / f"{k}.wav"))


def test_on_train_audio_changes_while_dev_and_test_audio_stays_exact(corpus):
    dm = datamodule(corpus, augment=Augmentation(**ALL_ON))
    train = audio_by_id(dm.train_dataloader())
    assert any(not torch.equal(w, read_audio(corpus["dir"] / f"{k}.wav"))
               for k, w in train.items())
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        assert type(loader.dataset) is UtteranceDataset
        for k, waveform in audio_by_id(loader).items():
            assert torch.equal(waveform, read_audio(corpus["dir"] / f"{k}.wav")), k


def test_train_audio_is_the_same_with_workers_and_changes_with_the_epoch(corpus):
    augment = Augmentation(**ALL_ON)
    in_process = datamodule(corpus, augment=augment).train_dataloader()
    in_workers = datamodule(corpus, augment=augment, num_workers=1).train_dataloader()
    assert in_workers.persistent_workers  # the workers outlive the epoch: epoch must travel
    epochs = []
    for epoch in (0, 1):
        _set_sampler_epoch(in_process, epoch)  # what Lightning calls at each epoch start
        _set_sampler_epoch(in_workers, epoch)
        a, b = audio_by_id(in_process), audio_by_id(in_workers)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        epochs.append(a)
    assert in_process.batch_sampler.epoch == 1
    assert any(len(epochs[0][k]) != len(epochs[1][k]) or not torch.equal(epochs[0][k],
                                                                          epochs[1][k])
               for k in epochs[0])


def test_speed_perturbed_batches_keep_the_padded_seconds_bound(corpus):
    # At factor 0.5 every utterance is twice as long: batches are formed from that length.
    dm = datamodule(corpus, augment=Augmentation(speed_factors=[0.5]))
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, EpochTaggedBatches)
    source = dm.datasets["train"].durations()
    assert loader.dataset.durations() == pytest.approx([2 * d for d in source])
    batches = list(loader)
    assert sum(len(b["ids"]) for b in batches) == 6
    for batch in batches:
        padded_seconds = batch["audio"].shape[0] * batch["audio"].shape[1] / SR
        assert padded_seconds <= 1.0 + 1e-9 or batch["audio"].shape[0] == 1
    # From the source durations the same bound would be broken: 3 x 0.3 s -> 3 x 0.6 s.
    unstretched = DurationBatchSampler(source, 1.0, seed=3)
    assert max(len(b) * 2 * max(source[i] for i in b) for b in unstretched) > 1.0


def test_augmented_dataset_wants_epoch_and_index():
    dataset = AugmentedDataset(UtteranceDataset([]), Augmentation(gain_db=[0, 1]))
    with pytest.raises(TypeError, match=r"indexed by \(epoch, index\), got 0"):
        dataset[0]


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, message", [
    ({"speed_factors": [0.3, 1.0]}, "augment.speed_factors=[0.3, 1.0] is invalid; allowed: null "
     "or a non-empty list of numbers in 0.5..2, each a multiple of 0.01 (e.g. [0.9, 1.0, 1.1])"),
    ({"speed_factors": [0.905]}, "augment.speed_factors=[0.905] is invalid; allowed: null or a "
     "non-empty list"),
    ({"speed_factors": []}, "augment.speed_factors=[] is invalid; allowed: null or a non-empty"),
    ({"speed_factors": "fast"}, "augment.speed_factors='fast' is invalid; allowed: null or a "),
    ({"gain_db": [6, -6]}, "augment.gain_db=[6, -6] is invalid; allowed: null or [low, high] in "
     "dB, two numbers with low <= high"),
    ({"gain_db": [3]}, "augment.gain_db=[3] is invalid; allowed: null or [low, high] in dB"),
    ({"noise_snr_db": ["a", 1]}, "augment.noise_snr_db=['a', 1] is invalid; allowed: null or "
     "[low, high] in dB"),
    ({"prob": 1.5}, "augment.prob=1.5 is invalid; allowed: a number >= 0 and <= 1"),
    ({"prob": True}, "augment.prob=True is invalid; allowed: a number >= 0 and <= 1"),
    ({"speed": [0.9]}, "augment got unknown key(s) ['speed']; allowed: ['gain_db', "
     "'noise_manifest', 'noise_snr_db', 'prob', 'speed_factors']"),
    ({"noise_manifest": "noise.jsonl"}, "augment.noise_manifest='noise.jsonl' is invalid; "
     "allowed: null while noise_snr_db is null"),
    ({"noise_snr_db": [5, 20], "noise_manifest": "/no/such/noise.jsonl"},
     "augment.noise_manifest='/no/such/noise.jsonl' is not a file"),
])
def test_config_errors_name_the_key_the_value_and_what_is_allowed(config, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        augmentation_of(config)


def test_a_bad_noise_file_is_named_with_its_manifest_line(tmp_path):
    (tmp_path / "noise.jsonl").write_text('{"audio_filepath": "gone.wav"}\n')
    with pytest.raises(ValueError, match=r"^augment\.noise_manifest='.*noise\.jsonl' line 1: "
                                         r".*gone\.wav: missing file$"):
        augmentation_of({"noise_snr_db": [5, 20], "noise_manifest": str(tmp_path / "noise.jsonl")})


def test_train_config_is_off_by_default_and_on_by_override(cfg_of, corpus):
    def augmentation(overrides):
        return augmentation_of(OmegaConf.to_container(cfg_of("train", overrides).augment))

    assert augmentation([]) is None
    assert augmentation(["augment=speed"]).speed_factors == (0.9, 1.0, 1.1)
    on = augmentation(["augment.speed_factors=[0.9,1.0,1.1]", "augment.gain_db=[-6,6]"])
    assert (on.speed_factors, on.gain_db, on.noise_snr_db) == ((0.9, 1.0, 1.1), (-6, 6), None)
    with pytest.raises(ValueError, match=r"^augment\.prob=2 is invalid"):
        augmentation(["augment.prob=2"])

    sources = {"train": corpus["train"], "val": None, "test": None, "extra_test": {}}
    cfg = {"data": {}, "seed": 4, "augment": {"gain_db": [-6, 6]}}
    built = build_datamodule(cfg, CharTokenizer(), sources, "skip")
    assert built.augment.gain_db == (-6, 6) and built.seed == 4
    assert build_datamodule({"data": {}}, CharTokenizer(), sources, "skip").augment is None
