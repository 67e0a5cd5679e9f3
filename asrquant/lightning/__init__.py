"""What a user puts into their own Lightning Trainer: the ConformerCTC module, the quantization
callback (and `restore_quantization` for a QAT checkpoint loaded by hand), and WER/CER."""

from asrquant.lightning.callbacks import QuantizationCallback, restore_quantization
from asrquant.lightning.metrics import ErrorRate, corpus_cer, corpus_wer
from asrquant.lightning.module import ASRModule, lr_factor

__all__ = ["ASRModule", "ErrorRate", "QuantizationCallback", "corpus_cer", "corpus_wer",
           "lr_factor", "restore_quantization"]
