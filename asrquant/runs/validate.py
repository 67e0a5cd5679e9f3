"""Check a composed config before any data or model is touched: one clear ValueError naming
the key, the value and what is allowed.

Each rule lives once, in the object or function that uses the value; this module only asks
them, on the meta device and with no data: the recipe (`recipe_of`), the data kind
(`data_kind`), the DataModule (policy, batch seconds), the tokenizer kind, the model size
(`model_config_of`), the optimiser (`ASRModule` on the meta device). The keys that belong to
the run itself (threads, quant_strict, ckpt/packed/init_from) are checked here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from asrquant.checks import check_bool, check_number, config_key
from asrquant.data.datamodule import ASRDataModule
from asrquant.data.readers import check_policy
from asrquant.data.tokenizer import CharTokenizer
from asrquant.lightning.module import ASRModule
from asrquant.runs.blocks import (
    data_kind,
    dev_split_of,
    model_config_of,
    optim_kwargs,
    tokenizer_kind,
)
from asrquant.runs.common import plain, recipe_of


def validate_config(cfg, kind: str):
    """`kind` is "train" or "eval". Returns the config unchanged."""
    original, cfg = cfg, plain(cfg)
    recipe = recipe_of(cfg)  # QuantSpec / recipe validation
    data = cfg.get("data") or {}
    data_kind(data)
    dev_split_of(data)
    with config_key("data."):
        ASRDataModule(CharTokenizer(), policy=data.get("policy", "skip"),
                      max_batch_seconds=data.get("max_batch_seconds", 60))
    check_policy(data.get("eval_policy", "skip"), "data.eval_policy")
    strict = cfg.get("quant_strict", False)
    check_bool("quant_strict", strict)
    check_number("threads", cfg.get("threads"), ge=1, integer=True, none_ok=True)
    if kind == "train":
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
