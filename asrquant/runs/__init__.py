"""Config -> result. Each run takes a plain or OmegaConf config of the shape of its
`conf/<name>.yaml` and a run folder, and writes its results file there atomically:

    train.py      run_train      float training, QAT fine-tuning      results.json
    evaluate.py   run_eval       test WER after PTQ, or of a packed file  results.json
    export.py     run_export     the packed safetensors file          export.json
                                 (format=onnx: + model.onnx)          onnx_export.json
    transcribe.py run_transcribe audio files or manifests -> transcripts (ckpt, safetensors,
                                 ONNX); JSONL with WER/CER
    search.py     run_search     mixed-precision search               search.json
    validate.py   validate_config  every check that needs no data, before any work
    demo.py       run_demo       recipes on a random torchaudio Conformer (prints a table)
    blocks.py     data sources, tokenizer, DataModule, checkpoints, Trainer
    decoder.py    the `decode` config -> greedy or lexicon beam decoder (+ its n-gram LM)
    common.py     start_run / finish_run, the run's own keys, the recipe and size columns

The Hydra entry points (asrquant/cli) are a few lines around these. Names are imported
lazily, so that `asrquant-demo` (runs.demo) does not pay for importing Lightning.
"""

import importlib

_MODULE_OF = {
    "run_demo": "demo",
    "run_eval": "evaluate",
    "run_export": "export",
    "run_search": "search",
    "validate_search_config": "search",
    "run_train": "train",
    "run_transcribe": "transcribe",
    "transcribe_files": "transcribe",
    "validate_config": "validate",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
