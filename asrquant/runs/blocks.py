"""The building blocks of runs: data sources of a `conf/data` config, tokenizer, feature
normaliser, DataModule, checkpoint loading (safely), the module of a checkpoint, loggers,
callbacks and the Trainer. `train`, `evaluate`, `export` and `search` are made of these."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from asrquant.checks import check_choice, check_keys, config_key
from asrquant.data.audio import SAMPLE_RATE
from asrquant.data.augment import augmentation_of
from asrquant.data.datamodule import ASRDataModule
from asrquant.data.readers import BadDataReport, read_utterances, validate_utterances
from asrquant.data.synthetic import build_synthetic_corpus
from asrquant.data.text import normalize_text
from asrquant.data.tokenizer import CharTokenizer, tokenizer_from_state, train_sentencepiece
from asrquant.export import float_checkpoint
from asrquant.io import model_path
from asrquant.lightning.callbacks import QuantizationCallback, restore_quantization
from asrquant.lightning.module import INFERENCE_CHECKPOINT_KEYS, ASRModule
from asrquant.models.sizes import size_config
from asrquant.runs.common import calibration_of, recipe_of

DATA_KINDS = ("synthetic", "manifest", "librispeech")
TOKENIZER_KINDS = ("sentencepiece", "char")
LOGGER_KINDS = ("csv", "tensorboard")


# ----------------------------------------------------------------------------------- data

def data_kind(data: dict) -> str:
    kind = data.get("kind")
    check_choice("data.kind", kind, DATA_KINDS)
    return kind


DEV_SPLITS = ("utterance", "speaker")


def _in_share(key: str, fraction: float) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 10_000 < fraction * 10_000


def dev_split_of(data: dict) -> str:
    by = data.get("dev_split", "utterance")
    check_choice("data.dev_split", by, DEV_SPLITS)
    return by


def split_dev(utterances, fraction: float, by: str = "utterance", seed: int = 0):
    """(train, dev) carved deterministically out of training data.

    by="utterance": each utterance is dev with probability `fraction` (a hash of its id).
    by="speaker": whole speakers are dev, round(fraction * speakers) of them (at least one),
    picked by a hash of the speaker with `seed`, so no dev speaker is heard in training:
    a speaker-independent dev WER. Needs every utterance's `speaker` (a manifest's "speaker"
    field)."""
    if by == "utterance":
        dev = {u.id for u in utterances if _in_share(u.id, fraction)}
    else:
        missing = [u.id for u in utterances if not u.speaker]
        if missing:
            raise ValueError(f"data.dev_split='speaker' needs a speaker for every training "
                             f"utterance; {len(missing)} have none (e.g. {missing[:3]}): add a "
                             "\"speaker\" field to the manifest, or use dev_split=utterance")
        speakers = sorted({u.speaker for u in utterances})
        ranked = sorted(speakers, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
        n_dev = max(1, round(fraction * len(speakers)))
        if n_dev >= len(speakers):
            raise ValueError(f"data.dev_fraction={fraction} leaves no training speaker out of "
                             f"{len(speakers)}; allowed: a share that keeps some for training")
        dev_speakers = set(ranked[:n_dev])
        dev = {u.id for u in utterances if u.speaker in dev_speakers}
    return ([u for u in utterances if u.id not in dev], [u for u in utterances if u.id in dev])


def data_sources(data: dict) -> dict[str, Any]:
    """{"train", "val", "test", "extra_test"} utterance sources of a `conf/data/*` config."""
    kind = data_kind(data)
    if kind == "synthetic":
        paths = build_synthetic_corpus(**(data.get("synthetic") or {}))
        return {"train": paths["train"], "val": paths["dev"], "test": paths["test"],
                "extra_test": {"heldout_voices": paths["test_heldout_voices"]}}
    if kind == "manifest":
        sources = {"train": data.get("train"), "val": data.get("val"), "test": data.get("test"),
                   "extra_test": dict(data.get("extra_test") or {})}
    else:  # librispeech
        root = data.get("root")
        if not root:
            raise ValueError("data.root is missing: the folder that holds "
                             "train-clean-100/, dev-clean/, ...")

        def ls(splits):
            return None if not splits else {"librispeech": root, "splits": list(splits)}

        tests = list(data.get("test_splits") or [])
        sources = {"train": ls(data.get("train_splits")), "val": ls(data.get("val_splits")),
                   "test": ls(tests[:1]),
                   "extra_test": {s: ls([s]) for s in tests[1:]}}
    fraction = float(data.get("dev_fraction") or 0.0)
    if sources["val"] is None and fraction > 0 and sources["train"] is not None:
        # Bad manifest lines met here are handled by the training policy and reported at the
        # end with the rest (build_datamodule takes over this report).
        report = BadDataReport()
        utterances = read_utterances(sources["train"], data.get("policy", "skip"), report)
        train, dev = split_dev(utterances, fraction, dev_split_of(data),
                               int(data.get("dev_seed", 0)))
        sources["train"], sources["val"], sources["bad_data"] = train, dev, report
    return sources


def tokenizer_kind(tok: dict) -> str:
    kind = tok.get("kind", "sentencepiece")
    check_choice("tokenizer.kind", kind, TOKENIZER_KINDS)
    return kind


def build_tokenizer(tok: dict, train_source) -> Any:
    if tokenizer_kind(tok) == "char":
        return CharTokenizer()
    texts = [normalize_text(u.text) for u in read_utterances(train_source, "skip")]
    return train_sentencepiece(texts, vocab_size=int(tok.get("vocab_size", 128)),
                               model_type=tok.get("model_type", "unigram"))


def fit_normalizer(module: ASRModule, train_source, n: int, seed: int) -> None:
    utts = validate_utterances(read_utterances(train_source, "skip"), "skip", BadDataReport())
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(utts), generator=g)[:n].tolist()
    module.model.fit_normalizer(utts[i].load_audio(SAMPLE_RATE, True) for i in order)


# ------------------------------------------------------------------------------- pieces

def build_datamodule(cfg: dict, tokenizer, sources: dict, policy: str) -> ASRDataModule:
    data = cfg["data"]
    datamodule = ASRDataModule(
        tokenizer=tokenizer,
        train=sources["train"],
        val=sources["val"],
        test=sources["test"],
        extra_test=sources["extra_test"],
        max_batch_seconds=float(data.get("max_batch_seconds", 60)),
        num_workers=int(data.get("num_workers", 0)),
        policy=policy,
        max_duration=data.get("max_duration"),
        seed=int(cfg.get("seed", 0)),
        augment=augmentation_of(cfg.get("augment")),  # training batches only
    )
    datamodule.report.update(sources.get("bad_data") or BadDataReport())
    return datamodule


OPTIM_KEYS = ("lr", "weight_decay", "betas", "warmup_steps", "schedule", "total_steps",
              "min_lr_ratio")


def optim_kwargs(optim: dict) -> dict:
    """The `optim` config as ASRModule keyword arguments (ASRModule checks the values)."""
    check_keys("optim", optim, OPTIM_KEYS)
    return dict(optim)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint, loaded without executing code (weights_only=True), or a float
    model file (`.safetensors`, as shipped in models/; "pretrained:<name>" names one)."""
    path = model_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return float_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {str(path)!r} cannot be loaded safely: {e}") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {str(path)!r} holds a {type(ckpt).__name__}, not a "
                         "checkpoint dict")
    missing = [k for k in INFERENCE_CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks {missing}: not an asrquant ASRModule "
                         "checkpoint")
    for name, t in ckpt["state_dict"].items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"checkpoint {str(path)!r}: tensor {name!r} contains NaN or Inf "
                             "(a diverged run?)")
    return ckpt


