"""asrquant: low-bit quantization (PTQ and QAT) of Conformer speech recognizers."""

__version__ = "0.1.0"
