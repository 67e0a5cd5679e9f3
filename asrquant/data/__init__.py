"""Speech data: audio and transcript reading, corpora, tokenizers and batching.

Names are imported lazily, so that `import asrquant.data.text` (or the synthetic-corpus child
process) does not pay for importing Lightning.
"""

import importlib

_MODULE_OF = {
    "AudioError": "audio",
    "BadDataError": "audio",
    "audio_info": "audio",
    "read_audio": "audio",
    "Augmentation": "augment",
    "AugmentedDataset": "augment",
    "augmentation_of": "augment",
    "ASRDataModule": "datamodule",
    "DurationBatchSampler": "datamodule",
    "EpochTaggedBatches": "datamodule",
    "collate_batch": "datamodule",
    "BadDataReport": "readers",
    "FailedItem": "readers",
    "Utterance": "readers",
    "UtteranceDataset": "readers",
    "librispeech_utterances": "readers",
    "manifest_utterances": "readers",
    "read_utterances": "readers",
    "validate_utterances": "readers",
    "build_synthetic_corpus": "synthetic",
    "normalize_text": "text",
    "CharTokenizer": "tokenizer",
    "SentencePieceTokenizer": "tokenizer",
    "Tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "tokenizer_from_state": "tokenizer",
    "train_sentencepiece": "tokenizer",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
