"""`asrquant-train`: float training (quant=float) or QAT fine-tuning (any other recipe,
usually with `init_from` a float checkpoint), resumable, ending with the test of the
best-on-dev checkpoint."""

from __future__ import annotations

import os
import time

from asrquant.data.text import normalize_text
from asrquant.data.tokenizer import tokenizer_from_state
from asrquant.io import json_safe
from asrquant.lightning.callbacks import QuantizationCallback
from asrquant.lightning.module import ASRModule
from asrquant.quant import recipe_of_checkpoint
from asrquant.runs.blocks import (
    build_datamodule,
    build_tokenizer,
    calibration_kwargs,
    check_resumable,
    data_sources,
    fit_normalizer,
    load_checkpoint,
    make_trainer,
    model_config_of,
    module_from_checkpoint,
    names_of_test_sets,
    optim_kwargs,
)
from asrquant.runs.common import (
    finish_run,
    qat_label,
    qat_settings,
    recipe_of,
    size_fields,
    size_report,
    start_run,
)
from asrquant.runs.speakers import add_per_speaker


def run_train(cfg, run_dir: str | os.PathLike) -> dict:
    """Float training or QAT fine-tuning. Resumes from `run_dir/checkpoints/last.ckpt` if
    present. Writes `run_dir/results.json` (atomically) and returns it."""
    run = start_run(cfg, run_dir, seed_workers=True)
    cfg, run_dir = run.cfg, run.dir
    recipe = recipe_of(cfg)
    sources = data_sources(cfg["data"])
    optim = optim_kwargs(cfg.get("optim") or {})
    predictions = run_dir / "predictions"
    test_names = names_of_test_sets(sources)

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
        module = ASRModule(model_config_of(cfg["model"], tokenizer.vocab_size), tokenizer,
                           **optim, normalize=normalize_text, predictions_dir=predictions,
                           test_set_names=test_names)
        if resumed is None:  # a resumed run restores the normaliser with the weights
            fit_normalizer(module, sources["train"], int(cfg.get("normalizer_utterances", 500)),
                           int(cfg.get("seed", 0)))
    if resumed is not None:
        check_resumable(resumed, module, last)
        del resumed

    qat = qat_settings(cfg)
    if qat["kd_weight"] > 0:
        if recipe is None or not cfg.get("init_from"):
            raise ValueError(f"qat.kd_weight={qat['kd_weight']} needs QAT from a float "
                             "checkpoint (a quant recipe and init_from=...): the float model "
                             "is the teacher")
        teacher = module_from_checkpoint(load_checkpoint(cfg["init_from"])).model
        module.set_teacher(teacher, qat["kd_weight"], qat["kd_temperature"])
    strict = bool(cfg.get("quant_strict"))  # the recipe may be the checkpoint's own
    callbacks = []
    if recipe:
        callbacks = [QuantizationCallback(recipe, mode="qat", strict=strict,
                                          scales=qat["scales"], **calibration_kwargs(cfg))]
    datamodule = build_datamodule(cfg, tokenizer, sources, cfg["data"].get("policy", "skip"))
    trainer = make_trainer(cfg, run_dir, callbacks)
    resume = str(last) if last.is_file() and cfg.get("resume", True) else None
    log = run_dir / "logs" / "metrics.csv"
    if resume and log.is_file():  # Lightning's CSVLogger would delete the earlier rows
        os.replace(log, log.with_name(f"metrics.before-resume-{time.strftime('%Y%m%d-%H%M%S')}"
                                      ".csv"))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)

    checkpointing = trainer.checkpoint_callback
    best = checkpointing.best_model_path if checkpointing else ""
    best_score = checkpointing.best_model_score if checkpointing else None
    results = {
        # A float model fine-tuned from a checkpoint is the control for QAT runs.
        "mode": "qat" if recipe else ("finetune" if cfg.get("init_from") else "float"),
        "run_dir": str(run_dir),
        "best_checkpoint": best or None,
        "best_dev_wer": json_safe(float(best_score)) if best_score is not None else None,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "last_dev": module.last_results.get("dev"),
    }
    if cfg.get("test_after_fit", True) and sources["test"] is not None:
        module.last_results = {}
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        results["test"] = {n: module.last_results[n] for n in test_names
                           if n in module.last_results}
        add_per_speaker(results["test"], predictions, sources)
    results.update(size_fields(size_report(module, recipe), recipe))
    if recipe:
        results["method"] = qat_label(cfg)
        results["qat"] = qat
    results["bad_data"] = datamodule.bad_data_summary()
    return finish_run(run, results)
