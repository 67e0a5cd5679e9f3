"""From a config to a trained or evaluated recognizer: data, tokenizer, module, Trainer, results.

The Hydra entry points (asrquant/cli) are thin wrappers around `run_train` and `run_eval`;
anything here can be called from Python with an OmegaConf/dict config of the same shape as
`conf/train.yaml` / `conf/eval.yaml`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from asrquant.data.datamodule import ASRDataModule
from asrquant.data.readers import BadDataReport, read_utterances, validate_utterances
from asrquant.data.synthetic import build_synthetic_corpus
from asrquant.data.text import normalize_text
from asrquant.data.tokenizer import CharTokenizer, tokenizer_from_state, train_sentencepiece
from asrquant.export import export_packed, float_checkpoint, load_quantized
from asrquant.io import atomic_write_json, check_writable, json_safe
from asrquant.lightning.callbacks import (
    QuantizationCallback,
    recipe_of_checkpoint,
    report_metrics,
    restore_quantization,
)
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config
from asrquant.quant import QuantRecipe, build_report, fake_quant_specs, recipe_from_config

DATA_KINDS = ("synthetic", "manifest", "librispeech")


def plain(cfg) -> Any:
    """OmegaConf -> plain python containers (dicts and lists); other values unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return cfg


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------- data

def _split_dev(utterances, fraction: float):
    """Deterministic dev split carved out of training data by a hash of each utterance id."""
    def in_dev(u):
        h = int(hashlib.sha1(u.id.encode()).hexdigest()[:8], 16)
        return h % 10_000 < fraction * 10_000

    dev = [u for u in utterances if in_dev(u)]
    train = [u for u in utterances if not in_dev(u)]
    return train, dev


def data_sources(data: dict) -> dict[str, Any]:
    """{"train", "val", "test", "extra_test"} utterance sources of a `conf/data/*` config."""
    kind = data.get("kind")
    if kind == "synthetic":
        paths = build_synthetic_corpus(**(data.get("synthetic") or {}))
        return {"train": paths["train"], "val": paths["dev"], "test": paths["test"],
                "extra_test": {"heldout_voices": paths["test_heldout_voices"]}}
    if kind == "manifest":
        sources = {"train": data.get("train"), "val": data.get("val"), "test": data.get("test"),
                   "extra_test": dict(data.get("extra_test") or {})}
    elif kind == "librispeech":
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
    else:
        raise ValueError(f"data.kind={kind!r} is invalid; allowed: {list(DATA_KINDS)}")
    fraction = float(data.get("dev_fraction") or 0.0)
    if sources["val"] is None and fraction > 0 and sources["train"] is not None:
        # Bad manifest lines met here are handled by the training policy and reported at the
        # end with the rest (build_datamodule takes over this report).
        report = BadDataReport()
        utterances = read_utterances(sources["train"], data.get("policy", "skip"), report)
        train, dev = _split_dev(utterances, fraction)
        sources["train"], sources["val"], sources["bad_data"] = train, dev, report
    return sources


def build_tokenizer(tok: dict, train_source) -> Any:
    kind = tok.get("kind", "sentencepiece")
    if kind == "char":
        return CharTokenizer()
    if kind == "sentencepiece":
        texts = [normalize_text(u.text) for u in read_utterances(train_source, "skip")]
        return train_sentencepiece(texts, vocab_size=int(tok.get("vocab_size", 128)),
                                   model_type=tok.get("model_type", "unigram"))
    raise ValueError(f"tokenizer.kind={kind!r} is invalid; allowed: ['sentencepiece', 'char']")


def fit_normalizer(module: ASRModule, train_source, n: int, seed: int) -> None:
    utts = validate_utterances(read_utterances(train_source, "skip"), "skip", BadDataReport())
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(utts), generator=g)[:n].tolist()
    module.model.fit_normalizer(utts[i].load_audio(16000, True) for i in order)


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
    )
    datamodule.report.update(sources.get("bad_data") or BadDataReport())
    return datamodule


