"""Model file formats and their loaders.

    packed.py   one safetensors file of packed integer codes, scales and zero points
                (`asrquant-export`; see docs/format.md), loaded without executing code

Runs that produce these files (config -> file) live in asrquant.runs.export.
"""

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
    "ExportError",
    "export_packed",
    "float_checkpoint",
    "float_state_dict",
    "header_bytes",
    "load_quantized",
]
