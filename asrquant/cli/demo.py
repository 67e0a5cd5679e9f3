"""asrquant-demo: sizes and output error of each recipe on a random torchaudio Conformer
(asrquant/runs/demo.py).

    asrquant-demo [--layers 4] [--d-model 144] [--seed 0]
"""

from __future__ import annotations

import argparse

from asrquant.runs.demo import run_demo


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=144)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    run_demo(args.layers, args.d_model, args.heads, args.seed, args.threads)


if __name__ == "__main__":
    main()
