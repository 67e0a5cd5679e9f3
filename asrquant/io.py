"""Files: atomic writes (a crash leaves the old file or none, never half a file), JSON that
stays valid, the cache folder, the start-of-run check that the output folder is writable, and
the lock that keeps two runs out of one output folder.

The one home of these facts; nothing else in the package renames temporary files into place.
Imports the standard library only, so the synthetic-corpus child process stays light.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs are not locked
    fcntl = None

RUN_LOCK = ".asrquant.lock"


class RunDirInUse(RuntimeError):
    """Another process holds the output folder's lock (see `run_dir_lock`)."""


@contextlib.contextmanager
def run_dir_lock(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold `run_dir/.asrquant.lock` for the length of a run, so that a second run into the
    same folder (the same command started twice, a resume while the first is still running)
    fails at once instead of writing into the other's checkpoints, logs and results.json.
    An OS lock (flock): the kernel releases it when the process ends, even when killed, so a
    killed run leaves nothing stale. Raises RunDirInUse naming the folder and, from its
    results.json, the process holding it."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_LOCK
    if fcntl is None:
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                state = json.loads((run_dir / "results.json").read_text())
                holder = f" (pid {state['pid']}, started {state['started']})"
            raise RunDirInUse(f"output folder {run_dir} is in use by another run{holder}: wait "
                              "for it to end, or give this run another folder "
                              "(hydra.run.dir=... / hydra.sweep.dir=...)") from None
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; if the block succeeds, the file written there is
    synced and renamed onto `path` (a rename within one folder: atomic on POSIX). On any
    error, or Ctrl-C, the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it into place."""
    with atomic_path(path) as tmp:
        write(str(tmp))
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(x):
    """NaN and infinities (not valid JSON) become None, recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# Configs and shipped models: the checkout's top-level conf/ and models/ are the source of
# truth; a built wheel carries them as asrquant/conf and asrquant/checkpoints (pyproject.toml,
# [tool.setuptools.package-dir]), so an installed asrquant finds them with no checkout.
_PACKAGE = Path(__file__).resolve().parent
PRETRAINED_PREFIX = "pretrained:"


def _shipped(in_wheel: str, in_checkout: str, marker: str) -> Path:
    for folder in (_PACKAGE / in_wheel, _PACKAGE.parent / in_checkout):
        if (folder / marker).is_file():
            return folder
    raise FileNotFoundError(f"asrquant's {in_checkout}/ is neither at {_PACKAGE / in_wheel} "
                            f"(installed wheel) nor at {_PACKAGE.parent / in_checkout} (source "
                            "checkout): reinstall the package (pip install asrquant)")


def config_dir() -> Path:
    """The folder of the Hydra configs (eval.yaml, quant/, ...)."""
    return _shipped("conf", "conf", "eval.yaml")


def pretrained_names() -> list[str]:
    """Names of the shipped float models (for `pretrained(name)`)."""
    return sorted(p.stem for p in _shipped("checkpoints", "models", "README.md").glob(
        "*.safetensors"))


def pretrained(name: str) -> Path:
    """The file of a shipped float model, e.g. pretrained("cpu_synthetic_float")."""
    names = pretrained_names()
    stem = name.removesuffix(".safetensors")
    if stem not in names:
        raise ValueError(f"pretrained model {name!r} is not shipped; allowed: {names}")
    return _shipped("checkpoints", "models", "README.md") / f"{stem}.safetensors"


def model_path(value: str | os.PathLike) -> Path:
    """A model file named in a config or on the command line: a path, or
    "pretrained:<name>" for a shipped model (`pretrained`)."""
    text = str(value)
    if text.startswith(PRETRAINED_PREFIX):
        return pretrained(text[len(PRETRAINED_PREFIX):])
    return Path(value)


def cache_dir(*parts: str) -> Path:
    """$ASRQUANT_CACHE/<parts>, or ~/.cache/asrquant/<parts> (corpora, sensitivities)."""
    root = os.environ.get("ASRQUANT_CACHE") or Path.home() / ".cache" / "asrquant"
    return Path(root).joinpath(*parts)


MIN_FREE_BYTES = 64 * 2**20  # a floor, not an estimate: checkpoints of big models need more


def check_writable(folder: str | os.PathLike, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Fail at start, not after hours of work, if `folder` cannot be written: it is created,
    a small probe file is written and synced there (a read-only or full disk fails here), and
    the disk must have `min_free_bytes` free."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise OSError(f"output folder {str(folder)!r} is not writable: {e.strerror or e}") from e
    if free < min_free_bytes:
        raise OSError(f"output folder {str(folder)!r} has only {free / 2**20:.1f} MiB free; "
                      f"allowed: at least {min_free_bytes / 2**20:.0f} MiB (checkpoints, "
                      "results and predictions are written there)")
    return folder
