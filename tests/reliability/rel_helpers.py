"""Helpers of the reliability matrix (docs/reliability.md): the environment of child
processes. The tiny corpus and model, and Hydra composition, are fixtures of tests/conftest.py
(tiny_data, tiny_model, cfg_of)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def child_env() -> dict:
    """Environment of a child `python -m asrquant.cli.*`: one thread, this checkout first."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env