def module_from_checkpoint(ckpt: dict, optim: dict | None = None,
                           predictions_dir=None, test_set_names=None,
                           val_set_names=None) -> ASRModule:
    """An ASRModule with the checkpoint's config, tokenizer and weights (fake quantization
    re-attached if it is a QAT checkpoint), ready for more training or for evaluation."""
    tokenizer = tokenizer_from_state(ckpt["tokenizer_state"])
    module = ASRModule(ckpt["model_config"], tokenizer, **optim_kwargs(optim or {}),
                       normalize=normalize_text, predictions_dir=predictions_dir,
                       test_set_names=test_set_names, val_set_names=val_set_names)
    restore_quantization(module, ckpt)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:  # names every missing, unexpected and mis-shaped tensor
        raise ValueError(f"checkpoint weights do not fit its own model_config "
                         f"{ckpt['model_config']}: {e}") from None
    return module


def check_resumable(resumed: dict, module: ASRModule, path: Path) -> None:
    """The run folder's last.ckpt must come from the same model and tokenizer as this run."""
    have, want = resumed["model_config"], module.model.config.to_dict()
    diff = {k: (have.get(k), want.get(k)) for k in sorted(set(have) | set(want))
            if have.get(k) != want.get(k)}
    if diff or resumed["tokenizer_state"] != module.tokenizer.to_state():
        what = f"model config differs {diff}" if diff else "tokenizer differs"
        raise ValueError(f"cannot resume from {str(path)!r}: it was written by another model "
                         f"({what}; (checkpoint, this run)); use a new run folder, or "
                         "resume=false to start over in this one")


