"""Conformer-CTC models (depends on torch and torchaudio only)."""

from asrquant.models.conformer_ctc import (
    MIN_AUDIO_SAMPLES,
    ConformerCTC,
    ConformerCTCConfig,
    frame_lengths,
    subsampled_lengths,
)
from asrquant.models.decoding import GreedyDecoder, greedy_ctc_decode
from asrquant.models.sizes import MODEL_SIZES, build_model, size_config

__all__ = [
    "MIN_AUDIO_SAMPLES",
    "MODEL_SIZES",
    "ConformerCTC",
    "ConformerCTCConfig",
    "GreedyDecoder",
    "build_model",
    "frame_lengths",
    "greedy_ctc_decode",
    "size_config",
    "subsampled_lengths",
]
