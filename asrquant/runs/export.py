"""`asrquant-export`: a checkpoint quantized with `quant` (or, for a QAT checkpoint, with
its own recipe) written as one packed safetensors file, its size compared with the report's
prediction (export.json); with `format=onnx` also as one ONNX file for onnxruntime (from the
packed file, or from an existing one given as `packed=`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from asrquant.data.tokenizer import tokenizer_from_state
from asrquant.export import export_packed, header_bytes
from asrquant.export.onnx import export_onnx
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

FORMATS = ("safetensors", "onnx")


def run_export(cfg, run_dir: str | os.PathLike) -> dict:
    """Export `ckpt` and compare the file's tensor bytes with the predicted size; with
    format=onnx, then write that file as ONNX too."""
    run = start_run(cfg, run_dir)
    cfg = run.cfg
    fmt = cfg.get("format") or "safetensors"
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is invalid; allowed: {list(FORMATS)}")
    onnx_cfg = cfg.get("onnx") or {}
    if cfg.get("packed"):
        if fmt != "onnx" or cfg.get("ckpt") or recipe_of(cfg) is not None:
            raise ValueError(f"packed={cfg['packed']!r} is converted as it is: use it with "
                             "format=onnx, without ckpt= and with quant=float")
        return _export_onnx(run, Path(cfg["packed"]), onnx_cfg)
    recipe = recipe_of(cfg)
    ckpt = load_checkpoint(require_ckpt(cfg, "(or packed=model.safetensors with format=onnx)"))
    out = Path(cfg.get("out") or run.dir / "model.safetensors")
    if fmt == "onnx" and out.suffix == ".onnx":
        out = out.with_suffix(".safetensors")
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
    if fmt == "onnx":
        return _export_onnx(run, out, onnx_cfg)
    return results


def _export_onnx(run, packed: Path, onnx_cfg: dict) -> dict:
    """`packed` (a packed or float safetensors file) as ONNX; onnx_export.json beside it."""
    cfg = run.cfg
    out = cfg.get("out")
    out = Path(out) if out and str(out).endswith(".onnx") else run.dir / "model.onnx"
    info = export_onnx(packed, out, accuracy_level=int(onnx_cfg.get("accuracy_level", 0)),
                       fallback=onnx_cfg.get("fallback", "dequantize"))
    info["onnx_vs_safetensors_bytes"] = info["file_bytes"] / info["source_bytes"] - 1
    results = finish_run(run, {"packed": str(packed), "onnx": info},
                         filename="onnx_export.json")
    print(json.dumps(info, indent=2))
    return results
