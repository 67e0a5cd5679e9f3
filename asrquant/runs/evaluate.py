"""`asrquant-eval`: test WER/CER and size of a checkpoint, optionally after PTQ with the
`quant` recipe (a QAT checkpoint brings its own), or of a packed file (weights kept packed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open

from asrquant.data.text import normalize_text
from asrquant.export import export_packed, load_quantized
from asrquant.export.onnx import load_onnx, onnx_metadata
from asrquant.lightning.callbacks import report_metrics
from asrquant.lightning.module import ASRModule
from asrquant.quant import QuantRecipe, fake_quant_specs, recipe_of_checkpoint
from asrquant.runs.blocks import (
    build_datamodule,
    data_sources,
    load_checkpoint,
    make_trainer,
    module_from_checkpoint,
    names_of_test_sets,
    quantization_callbacks,
)
from asrquant.runs.common import (
    PACKED_NOTE,
    Run,
    finish_run,
    method_label,
    recipe_of,
    require_ckpt,
    size_fields,
    size_report,
    start_run,
)
from asrquant.runs.decoder import build_decoder
from asrquant.runs.speakers import add_per_speaker


def run_eval(cfg, run_dir: str | os.PathLike) -> dict:
    """Evaluate a checkpoint on the test sets, optionally after PTQ with the `quant` recipe.
    Writes `run_dir/results.json` (atomically) and returns it."""
    run = start_run(cfg, run_dir)
    cfg, run_dir = run.cfg, run.dir
    recipe = recipe_of(cfg)
    sources = eval_sources(cfg)
    test_names = names_of_test_sets(sources)
    if cfg.get("packed") and cfg.get("onnx"):
        raise ValueError(f"packed={cfg['packed']!r} and onnx={cfg['onnx']!r} are both set; "
                         "evaluate one model file per run")
    if cfg.get("packed") or cfg.get("onnx"):
        return _eval_packed(run, sources, test_names)
    ckpt = load_checkpoint(require_ckpt(cfg, PACKED_NOTE))
    module = module_from_checkpoint(ckpt, None, run_dir / "predictions", test_names)
    module.decoder, decoder = build_decoder(cfg.get("decode"), module.tokenizer, sources["train"])
    qat_ckpt = bool(fake_quant_specs(module))
    if qat_ckpt and recipe is not None:
        raise ValueError("this checkpoint is quantization-aware (QAT); evaluate it with "
                         "quant=float (its own recipe is re-attached from the checkpoint)")
    callbacks = quantization_callbacks(cfg, "ptq")
    datamodule = build_datamodule(cfg, module.tokenizer, sources,
                                  cfg["data"].get("eval_policy", "error"))
    trainer = make_trainer(cfg, run_dir, callbacks, checkpoints=False)
    trainer.test(module, datamodule=datamodule)
    add_per_speaker(module.last_results, run_dir / "predictions", sources)
    results = {"mode": "qat" if qat_ckpt else ("ptq" if recipe else "float"),
               "ckpt": str(cfg["ckpt"]), "decoder": decoder, **scored_sets(module.last_results)}
    chosen = callbacks[0].chosen if callbacks else None
    if recipe is not None and not qat_ckpt:
        results["method"] = method_label(cfg)
    if qat_ckpt:
        recipe = recipe_of_checkpoint(ckpt)
    results.update(size_fields(size_report(module, recipe), recipe))
    if callbacks and callbacks[0].report is not None:
        results["quant_metrics"] = report_metrics(callbacks[0].report)
    if cfg.get("export"):  # the packed file of what was evaluated, and its real size
        info = export_packed(ckpt, None if qat_ckpt else recipe, run_dir / "model.safetensors",
                             chosen)
        results["file_bytes"] = info["file_bytes"]
    return finish_run(run, results)


DEV = "dev"


def eval_sources(cfg: dict) -> dict:
    """The data sources of an eval run. With `score_dev` (the default) the dev split, the one
    training chose its checkpoint on (same data config, same seed), is scored too, as a test
    set named "dev": reference recipes (the best 4-bit model of a study) are chosen on it,
    never on test. `score_dev=false` skips it (and reading the training manifest when the
    dev split is carved from it)."""
    if not cfg.get("score_dev", True):
        return data_sources({**cfg["data"], "dev_fraction": 0.0})
    sources = data_sources(cfg["data"])
    if sources["val"] is not None:
        if DEV in sources["extra_test"]:
            raise ValueError(f"data.extra_test has a set named {DEV!r}, the name of the dev "
                             "split that eval scores: rename it, or set score_dev=false")
        sources["extra_test"] = {**sources["extra_test"], DEV: sources["val"]}
    return sources


def scored_sets(last_results: dict) -> dict:
    """{"test": {set: scores}, "dev": scores} (dev only when it was scored)."""
    scores = dict(last_results)
    dev = scores.pop(DEV, None)
    return {"test": scores, **({DEV: dev} if dev is not None else {})}


def _eval_packed(run: Run, sources: dict, test_names: list[str]) -> dict:
    """Test WER of a packed safetensors model (asrquant-export), weights kept packed, or of
    an exported ONNX file run by onnxruntime (`onnx=`, `onnx_accuracy_level`)."""
    cfg = run.cfg
    kind = "onnx" if cfg.get("onnx") else "packed"
    path = str(cfg[kind])
    if recipe_of(cfg) is not None:
        raise ValueError(f"{kind}= models carry their own recipe: evaluate them with quant=float")
    if kind == "onnx":
        module = load_onnx(path, threads=int(cfg.get("threads") or 1),
                           accuracy_level=cfg.get("onnx_accuracy_level"))
    else:
        module = load_quantized(path)
    module.normalize = normalize_text
    module.predictions_dir = run.dir / "predictions"
    module.set_names["test"] = test_names
    module.decoder, decoder = build_decoder(cfg.get("decode"), module.tokenizer, sources["train"])
    datamodule = build_datamodule(cfg, module.tokenizer, sources,
                                  cfg["data"].get("eval_policy", "error"))
    trainer = make_trainer(cfg, run.dir, [], checkpoints=False)
    trainer.test(module, datamodule=datamodule)
    if kind == "onnx":
        meta = onnx_metadata(path)
    else:
        with safe_open(path, "pt") as f:
            meta = f.metadata()
    recipe = QuantRecipe.from_dict(json.loads(meta["recipe"]))
    add_per_speaker(module.last_results, run.dir / "predictions", sources)
    results = {"mode": kind, kind: path, "file_bytes": Path(path).stat().st_size,
               "decoder": decoder, **scored_sets(module.last_results)}
    if kind == "onnx":
        results["onnx_accuracy_level"] = cfg.get("onnx_accuracy_level")
    # Sizes as for the fake-quantized model: the same recipe on the same (float) layout.
    float_module = ASRModule(module.model.config.to_dict(), module.tokenizer)
    results.update(size_fields(size_report(float_module, recipe), recipe))
    return finish_run(run, results)
