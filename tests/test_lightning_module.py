"""ASRModule: training, corpus metrics per split, predictions files, checkpoints, inference."""

import math
import pickle

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from asrquant.lightning import ASRModule, corpus_cer, corpus_wer, lr_factor
from asrquant.models import ConformerCTCConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:.*no `val_dataloader`"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),  # Lightning vs new torch
]

SAMPLE_RATE = 16000


class CharTokenizer:
    """Characters of a fixed alphabet; id 0 is the CTC blank (the data-package protocol)."""

    blank_id = 0

    def __init__(self, chars: str = " abcd") -> None:
        self.chars = chars
        self.vocab_size = len(chars) + 1

    def encode(self, text: str) -> list[int]:
        return [self.chars.index(c) + 1 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 1] for i in ids)

    def to_state(self) -> dict:
        return {"chars": self.chars}

    @classmethod
    def from_state(cls, state: dict) -> "CharTokenizer":
        return cls(state["chars"])


TOKENIZER = CharTokenizer()


def tiny_config(**overrides) -> ConformerCTCConfig:
    values = dict(
        vocab_size=TOKENIZER.vocab_size,
        d_model=32,
        num_layers=1,
        num_heads=2,
        ffn_dim=64,
        conv_kernel_size=5,
        subsampling_channels=8,
        dropout=0.0,
        freq_masks=0,
        time_masks=0,
    )
    return ConformerCTCConfig(**{**values, **overrides})


def tone_word_audio(text: str) -> torch.Tensor:
    """Each letter a 150 ms tone of its own pitch, each space 100 ms of silence, faint noise."""
    pitch = {"a": 300.0, "b": 700.0, "c": 1500.0, "d": 3000.0}
    pieces = [torch.zeros(800)]
    for char in text:
        if char == " ":
            pieces.append(torch.zeros(1600))
        else:
            t = torch.arange(2400) / SAMPLE_RATE
            pieces.append(0.5 * torch.sin(2 * math.pi * pitch[char] * t))
    pieces.append(torch.zeros(800))
    audio = torch.cat(pieces)
    generator = torch.Generator().manual_seed(len(text))
    return audio + 0.01 * torch.randn(audio.shape, generator=generator)


def make_batch(texts: list[str], ids: list[str] | None = None) -> dict:
    """What the data package's collate produces, built by hand."""
    waveforms = [tone_word_audio(t) for t in texts]
    targets = [torch.tensor(TOKENIZER.encode(t)) for t in texts]
    audio = torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True)
    return {
        "audio": audio,
        "audio_lens": torch.tensor([w.numel() for w in waveforms]),
        "targets": torch.nn.utils.rnn.pad_sequence(targets, batch_first=True),
        "target_lens": torch.tensor([len(t) for t in targets]),
        "texts": list(texts),
        "ids": ids or [f"utt{i}" for i in range(len(texts))],
    }


def loader(batches: list[dict]) -> DataLoader:
    return DataLoader(batches, batch_size=None)


def trainer(**overrides) -> L.Trainer:
    settings = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**settings, **overrides})


def tiny_module(**overrides) -> ASRModule:
    torch.manual_seed(0)
    return ASRModule(tiny_config(), TOKENIZER, **overrides)


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if outputs:  # empty when the step was skipped
            self.losses.append(float(outputs["loss"]))


TRANSCRIPTS = ["ab c", "d ba", "c a d", "bd"]


