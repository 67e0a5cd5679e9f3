"""What the Hydra entry points share: run-folder handling and failure recording."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from asrquant.io import atomic_write_json

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def run_and_record(run: Callable, cfg) -> dict | None:
    """Run `run(cfg, run_dir)` in the Hydra output folder.

    A failure is written to results.json (status "failed", the error and traceback). In a
    multirun sweep the exception is then swallowed so the other members still run; in a
    single run it is raised again (non-zero exit).
    """
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        return run(cfg, run_dir)
    except Exception as e:
        from omegaconf import OmegaConf

        atomic_write_json(run_dir / "results.json", {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
            "overrides": list(hc.overrides.task),
            "config": OmegaConf.to_container(cfg, resolve=False),
        })
        if hc.mode == RunMode.MULTIRUN:
            print(f"[asrquant] sweep member {hc.job.num} failed: {type(e).__name__}: {e}")
            return None
        raise
