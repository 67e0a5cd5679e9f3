"""Helpers of the reliability matrix (docs/reliability.md): the environment of child
processes. The tiny corpus and model, and Hydra composition, are fixtures of tests/conftest.py
(tiny_data, tiny_model, cfg_of)."""

import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from asrquant.cli.common import CONF_DIR

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def child_env() -> dict:
    """Environment of a child `python -m asrquant.cli.*`: one thread, this checkout first."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# TODO: remove once test_config_errors.py takes the cfg_of fixture of tests/conftest.py (its
# only importer; that file is being edited elsewhere). Same body as the fixture.
def cfg_of(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)
