"""Check a composed config before any data or model is touched: one clear ValueError naming
the key, the value and what is allowed.

Each rule lives once, in the object or function that uses the value; this module only asks
them, on the meta device and with no data: the recipe (`recipe_of`), the data kind
(`data_kind`), the DataModule (policy, batch seconds), the tokenizer kind, the model size
(`model_config_of`), the optimiser (`ASRModule` on the meta device), the run's own keys
(`check_threads`, `require_ckpt`, `check_files` in runs.common), the decoder
(`decode_settings`); quant_strict and the eval-only combinations are checked here.
"""

from __future__ import annotations

import torch

from asrquant.checks import check_bool, config_key
from asrquant.data.augment import augmentation_of
from asrquant.data.datamodule import ASRDataModule
from asrquant.data.readers import check_policy
from asrquant.data.tokenizer import CharTokenizer
from asrquant.export.onnx_graph import check_accuracy_level
from asrquant.lightning.module import ASRModule
from asrquant.runs.blocks import (
    data_kind,
    dev_split_of,
    model_config_of,
    optim_kwargs,
    tokenizer_kind,
)
from asrquant.runs.common import (
    PACKED_NOTE,
    calibration_of,
    check_files,
    check_threads,
    plain,
    qat_settings,
    recipe_of,
    require_ckpt,
)
from asrquant.runs.decoder import decode_settings


def validate_config(cfg, kind: str):
    """`kind` is "train" or "eval". Returns the config unchanged."""
    original, cfg = cfg, plain(cfg)
    recipe = recipe_of(cfg)  # QuantSpec / recipe validation
    calibration_of(cfg)  # quant.method and calib.*
    if kind == "train":
        qat_settings(cfg)
    data = cfg.get("data") or {}
    data_kind(data)
    dev_split_of(data)
    with config_key("data."):
        ASRDataModule(CharTokenizer(), policy=data.get("policy", "skip"),
                      max_batch_seconds=data.get("max_batch_seconds", 60))
    check_policy(data.get("eval_policy", "skip"), "data.eval_policy")
    strict = cfg.get("quant_strict", False)
    check_bool("quant_strict", strict)
    check_threads(cfg)
    if kind == "train":
        augmentation_of(cfg.get("augment"))  # augment.* values, the noise manifest's files
        tokenizer_kind(cfg.get("tokenizer") or {})
        tok = CharTokenizer()
        model_config = model_config_of(cfg.get("model") or {}, tok.vocab_size)
        # Built on the meta device (no memory, no data): ASRModule checks the optimiser
        # values, and the recipe's rule patterns meet the model's parameter names (a typo
        # warns, or fails with quant_strict).
        with torch.device("meta"), config_key("optim."):
            skeleton = ASRModule(model_config, tok, **optim_kwargs(cfg.get("optim") or {}))
        if recipe is not None and recipe.rules and not cfg.get("init_from"):
            recipe.plan(skeleton, strict=strict)
    if kind == "eval":
        check_bool("score_dev", cfg.get("score_dev", True))
        decode_settings(cfg.get("decode"))
    if kind == "eval" and not (cfg.get("packed") or cfg.get("onnx")):
        require_ckpt(cfg, PACKED_NOTE)
    if kind == "eval":
        given = [f"{k}={cfg[k]!r}" for k in ("ckpt", "packed", "onnx") if cfg.get(k)]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} are {'both' if len(given) == 2 else 'all'}"
                             " set; allowed: one of ckpt, packed, onnx")
        check_accuracy_level(cfg.get("onnx_accuracy_level"), "onnx_accuracy_level",
                             null="as exported")
    check_files(cfg, "ckpt", "packed", "onnx", "init_from")
    if kind == "eval" and data.get("kind") in ("manifest", "librispeech"):
        tests = data.get("test") or data.get("extra_test") or data.get("test_splits")
        if not tests:
            raise ValueError("nothing to evaluate: data.test (or data.extra_test / "
                             "data.test_splits) is empty")
    return original
