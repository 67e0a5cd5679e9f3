"""A recipe's wall time per stage, with the machine it ran on, as JSON.

    python recipes/timing.py STAGES.tsv OUT.json [key=value ...]

STAGES.tsv: one line per stage, '<name>\t<seconds>' (written by recipes/study.sh). The
key=value pairs (corpus, mode, threads, ...) are recorded as given.
"""


import os
import platform
import sys
import time
from pathlib import Path

from asrquant.io import atomic_write_json


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    stages = []
    for line in Path(argv[0]).read_text().splitlines():
        name, _, seconds = line.rpartition("\t")
        stages.append({"stage": name, "wall_s": int(seconds)})
    settings = dict(a.split("=", 1) for a in argv[2:])
    atomic_write_json(Path(argv[1]), {
        **settings, "stages": stages, "total_s": sum(s["wall_s"] for s in stages),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "system": platform.platform()},
    })


if __name__ == "__main__":
    main(sys.argv[1:])