@pytest.fixture
def one_thread():
    """Timed tests run on one thread: the machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_model_overfits_four_utterances_and_decodes_them_exactly(one_thread):
    module = tiny_module(lr=5e-3, warmup_steps=20, weight_decay=0.0)
    batch = make_batch(TRANSCRIPTS)
    module.model.fit_normalizer(tone_word_audio(t) for t in TRANSCRIPTS)
    recorder = LossRecorder()
    trainer(max_steps=200, callbacks=[recorder], gradient_clip_val=1.0).fit(
        module, loader([batch] * 200)
    )
    assert len(recorder.losses) == 200
    assert recorder.losses[-1] < 0.05 * recorder.losses[0], recorder.losses[::20]
    assert module.transcribe([tone_word_audio(t) for t in TRANSCRIPTS]) == TRANSCRIPTS


# ------------------------------------------------------------------------ learning-rate schedule


def test_warmup_is_linear_up_to_peak():
    factors = [
        lr_factor(s, schedule="noam", warmup_steps=4, total_steps=None, min_lr_ratio=0.0)
        for s in range(4)
    ]
    assert factors == [0.25, 0.5, 0.75, 1.0]


def test_noam_decays_with_inverse_square_root_of_step():
    def noam(step):
        return lr_factor(step, schedule="noam", warmup_steps=100, total_steps=None, min_lr_ratio=0)

    assert noam(399) == pytest.approx(0.5)
    assert noam(9999) == pytest.approx(0.1)


def test_cosine_decays_to_min_lr_ratio_at_total_steps_and_stays():
    def cosine(step):
        return lr_factor(
            step, schedule="cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1
        )

    assert cosine(9) == 1.0
    assert cosine(59) == pytest.approx(0.55)
    assert cosine(109) == pytest.approx(0.1)
    assert cosine(500) == pytest.approx(0.1)
    values = [cosine(s) for s in range(9, 120)]
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("schedule, total_steps", [("noam", None), ("cosine", 20)])
def test_scheduler_steps_once_per_optimizer_step_and_lr_is_logged(schedule, total_steps):
    module = tiny_module(lr=1e-3, warmup_steps=2, schedule=schedule, total_steps=total_steps)
    fit = trainer(max_steps=5)
    fit.fit(module, loader([make_batch(TRANSCRIPTS[:2])] * 5))
    expected = 1e-3 * lr_factor(
        5, schedule=schedule, warmup_steps=2, total_steps=total_steps, min_lr_ratio=0.0
    )
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected)
    assert fit.callback_metrics["train/lr"] == pytest.approx(
        1e-3
        * lr_factor(4, schedule=schedule, warmup_steps=2, total_steps=total_steps, min_lr_ratio=0.0)
    )
    assert "train/loss" in fit.callback_metrics


# ------------------------------------------------------------------- validation and test metrics


def read_predictions(path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id\tref\thyp"
    return [line.split("\t") for line in lines[1:]]


def test_validation_logs_corpus_metrics_over_whole_split_and_writes_predictions(tmp_path):
    module = tiny_module(predictions_dir=tmp_path)
    val_batches = [make_batch(["ab c", "d"], ["v0", "v1"]), make_batch(["c a d"], ["v2"])]
    fit = trainer(max_steps=1, num_sanity_val_steps=1)
    fit.fit(module, loader([make_batch(TRANSCRIPTS)]), loader(val_batches))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["val_dev_epoch0.tsv"]  # no sanity file
    rows = read_predictions(tmp_path / "val_dev_epoch0.tsv")
    assert [(r[0], r[1]) for r in rows] == [("v0", "ab c"), ("v1", "d"), ("v2", "c a d")]
    refs, hyps = [r[1] for r in rows], [r[2] for r in rows]
    metrics = fit.callback_metrics
    assert float(metrics["val/wer"]) == pytest.approx(corpus_wer(refs, hyps).rate)
    assert float(metrics["val/cer"]) == pytest.approx(corpus_cer(refs, hyps).rate)
    assert float(metrics["val/loss"]) > 0
    assert module.last_results["dev"]["words"] == 6
    assert module.last_results["dev"]["utterances"] == 3


def test_several_test_loaders_log_metrics_prefixed_by_set_name(tmp_path):
    module = tiny_module(predictions_dir=tmp_path, test_set_names=["clean", "other"])
    clean = loader([make_batch(["ab c", "d"], ["c0", "c1"])])
    other = loader([make_batch(["bd"], ["o0"]), make_batch(["c a d", "a"], ["o1", "o2"])])
    metrics = trainer().test(module, [clean, other], verbose=False)
    logged = {k: v for loader_metrics in metrics for k, v in loader_metrics.items()}

    for name, num_utterances in [("clean", 2), ("other", 3)]:
        rows = read_predictions(tmp_path / f"test_{name}_epoch0.tsv")
        assert len(rows) == num_utterances
        refs, hyps = [r[1] for r in rows], [r[2] for r in rows]
        assert logged[f"test/{name}/wer"] == pytest.approx(corpus_wer(refs, hyps).rate)
        assert logged[f"test/{name}/cer"] == pytest.approx(corpus_cer(refs, hyps).rate)
        assert module.last_results[name]["utterances"] == num_utterances
    assert "test/wer" not in logged


def test_single_test_loader_logs_unprefixed_metrics():
    module = tiny_module()
    metrics = trainer().test(module, loader([make_batch(["ab c"])]), verbose=False)
    assert {"test/wer", "test/cer", "test/loss"} <= set(metrics[0])
    assert set(module.last_results) == {"test"}


def empty_batch() -> dict:
    """What the collate returns when every item of a batch failed to load."""
    batch = make_batch(["a"])
    return {key: value[:0] for key, value in batch.items()}


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")
def test_empty_batches_are_skipped_in_training_and_evaluation():
    module = tiny_module()
    recorder = LossRecorder()
    fit = trainer(max_epochs=1, callbacks=[recorder])
    fit.fit(module, loader([empty_batch(), make_batch(["ab"]), make_batch(["c"])]))
    assert len(recorder.losses) == 2
    fit.test(module, loader([empty_batch(), make_batch(["ab c"])]), verbose=False)
    assert module.last_results["test"]["utterances"] == 1


def test_too_few_test_set_names_is_an_error():
    module = tiny_module(test_set_names=["only"])
    two_loaders = [loader([make_batch(["a"])]), loader([make_batch(["b"])])]
    with pytest.raises(ValueError, match=r"test dataloader 1 has no name"):
        trainer().test(module, two_loaders, verbose=False)


def test_normalize_is_applied_to_references_and_hypotheses(tmp_path):
    module = tiny_module(normalize=lambda s: "<" + s + ">", predictions_dir=tmp_path)
    trainer().test(module, loader([make_batch(["ab c", "d"])]), verbose=False)
    for _utt_id, ref, hyp in read_predictions(tmp_path / "test_test_epoch0.tsv"):
        assert ref.startswith("<") and ref.endswith(">")
        assert hyp.startswith("<") and hyp.endswith(">")


# --------------------------------------------------------------------- checkpoints and inference


def trained_checkpoint(tmp_path) -> tuple[ASRModule, str]:
    module = tiny_module()
    module.model.fit_normalizer(tone_word_audio(t) for t in TRANSCRIPTS)
    fit = trainer(max_steps=3)
    fit.fit(module, loader([make_batch(TRANSCRIPTS)] * 3))
    path = str(tmp_path / "model.ckpt")
    fit.save_checkpoint(path)
    return module, path


def test_checkpoint_round_trip_gives_identical_log_probs(tmp_path):
    module, path = trained_checkpoint(tmp_path)
    loaded = ASRModule.load_for_inference(path, tokenizer_from_state=CharTokenizer.from_state)

    assert not loaded.training
    assert loaded.model.config == module.model.config
    assert loaded.tokenizer.to_state() == TOKENIZER.to_state()
    assert torch.equal(loaded.model.feat_mean, module.model.feat_mean)
    batch = make_batch(TRANSCRIPTS)
    module.eval()
    with torch.no_grad():
        expected, expected_lens = module(batch["audio"], batch["audio_lens"])
        actual, actual_lens = loaded(batch["audio"], batch["audio_lens"])
    assert torch.equal(actual, expected) and torch.equal(actual_lens, expected_lens)


def test_checkpoint_with_arbitrary_pickled_objects_is_refused(tmp_path):
    _, path = trained_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["extra"] = CharTokenizer()  # a class instance: only full unpickling could load it
    torch.save(checkpoint, path)
    with pytest.raises(pickle.UnpicklingError):
        ASRModule.load_for_inference(path, tokenizer_from_state=CharTokenizer.from_state)


def test_checkpoint_missing_keys_is_refused_naming_them(tmp_path):
    path = tmp_path / "bare.ckpt"
    torch.save({"state_dict": tiny_module().state_dict()}, path)
    with pytest.raises(ValueError, match=r"missing \['model_config', 'tokenizer_state'\]"):
        ASRModule.load_for_inference(path, tokenizer_from_state=CharTokenizer.from_state)


def test_transcribe_matches_decoding_each_utterance_alone():
    module = tiny_module()
    waveforms = [tone_word_audio(t) for t in TRANSCRIPTS]
    together = module.transcribe(waveforms, batch_size=3)
    assert together == [module.transcribe([w])[0] for w in waveforms]
    assert module.training  # mode restored


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(schedule="linear"), r"schedule='linear' is invalid; allowed: \['noam', 'cosine'\]"),
        (dict(min_lr_ratio=1.5), "min_lr_ratio=1.5"),
        (dict(warmup_steps=10, total_steps=5), "total_steps=5 must be > warmup_steps=10"),
    ],
)
def test_bad_settings_are_refused_naming_them(overrides, message):
    with pytest.raises(ValueError, match=message):
        ASRModule(tiny_config(), TOKENIZER, **overrides)


def test_tokenizer_and_model_vocab_must_agree():
    with pytest.raises(ValueError, match="vocab_size=6 but model_config.vocab_size=9"):
        ASRModule(tiny_config(vocab_size=9), TOKENIZER)
