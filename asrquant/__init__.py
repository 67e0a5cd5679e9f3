"""asrquant: low-bit quantization (PTQ and QAT) of Conformer speech recognizers."""

from asrquant.io import config_dir, pretrained, pretrained_names

__version__ = "0.1.0"
__all__ = ["__version__", "config_dir", "load_quantized", "pretrained", "pretrained_names"]


def load_quantized(path, map_location="cpu"):
    """Load a packed model written by `asrquant-export` (see asrquant.export.load_quantized)."""
    # Imported on use, not for a circle: `import asrquant` stays free of Lightning.
    from asrquant.export import load_quantized as _load

    return _load(path, map_location)
