"""asrquant-report: one table and one plot from a sweep's results.json files.

    asrquant-report SWEEP_DIR [--out DIR] [--test-set test] [--baseline results.json]
    asrquant-report --compare synthetic=runs/synthetic_study fsdd=runs/fsdd_study --out F.md
    asrquant-report --search search.json [--top 7] [--out F.md]

Reads every results.json under SWEEP_DIR (a Hydra multirun folder, or any tree of runs) and
writes into --out (default SWEEP_DIR):
  results.md   the study table (one row per recipe: PTQ and QAT WER, file size, size
               against float32 and the best 4-bit model, relative WER change), the findings
               on each of the paper's claims computed from these numbers, every run, and the
               failed runs with their errors;
  results.csv  every run; study.csv the study table;
  wer_vs_size.png (Pareto front marked), wer_vs_group_size.png (2 bits, sym/asym, +-clip).
--search prints (and with --out writes) the largest dev-loss increases of an asrquant-search
result. The work is done in asrquant.report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from asrquant.io import atomic_write_text
from asrquant.report import (
    compare_markdown,
    load_exports,
    load_runs,
    sensitivity_table,
    write_curve,
    write_report,
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, nargs="?")
    ap.add_argument("--compare", nargs="+", metavar="NAME=SWEEP_DIR", default=None,
                    help="write the findings of several studies side by side to --out "
                         "(a .md file) instead of one sweep's report")
    ap.add_argument("--search", type=Path, default=None, metavar="SEARCH_JSON",
                    help="the largest dev-loss increases of an asrquant-search result "
                         "(search.json) as a Markdown table, to --out (a .md file) if given")
    ap.add_argument("--top", type=int, default=7, help="rows of the --search table")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--test-set", default="test")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="results.json of the float model, if not inside the sweep")
    ap.add_argument("--title", default="WER against model size")
    args = ap.parse_args(argv)
    if args.search:
        if not args.search.is_file():
            ap.error(f"--search {str(args.search)!r} is not a file (expected a search.json)")
        md = sensitivity_table(json.loads(args.search.read_text()), args.top)
        if args.out:
            atomic_write_text(args.out, md)
        print(md, end="")
        return
    if args.compare:
        studies = {}
        for item in args.compare:
            name, sep, folder = item.partition("=")
            if not sep or not Path(folder).is_dir():
                ap.error(f"--compare {item!r}: expected NAME=SWEEP_DIR with an existing folder")
            studies[name] = load_runs(Path(folder))
        md = compare_markdown(studies, args.test_set)
        if args.out:
            atomic_write_text(args.out, f"# {args.title}\n\n" + md)
        print(md)
        return
    if args.sweep_dir is None:
        ap.error("sweep_dir is required (or --compare NAME=DIR ..., or --search FILE)")
    if not args.sweep_dir.is_dir():
        ap.error(f"sweep_dir {str(args.sweep_dir)!r} is not a folder")
    runs = load_runs(args.sweep_dir)
    if not runs:
        ap.error(f"no results.json under {str(args.sweep_dir)!r}")
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    written = write_report(runs, args.out or args.sweep_dir, args.test_set, baseline,
                           args.title, load_exports(args.sweep_dir))
    if written.exports:
        print(written.exports)
    print(written.markdown)
    print("wrote " + ", ".join(str(p) for p in written.files))


def curve_main(argv: list[str] | None = None) -> None:
    """asrquant-curve RUN_DIR [--out DIR]: learning curve (loss and dev WER per epoch) of a
    training run as Markdown table and PNG."""
    ap = argparse.ArgumentParser(description="learning curve of a training run")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--title", default="learning curve")
    args = ap.parse_args(argv)
    print(write_curve(args.run_dir, args.out or args.run_dir, args.title), end="")


if __name__ == "__main__":
    main()
