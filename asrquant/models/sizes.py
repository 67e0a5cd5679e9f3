"""Named model sizes. `s`, `m`, `l` follow the Conformer paper (Gulati et al., 2020) encoders;
`cpu` is a small model that trains on a couple of CPU cores in minutes."""

from __future__ import annotations

from typing import Any

from asrquant.models.conformer_ctc import ConformerCTC, ConformerCTCConfig

MODEL_SIZES: dict[str, dict[str, Any]] = {
    # ~2.2 M params. Few layers and narrow subsampling keep steps cheap; light SpecAugment and
    # dropout let a small data set get past the CTC all-blank phase quickly.
    "cpu": dict(
        d_model=144,
        num_layers=4,
        num_heads=4,
        ffn_dim=576,
        conv_kernel_size=15,
        subsampling_channels=64,
        dropout=0.1,
        freq_mask_width=10,
        time_mask_width=10,
    ),
    "s": dict(d_model=144, num_layers=16, num_heads=4, ffn_dim=576, conv_kernel_size=31),
    "m": dict(d_model=256, num_layers=16, num_heads=4, ffn_dim=1024, conv_kernel_size=31),
    "l": dict(d_model=512, num_layers=17, num_heads=8, ffn_dim=2048, conv_kernel_size=31),
}


def size_config(size: str, vocab_size: int, **overrides: Any) -> ConformerCTCConfig:
    """The ConformerCTCConfig of a named size, with any field overridden."""
    if size not in MODEL_SIZES:
        raise ValueError(f"size={size!r} is invalid; allowed: {sorted(MODEL_SIZES)}")
    return ConformerCTCConfig.from_dict(
        {**MODEL_SIZES[size], "vocab_size": vocab_size, **overrides}
    )


def build_model(size: str, vocab_size: int, **overrides: Any) -> ConformerCTC:
    """A freshly initialised ConformerCTC of a named size (see MODEL_SIZES)."""
    return ConformerCTC(size_config(size, vocab_size, **overrides))
