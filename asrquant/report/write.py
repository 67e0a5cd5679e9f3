"""What asrquant-report and asrquant-curve write into a folder, from loaded results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asrquant.io import atomic_write_text

from .findings import findings
from .plots import curve_figure, plot, plot_group_size, save_png, study_points
from .runs import build_rows, dev_words_of, learning_curve, study_rows
from .tables import (
    curve_markdown,
    export_table,
    markdown,
    speaker_markdown,
    study_markdown,
    write_csv,
    write_study_csv,
)


@dataclass
class Written:
    """The report's Markdown (also written to results.md), the exports table, the files."""

    markdown: str
    exports: str | None = None
    files: list[Path] = field(default_factory=list)


def write_report(runs: list[dict], out: Path, test_set: str = "test",
                 baseline: dict | None = None, title: str = "WER against model size",
                 exports: list[dict] | None = None) -> Written:
    """Into `out`: results.md (study table, findings, every run, failed runs), results.csv,
    study.csv, wer_vs_size.png, wer_vs_group_size.png, and exports.md from `exports`
    (runs.load_exports)."""
    rows, failed, best4 = build_rows(runs, test_set, baseline)
    words = rows[0]["words"] if rows else 0
    study, base, best4_study = study_rows(runs, test_set)
    md = markdown(rows, failed, best4, test_set, words)
    written = Written(md)
    if study:
        md = (f"# {title}\n\n## Recipes\n\n"
              + study_markdown(study, best4_study, test_set, words)
              + "\n## Findings\n\n" + findings(study, base, best4_study, words,
                                                  dev_words_of(runs))
              + "\n## All runs\n\n" + md)
        written.markdown = md
        write_study_csv(out / "study.csv", study)
        written.files.append(out / "study.csv")
        if plot_group_size(out / "wer_vs_group_size.png", study,
                           f"{title}: 2-bit PTQ WER against group size"):
            written.files.append(out / "wer_vs_group_size.png")
    speakers = speaker_markdown(runs, test_set)
    if speakers:
        md += "\n## Per speaker\n\n" + speakers
        written.markdown = md
    atomic_write_text(out / "results.md", md)
    write_csv(out / "results.csv", rows, failed)
    written.files += [out / "results.md", out / "results.csv"]
    if study:  # the study's sizes (exported files; a QAT run has its recipe's PTQ file size)
        plot(out / "wer_vs_size.png", study_points(study), title)
    elif rows:
        plot(out / "wer_vs_size.png", rows, title)
    if study or rows:
        written.files.append(out / "wer_vs_size.png")
    written.exports = export_table(exports or [])
    if written.exports:
        atomic_write_text(out / "exports.md", written.exports)
        written.files.append(out / "exports.md")
    return written


def write_curve(run_dir: Path, out: Path, title: str = "learning curve") -> str:
    """learning_curve.md and learning_curve.png of a training run into `out`; the table."""
    rows = learning_curve(run_dir)
    table = curve_markdown(rows)
    atomic_write_text(out / "learning_curve.md", table)
    save_png(curve_figure(rows, title), out / "learning_curve.png")
    return table
