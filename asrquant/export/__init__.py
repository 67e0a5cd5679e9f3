"""Model file formats and their loaders.

    packed.py   one safetensors file of packed integer codes, scales and zero points
                (`asrquant-export`; see docs/format.md), loaded without executing code
    modules.py  the same for any nn.Module: `save_packed(model, path, recipe)` and
                `load_packed(model_or_builder, path)` (docs/foreign_models.md)

Runs that produce these files (config -> file) live in asrquant.runs.export.
"""

from asrquant.export.modules import MODULE_FORMAT, MODULE_FORMAT_VERSION, load_packed, save_packed
from asrquant.export.packed import (
    FORMAT,
    FORMAT_VERSION,
    ExportError,
    export_packed,
    float_checkpoint,
    float_state_dict,
    header_bytes,
    load_quantized,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MODULE_FORMAT",
    "MODULE_FORMAT_VERSION",
    "ExportError",
    "export_packed",
    "float_checkpoint",
    "float_state_dict",
    "header_bytes",
    "load_packed",
    "load_quantized",
    "save_packed",
]
