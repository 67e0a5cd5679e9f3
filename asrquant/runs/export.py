"""`asrquant-export`: a checkpoint quantized with `quant` (or, for a QAT checkpoint, with
its own recipe) written as one packed safetensors file, its size compared with the report's
prediction (export.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from asrquant.data.tokenizer import tokenizer_from_state
from asrquant.export import export_packed, header_bytes
from asrquant.lightning.module import ASRModule
from asrquant.quant import QuantRecipe, recipe_of_checkpoint
from asrquant.runs.blocks import load_checkpoint
from asrquant.runs.common import (
    finish_run,
    recipe_of,
    require_ckpt,
    size_fields,
    size_report,
    start_run,
)


def run_export(cfg, run_dir: str | os.PathLike) -> dict:
    """Export `ckpt` and compare the file's tensor bytes with the predicted size."""
    run = start_run(cfg, run_dir)
    cfg = run.cfg
    recipe = recipe_of(cfg)
    ckpt = load_checkpoint(require_ckpt(cfg))
    out = Path(cfg.get("out") or run.dir / "model.safetensors")
    info = export_packed(ckpt, recipe, out)
    recipe = recipe or recipe_of_checkpoint(ckpt) or QuantRecipe(None, name="float")
    module = ASRModule(ckpt["model_config"], tokenizer_from_state(ckpt["tokenizer_state"]))
    report = size_report(module, recipe)
    head = header_bytes(out)
    predicted = report.stored_bytes
    results = finish_run(run, {
        "ckpt": cfg["ckpt"], "path": str(out),
        "file_bytes": info["file_bytes"], "header_bytes": head,
        "tensor_bytes": info["file_bytes"] - head,
        "predicted_bytes": predicted,
        "predicted_vs_tensor_bytes": (info["file_bytes"] - head) / predicted - 1,
        **size_fields(report, recipe),
    }, filename="export.json")
    print(json.dumps({k: results[k] for k in ("path", "file_bytes", "header_bytes",
                                              "predicted_bytes", "predicted_vs_tensor_bytes")},
                     indent=2))
    return results
