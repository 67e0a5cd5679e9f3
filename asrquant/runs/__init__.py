"""Config -> result. Each run takes a plain or OmegaConf config of the shape of its
`conf/<name>.yaml` and a run folder, and writes its results file there atomically:

    train.py      run_train      float training, QAT fine-tuning      results.json
    evaluate.py   run_eval       test WER after PTQ, or of a packed file  results.json
    export.py     run_export     the packed safetensors file          export.json
    search.py     run_search     mixed-precision search               search.json
    validate.py   validate_config  every check that needs no data, before any work
    blocks.py     data sources, tokenizer, DataModule, checkpoints, Trainer
    common.py     start_run / finish_run, the recipe and size columns of a config

The Hydra entry points (asrquant/cli) are a few lines around these.
"""

from asrquant.runs.evaluate import run_eval
from asrquant.runs.export import run_export
from asrquant.runs.search import run_search, validate_search_config
from asrquant.runs.train import run_train
from asrquant.runs.validate import validate_config

__all__ = ["run_eval", "run_export", "run_search", "run_train", "validate_config",
           "validate_search_config"]