def optim_kwargs(optim: dict) -> dict:
    allowed = {"lr", "weight_decay", "betas", "warmup_steps", "schedule", "total_steps",
               "min_lr_ratio"}
    unknown = sorted(set(optim) - allowed)
    if unknown:
        raise ValueError(f"optim got unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(optim)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint, loaded without executing code (weights_only=True), or a float
    model file (`.safetensors`, as shipped in models/)."""
    path = Path(path)
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
    missing = [k for k in ("state_dict", "model_config", "tokenizer_state") if k not in ckpt]
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


def _check_resumable(resumed: dict, module: ASRModule, path: Path) -> None:
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
            raise ValueError(f"logger kind {kind!r} is invalid; allowed: ['csv', 'tensorboard']")
    return loggers


def make_callbacks(cfg: dict, run_dir: Path) -> list:
    """The `callbacks` config group: checkpointing, early stopping, lr monitor."""
    ccfg = cfg.get("callbacks") or {}
    allowed = {"checkpoint", "early_stopping", "lr_monitor"}
    unknown = sorted(set(ccfg) - allowed)
    if unknown:
        raise ValueError(f"callbacks got unknown key(s) {unknown}; allowed: {sorted(allowed)}")
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


def recipe_of(cfg: dict) -> QuantRecipe | None:
    quant = cfg.get("quant")
    if not quant:
        return None
    recipe = recipe_from_config(quant)
    return None if recipe.default is None and not recipe.rules else recipe


def quantization_callbacks(cfg: dict, mode: str) -> list[QuantizationCallback]:
    """[QuantizationCallback] for the config's recipe ([] for float). With `quant_strict`, a
    recipe rule that matches no parameter is an error instead of a warning."""
    recipe = recipe_of(cfg)
    if recipe is None:
        return []
    extra = {"restore": False} if mode == "ptq" else {}
    return [QuantizationCallback(recipe, mode=mode, strict=bool(cfg.get("quant_strict")),
                                 **extra)]


def _set_threads(cfg: dict) -> None:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))


def _results_base(cfg: dict, started: float) -> dict:
    return {"status": "ok", "git_revision": git_revision(), "config": cfg,
            "wall_time_s": time.perf_counter() - started}


def _size_fields(module: ASRModule, recipe: QuantRecipe | None) -> dict:
    """Size columns of results.json: the fake quantization attached to `module`, or else
    `recipe`'s plan on it, or float."""
    plan = fake_quant_specs(module) or (recipe.plan(module) if recipe is not None else {})
    t = build_report(module, plan, recipe.name if recipe else "float").totals()
    return {
        "recipe": recipe.to_dict() if recipe else None,
        "size_bytes": t["quantized_bytes"],
        "float32_bytes": t["float32_bytes"],
        "effective_bits": t["effective_bits"] if t["num_quantized"] else 32.0,
        "num_params": t["num_params"],
        "num_quantized": t["num_quantized"],
        "quantized_share": t["quantized_share"],
    }


# --------------------------------------------------------------------------------- runs

def run_train(cfg, run_dir: str | os.PathLike) -> dict:
    """Float training (quant=float) or QAT fine-tuning (any other recipe; usually with
    `init_from` a float checkpoint). Resumes from `run_dir/checkpoints/last.ckpt` if present.
    Writes `run_dir/results.json` (atomically) and returns it."""
    started = time.perf_counter()
    cfg = plain(cfg)
    run_dir = check_writable(run_dir)
    _set_threads(cfg)
    L.seed_everything(int(cfg.get("seed", 0)), workers=True, verbose=False)
    recipe = recipe_of(cfg)
    sources = data_sources(cfg["data"])
    optim = optim_kwargs(cfg.get("optim") or {})
    predictions = run_dir / "predictions"
    test_names = ["test", *sources["extra_test"]] if sources["test"] else list(
        sources["extra_test"])

    last = run_dir / "checkpoints" / "last.ckpt"
    # Read (safely, weights_only) before anything else: it fixes the tokenizer of a resumed run.
    resumed = load_checkpoint(last) if last.is_file() and cfg.get("resume", True) else None

    if cfg.get("init_from"):
        ckpt = load_checkpoint(cfg["init_from"])
        own = recipe_of_checkpoint(ckpt)
        if own is not None:  # continue QAT with the checkpoint's own recipe
            if recipe is not None and recipe.to_dict() != own.to_dict():
                raise ValueError(f"init_from={cfg['init_from']!r} was trained with recipe "
                                 f"{own.name!r}; continue it with quant=float (its own recipe "
                                 f"is kept), or start {recipe.name!r} from a float checkpoint")
            recipe = own
        module = module_from_checkpoint(ckpt, optim, predictions, test_names)
        tokenizer = module.tokenizer
    else:
        tokenizer = (tokenizer_from_state(resumed["tokenizer_state"]) if resumed is not None
                     else build_tokenizer(cfg.get("tokenizer") or {}, sources["train"]))
        fields = {k: v for k, v in cfg["model"].items() if k != "size"}
        model_config = size_config(cfg["model"]["size"], tokenizer.vocab_size, **fields)
        module = ASRModule(model_config, tokenizer, **optim, normalize=normalize_text,
                           predictions_dir=predictions, test_set_names=test_names)
        if resumed is None:  # a resumed run restores the normaliser with the weights
            fit_normalizer(module, sources["train"], int(cfg.get("normalizer_utterances", 500)),
                           int(cfg.get("seed", 0)))
    if resumed is not None:
        _check_resumable(resumed, module, last)
        del resumed

    strict = bool(cfg.get("quant_strict"))  # the recipe may be the checkpoint's own
    callbacks = [QuantizationCallback(recipe, mode="qat", strict=strict)] if recipe else []
    datamodule = build_datamodule(cfg, tokenizer, sources, cfg["data"].get("policy", "skip"))
    trainer = make_trainer(cfg, run_dir, callbacks)
    resume = str(last) if last.is_file() and cfg.get("resume", True) else None
    log = run_dir / "logs" / "metrics.csv"
    if resume and log.is_file():  # Lightning's CSVLogger would delete the earlier rows
        os.replace(log, log.with_name(f"metrics.before-resume-{time.strftime('%Y%m%d-%H%M%S')}"
                                      ".csv"))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)

    results = _results_base(cfg, started)
    # A float model fine-tuned from a checkpoint is the control for QAT runs, not a baseline.
    results["mode"] = "qat" if recipe else ("finetune" if cfg.get("init_from") else "float")
    results["run_dir"] = str(run_dir)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results["best_checkpoint"] = best or None
    results["best_dev_wer"] = json_safe(float(trainer.checkpoint_callback.best_model_score)) \
        if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_score \
        is not None else None
    results["epochs"] = trainer.current_epoch
    results["steps"] = trainer.global_step
    results["last_dev"] = module.last_results.get("dev")
    if cfg.get("test_after_fit", True) and sources["test"] is not None:
        module.last_results = {}
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        results["test"] = {n: module.last_results[n] for n in test_names
                           if n in module.last_results}
    results.update(_size_fields(module, recipe))
    results["bad_data"] = datamodule.bad_data_summary()
    results["wall_time_s"] = time.perf_counter() - started
    atomic_write_json(run_dir / "results.json", json_safe(results))
    return results