def make_loggers(cfg: dict, run_dir: Path) -> list:
    kinds = cfg.get("logger") or {"kind": "csv"}
    kinds = kinds.get("kinds") or [kinds.get("kind", "csv")]
    loggers = []
    for kind in kinds:
        if kind == "csv":
            loggers.append(CSVLogger(run_dir, name="logs", version=""))
        elif kind == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir, name="tb", version=""))
        else:
            raise ValueError(f"logger kind {kind!r} is invalid; allowed: {list(LOGGER_KINDS)}")
    return loggers


def make_callbacks(cfg: dict, run_dir: Path) -> list:
    """The `callbacks` config group: checkpointing, early stopping, lr monitor."""
    ccfg = cfg.get("callbacks") or {}
    check_keys("callbacks", ccfg, ("checkpoint", "early_stopping", "lr_monitor"))
    ck = {"monitor": "val/wer", "mode": "min", "save_top_k": 1, "save_last": True,
          **(ccfg.get("checkpoint") or {})}
    save_last = ck.pop("save_last")
    out = [ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best",
                           auto_insert_metric_name=False, save_last=False, **ck)]
    if save_last:
        # Lightning's own save_last rewrites last.ckpt only when the monitored metric improves,
        # so a plateau would leave it epochs behind; this one rewrites it after every epoch
        # (atomically), which is what resuming a killed run needs.
        out.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last",
                                   monitor=None, save_top_k=1, every_n_epochs=1,
                                   enable_version_counter=False))
    if ccfg.get("early_stopping"):
        out.append(EarlyStopping(**ccfg["early_stopping"]))
    if ccfg.get("lr_monitor"):
        out.append(LearningRateMonitor(logging_interval="step"))
    return out


def make_trainer(cfg: dict, run_dir: Path, callbacks: list, checkpoints: bool = True):
    tcfg = dict(cfg["trainer"])
    if checkpoints:
        callbacks = [*make_callbacks(cfg, run_dir), *callbacks]
    return L.Trainer(
        default_root_dir=run_dir,
        logger=make_loggers(cfg, run_dir),
        callbacks=callbacks,
        use_distributed_sampler=False,  # the DataModule shards its bucketed batches itself
        enable_checkpointing=checkpoints,
        **tcfg,
    )


def quantization_callbacks(cfg: dict, mode: str) -> list[QuantizationCallback]:
    """[QuantizationCallback] for the config's recipe ([] for float). With `quant_strict`, a
    recipe rule that matches no parameter is an error instead of a warning."""
    recipe = recipe_of(cfg)
    if recipe is None:
        return []
    extra = {"restore": False} if mode == "ptq" else {}
    return [QuantizationCallback(recipe, mode=mode, strict=bool(cfg.get("quant_strict")),
                                 **extra, **calibration_kwargs(cfg))]


def calibration_kwargs(cfg: dict) -> dict:
    """QuantizationCallback's calibration arguments of a config ({} for quant.method=rtn)."""
    calibration = calibration_of(cfg)
    if calibration is None:
        return {}
    return {"calibration": calibration,
            "num_calibration": int((cfg.get("calib") or {}).get("num_utterances", 128))}


def names_of_test_sets(sources: dict) -> list[str]:
    """Names of the test sets of `data_sources`, in test_dataloader order."""
    return (["test"] if sources["test"] is not None else []) + list(sources["extra_test"])


def model_config_of(model: dict, vocab_size: int):
    """The ConformerCTCConfig of a `conf/model` config: its named size, fields overridden."""
    fields = {k: v for k, v in model.items() if k != "size"}
    with config_key("model."):
        return size_config(model.get("size"), vocab_size, **fields)
