"""Lightning training/evaluation of ConformerCTC models."""

from asrquant.lightning.metrics import ErrorRate, corpus_cer, corpus_wer
from asrquant.lightning.module import ASRModule, lr_factor

__all__ = ["ASRModule", "ErrorRate", "corpus_cer", "corpus_wer", "lr_factor"]
