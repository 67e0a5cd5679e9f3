"""What every run shares: the plain config, the start (output folder checked, threads, seed,
timer) and the finish (results.json with status, git revision, config and wall time, written
atomically), the rules of the run's own keys (threads, ckpt), the recipe of a config and the
size columns of its results."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from asrquant.checks import check_choice, check_keys, check_number, config_key
from asrquant.io import atomic_write_json, check_writable, json_safe, model_path
from asrquant.quant import (
    QuantRecipe,
    QuantReport,
    build_report,
    fake_quant_specs,
    recipe_from_config,
)
from asrquant.quant.calibrate import METHODS, CalibrationConfig
from asrquant.quant.recipe import SCALE_MODES


def plain(cfg) -> Any:
    """OmegaConf -> plain python containers (dicts and lists); other values unchanged."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Run:
    """A run in progress: its plain config, its (writable) folder and its start time."""

    cfg: dict
    dir: Path
    started: float

    @property
    def wall_time_s(self) -> float:
        return time.perf_counter() - self.started


def check_threads(cfg: dict) -> None:
    """`threads` (torch's threads for the run, set by start_run): null or an int >= 1."""
    check_number("threads", cfg.get("threads"), ge=1, integer=True, none_ok=True)


# eval takes any of these
PACKED_NOTE = "(or packed=/path/to/model.safetensors, or onnx=/path/to/model.onnx)"


def require_ckpt(cfg: dict, note: str = "") -> str:
    """`ckpt`, or one ValueError saying how to pass it (`note`: what else would do)."""
    if not cfg.get("ckpt"):
        raise ValueError(f"ckpt is missing: pass ckpt=/path/to/checkpoint.ckpt {note}".rstrip())
    return cfg["ckpt"]


def check_files(cfg: dict, *keys: str) -> None:
    """Each of `keys` that is set names an existing file."""
    for key in keys:
        if cfg.get(key) and not model_path(cfg[key]).is_file():
            raise ValueError(f"{key}={cfg[key]!r} is not a file")


def start_run(cfg, run_dir: str | os.PathLike, seed_workers: bool = False) -> Run:
    """The preamble of every run: timer, plain config, output folder probed (fails now, not
    after hours), torch threads (`threads`), seed (`seed`)."""
    started = time.perf_counter()
    cfg = plain(cfg)
    run_dir = check_writable(run_dir)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    L.seed_everything(int(cfg.get("seed", 0)), workers=seed_workers, verbose=False)
    return Run(cfg, run_dir, started)


def finish_run(run: Run, fields: dict, filename: str = "results.json") -> dict:
    """{"status": "ok", git revision, config, **fields, wall time}, written atomically to
    `run.dir/filename` (NaN and inf as null) and returned."""
    results = {"status": "ok", "git_revision": git_revision(), "config": run.cfg, **fields,
               "wall_time_s": run.wall_time_s}
    atomic_write_json(run.dir / filename, json_safe(results))
    return results


def recipe_of(cfg: dict) -> QuantRecipe | None:
    """The `quant` recipe of a config; None for float (no default spec and no rules)."""
    quant = cfg.get("quant")
    if not quant:
        return None
    recipe = recipe_from_config(quant)
    return None if recipe.default is None and not recipe.rules else recipe


GPTQ_KEYS = ("damp", "act_order", "block_size", "static_groups", "sequential", "refine",
             "target")


def calibration_of(cfg: dict) -> CalibrationConfig | None:
    """The calibration PTQ of a config: `quant.method` (rtn: None) with the `calib` settings
    (num_utterances is the callback's; damp, act_order, block_size GPTQ's)."""
    method = (cfg.get("quant") or {}).get("method") or "rtn"
    check_choice("quant.method", method, METHODS)
    calib = dict(cfg.get("calib") or {})
    check_keys("calib", calib, ("num_utterances",) + GPTQ_KEYS)
    check_number("calib.num_utterances", calib.get("num_utterances", 128), ge=1, integer=True)
    with config_key("calib."):
        config = CalibrationConfig(method=method, **{k: calib[k] for k in
                                                     GPTQ_KEYS if k in calib})
    return config if config.needs_data else None


def method_label(cfg: dict) -> str:
    """What chose the codes, for results.json `method` and the tables' labels: 'rtn', or a
    calibration method ('gptq', ...), with '+refine<R>' for R rounds of scale refinement and
    '+float_target' for calib.target=float."""
    method = (cfg.get("quant") or {}).get("method") or "rtn"
    calib = cfg.get("calib") or {}
    if method == "rtn":
        return method
    parts = [method] + [f"refine{calib['refine']}"] * bool(calib.get("refine"))
    parts += ["float_target"] * (calib.get("target") == "float")
    return "+".join(parts)


def qat_settings(cfg: dict) -> dict:
    """`qat.*` of a config, checked: scales (dynamic | learned), kd_weight >= 0,
    kd_temperature > 0."""
    qat = dict(cfg.get("qat") or {})
    check_keys("qat", qat, ("scales", "kd_weight", "kd_temperature"))
    out = {"scales": qat.get("scales", "dynamic"), "kd_weight": qat.get("kd_weight", 0.0),
           "kd_temperature": qat.get("kd_temperature", 1.0)}
    check_choice("qat.scales", out["scales"], SCALE_MODES)
    check_number("qat.kd_weight", out["kd_weight"], ge=0)
    check_number("qat.kd_temperature", out["kd_temperature"], gt=0)
    return out


def qat_label(cfg: dict) -> str:
    """What a QAT run added to plain QAT, for results.json `method` and the tables:
    '<method> init' when it starts from calibration PTQ, 'kd' (distillation), 'lsq' (learned
    scales), joined by '+'; 'rtn' for plain QAT."""
    qat = qat_settings(cfg)
    parts = [] if method_label(cfg) == "rtn" else [method_label(cfg)]
    parts += ["kd"] * (qat["kd_weight"] > 0) + ["lsq"] * (qat["scales"] == "learned")
    return "+".join(parts) or "rtn"


def size_report(module: nn.Module, recipe: QuantRecipe | None) -> QuantReport:
    """The sizes of `module` under the fake quantization attached to it, or else under
    `recipe`'s plan, or float."""
    plan = fake_quant_specs(module) or (recipe.plan(module) if recipe is not None else {})
    return build_report(module, plan, recipe.name if recipe else "float")


def size_fields(report: QuantReport, recipe: QuantRecipe | None) -> dict:
    """Size columns of results.json (and export.json) from `size_report`."""
    return {
        "recipe": recipe.to_dict() if recipe else None,
        "size_bytes": report.quantized_bytes,
        "float32_bytes": report.float32_bytes,
        "effective_bits": report.bits_per_weight,
        "num_params": report.num_params,
        "num_quantized": report.num_quantized,
        "quantized_share": report.quantized_share,
    }