def run_eval(cfg, run_dir: str | os.PathLike) -> dict:
    """Evaluate a checkpoint on the test sets, optionally after PTQ with the `quant` recipe.
    Writes `run_dir/results.json` (atomically) and returns it."""
    started = time.perf_counter()
    cfg = plain(cfg)
    run_dir = check_writable(run_dir)
    _set_threads(cfg)
    L.seed_everything(int(cfg.get("seed", 0)), verbose=False)
    recipe = recipe_of(cfg)
    sources = data_sources({**cfg["data"], "dev_fraction": 0.0})
    test_names = ["test", *sources["extra_test"]] if sources["test"] else list(
        sources["extra_test"])
    if cfg.get("packed"):
        return _eval_packed(cfg, run_dir, sources, test_names, started)
    if not cfg.get("ckpt"):
        raise ValueError("ckpt is missing: pass ckpt=/path/to/model.ckpt")
    ckpt = load_checkpoint(cfg["ckpt"])
    module = module_from_checkpoint(ckpt, None, run_dir / "predictions", test_names)
    qat_ckpt = bool(fake_quant_specs(module))
    if qat_ckpt and recipe is not None:
        raise ValueError("this checkpoint is quantization-aware (QAT); evaluate it with "
                         "quant=float (its own recipe is re-attached from the checkpoint)")
    callbacks = quantization_callbacks(cfg, "ptq")
    datamodule = build_datamodule(cfg, module.tokenizer, sources,
                                  cfg["data"].get("eval_policy", "error"))
    trainer = make_trainer(cfg, run_dir, callbacks, checkpoints=False)
    trainer.test(module, datamodule=datamodule)
    results = _results_base(cfg, started)
    results["mode"] = "qat" if qat_ckpt else ("ptq" if recipe else "float")
    results["ckpt"] = str(cfg["ckpt"])
    results["test"] = dict(module.last_results)
    if qat_ckpt:
        recipe = recipe_of_checkpoint(ckpt)
    results.update(_size_fields(module, recipe))
    if callbacks and callbacks[0].report is not None:
        results["quant_metrics"] = report_metrics(callbacks[0].report)
    if cfg.get("export"):  # the packed file of what was evaluated, and its real size
        info = export_packed(ckpt, None if qat_ckpt else recipe, run_dir / "model.safetensors")
        results["file_bytes"] = info["file_bytes"]
    results["wall_time_s"] = time.perf_counter() - started
    atomic_write_json(run_dir / "results.json", json_safe(results))
    return results


