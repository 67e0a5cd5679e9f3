"""asrquant: low-bit quantization (PTQ and QAT) of Conformer speech recognizers.

The three ways in (README):
    command line     asrquant-eval / -train / -export / -transcribe with conf/ recipes
    your Trainer     asrquant.lightning.QuantizationCallback(recipe, mode="qat" | "ptq")
    your own model   asrquant.quantize_(model, recipe), save_packed, load_packed
                     (docs/foreign_models.md)

`import asrquant` stays light (no torch, no Lightning): the names below are imported on
first use.
"""

import importlib

from asrquant.io import config_dir, pretrained, pretrained_names

__version__ = "0.1.0"

_MODULE_OF = {
    "QuantRecipe": "asrquant.quant",
    "QuantRule": "asrquant.quant",
    "QuantSpec": "asrquant.quant",
    "attach_fake_quant": "asrquant.quant",
    "detach_fake_quant": "asrquant.quant",
    "quantize_": "asrquant.quant",
    "save_packed": "asrquant.export",
    "load_packed": "asrquant.export",
}

__all__ = ["__version__", "config_dir", "load_quantized", "pretrained", "pretrained_names",
           *_MODULE_OF]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'asrquant' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


def load_quantized(path, map_location="cpu"):
    """Load a packed model written by `asrquant-export` (see asrquant.export.load_quantized);
    `path` may be "pretrained:<name>" for a shipped float model."""
    return importlib.import_module("asrquant.export").load_quantized(path, map_location)
