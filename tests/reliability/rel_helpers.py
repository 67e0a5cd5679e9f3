"""Helpers of the reliability matrix (docs/reliability.md): Hydra composition and the
environment of child processes."""

import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from asrquant.cli.common import CONF_DIR

ROOT = Path(__file__).resolve().parents[2]
TINY_DATA = [
    "data.synthetic.n_train=24", "data.synthetic.n_dev=6", "data.synthetic.n_test=6",
    "data.synthetic.n_test_voices=6", "trainer.enable_progress_bar=false", "threads=1",
]
TINY_MODEL = ["model.num_layers=1", "model.d_model=32", "model.ffn_dim=64",
              "model.subsampling_channels=8", "tokenizer.vocab_size=40"]


def cfg_of(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def child_env() -> dict:
    """Environment of a child `python -m asrquant.cli.*`: one thread, this checkout first."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


PYTHON = sys.executable