def _eval_packed(cfg: dict, run_dir: Path, sources: dict, test_names: list[str],
                 started: float) -> dict:
    """Test WER of a packed safetensors model (asrquant-export), weights kept packed."""
    import json as _json

    if recipe_of(cfg) is not None:
        raise ValueError("packed= models carry their own recipe: evaluate them with quant=float")
    module = load_quantized(cfg["packed"])
    module.normalize = normalize_text
    module.predictions_dir = run_dir / "predictions"
    module.set_names["test"] = test_names
    datamodule = build_datamodule(cfg, module.tokenizer, sources,
                                  cfg["data"].get("eval_policy", "error"))
    trainer = make_trainer(cfg, run_dir, [], checkpoints=False)
    trainer.test(module, datamodule=datamodule)
    from safetensors import safe_open

    with safe_open(str(cfg["packed"]), "pt") as f:
        recipe = QuantRecipe.from_dict(_json.loads(f.metadata()["recipe"]))
    results = _results_base(cfg, started)
    results.update({"mode": "packed", "packed": str(cfg["packed"]),
                    "file_bytes": Path(cfg["packed"]).stat().st_size,
                    "test": dict(module.last_results)})
    # Sizes as for the fake-quantized model: the same recipe on the same (float) layout.
    float_module = ASRModule(module.model.config.to_dict(), module.tokenizer)
    results.update(_size_fields(float_module, recipe))
    results["wall_time_s"] = time.perf_counter() - started
    atomic_write_json(run_dir / "results.json", json_safe(results))
    return results


def validate_config(cfg, kind: str):
    """Check a composed config before any data or model is touched: one clear ValueError
    naming the key, the value and what is allowed. Returns the config."""
    from asrquant.models.sizes import MODEL_SIZES

    original, cfg = cfg, plain(cfg)
    recipe = recipe_of(cfg)  # QuantSpec / recipe validation
    data = cfg.get("data") or {}
    if data.get("kind") not in DATA_KINDS:
        raise ValueError(f"data.kind={data.get('kind')!r} is invalid; allowed: {list(DATA_KINDS)}")
    for key in ("policy", "eval_policy"):
        if data.get(key, "skip") not in ("skip", "error"):
            raise ValueError(f"data.{key}={data.get(key)!r} is invalid; allowed: ['skip', 'error']")
    mbs = data.get("max_batch_seconds", 60)
    if isinstance(mbs, bool) or not isinstance(mbs, (int, float)) or mbs <= 0:
        raise ValueError(f"data.max_batch_seconds={mbs!r} is invalid; allowed: a number > 0")
    strict = cfg.get("quant_strict", False)
    if not isinstance(strict, bool):
        raise ValueError(f"quant_strict={strict!r} is invalid; allowed: true or false")
    threads = cfg.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ValueError(f"threads={threads!r} is invalid; allowed: null or an int >= 1")
    if kind == "train":
        size = (cfg.get("model") or {}).get("size")
        if size not in MODEL_SIZES:
            raise ValueError(f"model.size={size!r} is invalid; allowed: {sorted(MODEL_SIZES)}")
        tok = (cfg.get("tokenizer") or {}).get("kind", "sentencepiece")
        if tok not in ("sentencepiece", "char"):
            raise ValueError(f"tokenizer.kind={tok!r} is invalid; allowed: "
                             "['sentencepiece', 'char']")
        optim = optim_kwargs(cfg.get("optim") or {})
        lr = optim.get("lr", 1e-3)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
            raise ValueError(f"optim.lr={lr!r} is invalid; allowed: a number > 0")
        if recipe is not None and recipe.rules and not cfg.get("init_from"):
            # Rule patterns against the model's parameter names, on a skeleton built on the
            # meta device (no memory, no data): a typo warns, or fails if quant_strict.
            tok = CharTokenizer()
            fields = {k: v for k, v in cfg["model"].items() if k != "size"}
            with torch.device("meta"):
                skeleton = ASRModule(size_config(size, tok.vocab_size, **fields), tok)
            recipe.plan(skeleton, strict=strict)
    if kind == "eval" and not cfg.get("ckpt") and not cfg.get("packed"):
        raise ValueError("ckpt is missing: pass ckpt=/path/to/checkpoint.ckpt "
                         "(or packed=/path/to/model.safetensors)")
    if kind == "eval" and cfg.get("ckpt") and cfg.get("packed"):
        raise ValueError(f"ckpt={cfg['ckpt']!r} and packed={cfg['packed']!r} are both set; "
                         "allowed: one of them")
    for key in ("ckpt", "packed", "init_from"):
        if cfg.get(key) and not Path(cfg[key]).is_file():
            raise ValueError(f"{key}={cfg[key]!r} is not a file")
    if kind == "eval" and data.get("kind") in ("manifest", "librispeech"):
        tests = data.get("test") or data.get("extra_test") or data.get("test_splits")
        if not tests:
            raise ValueError("nothing to evaluate: data.test (or data.extra_test / "
                             "data.test_splits) is empty")
    return original
