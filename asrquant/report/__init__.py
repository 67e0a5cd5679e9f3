"""Tables, findings and plots from results files (results.json, export.json, search.json,
a training run's CSV log). Imports asrquant.io, asrquant.quant, the standard library and
(for the plots, on first use) matplotlib.

    runs      results files -> rows: load_runs, run_names, build_rows, study_rows, pareto_front
    tables    rows -> Markdown and CSV; sensitivity_table of a search
    findings  the paper's claims checked against a study table
    plots     WER against size and against group size, learning curves
    write     the files asrquant-report and asrquant-curve write into a folder
"""

from .findings import finding_items, findings
from .plots import (
    curve_figure,
    group_size_figure,
    plain_log_ticks,
    plot,
    plot_group_size,
    save_png,
    study_points,
    wer_size_figure,
)
from .runs import (
    build_rows,
    learning_curve,
    load_exports,
    load_runs,
    naming_overrides,
    pareto_front,
    read_overrides_yaml,
    run_names,
    run_overrides,
    short_run_name,
    study_rows,
)
from .tables import (
    COLUMNS,
    STUDY_COLUMNS,
    compare_markdown,
    curve_markdown,
    export_table,
    failure_text,
    markdown,
    sensitivity_table,
    study_markdown,
    write_csv,
    write_study_csv,
)
from .write import Written, write_curve, write_report

__all__ = [
    "COLUMNS",
    "STUDY_COLUMNS",
    "Written",
    "build_rows",
    "compare_markdown",
    "curve_figure",
    "curve_markdown",
    "export_table",
    "failure_text",
    "finding_items",
    "findings",
    "group_size_figure",
    "learning_curve",
    "load_exports",
    "load_runs",
    "markdown",
    "naming_overrides",
    "pareto_front",
    "plain_log_ticks",
    "plot",
    "plot_group_size",
    "read_overrides_yaml",
    "run_names",
    "run_overrides",
    "save_png",
    "sensitivity_table",
    "short_run_name",
    "study_markdown",
    "study_points",
    "study_rows",
    "wer_size_figure",
    "write_csv",
    "write_curve",
    "write_report",
    "write_study_csv",
]
