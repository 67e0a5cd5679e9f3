"""What the Hydra entry points share: run-folder handling and failure recording."""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from asrquant.io import RunDirInUse, atomic_write_json, config_dir, run_dir_lock

CONF_DIR = str(config_dir())  # conf/ of the checkout, or asrquant/conf in an installed wheel


def run_and_record(run: Callable, cfg) -> dict | None:
    """Run `run(cfg, run_dir)` in the Hydra output folder.

    results.json says "running" from the start, so a member killed outright (SIGKILL, the
    out-of-memory killer, a cluster time limit) is still listed by asrquant-report. A failure
    is written to results.json (status "failed", the error and traceback); SIGTERM or Ctrl-C
    writes status "interrupted". In a multirun sweep a failure is then swallowed so the other
    members still run; in a single run it is raised again (non-zero exit). The folder is
    locked for the run (`asrquant.io.run_dir_lock`): a second run into it while this one is
    alive fails at once (a sweep member: skipped) and leaves this one's files alone.
    """
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)  # Hydra made it; the run's start_run probes it
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(run_dir_lock(run_dir))
        except RunDirInUse as e:  # the other run's results.json is left as it is
            if hc.mode == RunMode.MULTIRUN:
                print(f"[asrquant] sweep member {hc.job.num} not run: {e}")
                return None
            raise
        return _record(run, cfg, hc, run_dir)


def _record(run: Callable, cfg, hc, run_dir: Path) -> dict | None:
    base = {"overrides": list(hc.overrides.task), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(run_dir / "results.json", {"status": "running", **base})
    try:
        out = run(cfg, run_dir)
        _mark_done(run_dir / "results.json", base)
        return out
    except Exception as e:
        atomic_write_json(run_dir / "results.json", {
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
            **base,
            "config": OmegaConf.to_container(cfg, resolve=False),
        })
        if hc.mode == RunMode.MULTIRUN:
            print(f"[asrquant] sweep member {hc.job.num} failed: {type(e).__name__}: {e}")
            return None
        raise
    except BaseException as e:  # SystemExit (Lightning's answer to SIGTERM), KeyboardInterrupt
        atomic_write_json(run_dir / "results.json", {
            "status": "interrupted",
            "error": f"{type(e).__name__}: interrupted (SIGTERM or Ctrl-C); rerun the same "
                     "command to resume from the last checkpoint",
            **base,
            "config": OmegaConf.to_container(cfg, resolve=False),
        })
        if isinstance(e, SystemExit) and not e.code:
            # Lightning stops on SIGTERM with a bare SystemExit, which would exit with status
            # 0 as if the run had finished; 143 is the shell's status for SIGTERM.
            raise SystemExit(143) from e
        raise


def _mark_done(path: Path, base: dict) -> None:
    """Commands whose record is another file (export.json, search.json) leave the "running"
    marker in place: replace it, so a finished run is not reported as killed."""
    try:
        status = json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        status = "running"
    if status == "running":
        atomic_write_json(path, {"status": "ok", **base,
                                 "note": "finished; this command's record is in its own file"})
