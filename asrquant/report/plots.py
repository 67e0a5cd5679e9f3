"""Rows -> figures: WER against size (Pareto front marked), 2-bit WER against group size, and a
learning curve. WER is drawn in percent and sizes in MB, ticks as plain numbers ('2', '0.5').

The *_figure functions return a matplotlib Figure (made without pyplot: no backend, no global
state); save_png writes one. matplotlib is imported on the first figure, not with this module:
the tables and findings do not need it and it is slow to import.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from asrquant.io import atomic_write

from .runs import pareto_front

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

MIN_WER_PCT = 0.01  # a WER of 0 drawn here on log axes


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure  # lazy: see the module docstring

    return Figure(figsize=figsize)


def _plain(v: float, _pos=None) -> str:
    return f"{v:g}"


def _plain_2_5(v: float, _pos=None) -> str:
    """Minor ticks of a log axis: label 2 and 5 of each decade ('0.2', '5', '20')."""
    if v <= 0:
        return ""
    lead = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return f"{v:g}" if round(lead) in (2, 5) and abs(lead - round(lead)) < 1e-6 else ""


def plain_log_ticks(axis: Axis) -> None:
    """Tick labels of a log axis as plain numbers ('2', '0.5'), not '2x10^0'."""
    from matplotlib.ticker import FuncFormatter  # lazy: see the module docstring

    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_formatter(FuncFormatter(_plain_2_5))


def _pct(wer: float) -> float:
    return max(100 * wer, MIN_WER_PCT)


def wer_size_figure(rows: list[dict], title: str) -> Figure:
    """WER (%, log scale) against size (MB, log scale); Pareto-optimal runs circled and
    labelled. `rows`: dicts with mode, recipe, size_mb and wer (a fraction)."""
    rows = [r for r in rows if r["mode"] != "packed"]  # same WER as the run it came from
    fig = _new_figure((8, 5))
    ax = fig.subplots()
    styles = {"float": ("s", "black", "float"), "finetune": ("s", "grey", "float fine-tuned"),
              "ptq": ("o", "tab:blue", "PTQ"), "qat": ("^", "tab:orange", "QAT")}
    for mode, (marker, color, label) in styles.items():
        pts = [r for r in rows if r["mode"] == mode]
        if pts:
            ax.scatter([r["size_mb"] for r in pts], [_pct(r["wer"]) for r in pts],
                       marker=marker, color=color, label=label, s=28, zorder=3)
    front = pareto_front(rows)
    ax.plot([r["size_mb"] for r in front], [_pct(r["wer"]) for r in front], "-",
            color="tab:red", label="Pareto front", zorder=2)
    ax.scatter([r["size_mb"] for r in front], [_pct(r["wer"]) for r in front],
               facecolors="none", edgecolors="tab:red", s=110, zorder=4)
    for r in front:
        ax.annotate(r["recipe"] + (" (QAT)" if r["mode"] == "qat" else ""),
                    (r["size_mb"], _pct(r["wer"])), fontsize=7, xytext=(5, 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_ticks(ax.xaxis)
    plain_log_ticks(ax.yaxis)
    ax.set_xlabel("model size (MB, log scale)")
    ax.set_ylabel("WER (%, log scale)")
    _finish(fig, ax, title)
    return fig


def group_size_figure(rows: list[dict], title: str, bits: int = 2) -> Figure | None:
    """PTQ WER (%) against group size at `bits` bits: sym/asym, with and without clipping;
    per-channel drawn at the right end. None if the study has no such runs."""
    pts = [r for r in rows if r["bits"] == bits and r.get("ptq_wer") is not None
           and r["granularity"] in ("group", "channel")]
    if not pts:
        return None
    groups = sorted({r["group"] for r in pts if r["granularity"] == "group"})
    xs = {g: i for i, g in enumerate(groups)}
    xs["ch"] = len(groups)
    fig = _new_figure((7, 4.5))
    ax = fig.subplots()
    for sym, color in ((False, "tab:blue"), (True, "tab:orange")):
        for clip, style in (("none", "o-"), ("mse", "s--")):
            line = [r for r in pts if r["sym"] == sym and r["clip"] == clip]
            line.sort(key=lambda r: xs[r["group"] if r["granularity"] == "group" else "ch"])
            if line:
                ax.plot([xs[r["group"] if r["granularity"] == "group" else "ch"] for r in line],
                        [_pct(r["ptq_wer"]) for r in line], style, color=color,
                        label=f"{'sym' if sym else 'asym'}, clip {clip}")
    ax.set_xticks(range(len(groups) + 1), [str(g) for g in groups] + ["per-channel"])
    ax.set_xlabel("group size (weights per scale along the input dimension)")
    ax.set_ylabel("test WER (%), PTQ")
    ax.set_yscale("log")
    plain_log_ticks(ax.yaxis)
    _finish(fig, ax, title)
    return fig


def curve_figure(rows: list[dict], title: str) -> Figure:
    """Train and dev loss (left axis) and dev WER in percent (right axis) per epoch."""
    fig = _new_figure((7, 4))
    ax1 = fig.subplots()
    ep = [r["epoch"] + 1 for r in rows]
    ax1.plot(ep, [r.get("train_loss") for r in rows], "o-", label="train loss")
    ax1.plot(ep, [r.get("dev_loss") for r in rows], "s-", label="dev loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("CTC loss per token")
    ax2 = ax1.twinx()
    wer = [None if r.get("dev_wer") is None else 100 * r["dev_wer"] for r in rows]
    ax2.plot(ep, wer, "^-", color="tab:red", label="dev WER")
    ax2.set_ylabel("dev WER (%)")
    ax2.set_ylim(0, max(100.0, max((w or 0) for w in wer)))
    handles = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax1.legend(handles, [h.get_label() for h in handles], loc="upper right")
    ax1.set_title(title)
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _finish(fig: Figure, ax, title: str) -> None:
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()


def save_png(fig: Figure, path: Path) -> Path:
    """Written atomically (a reader never sees half a PNG)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def study_points(study: list[dict]) -> list[dict]:
    """Plot points of the study table: one per (recipe, PTQ or QAT) result."""
    points = []
    for r in study:
        float_row = r["bits"] == 32
        for key, mode in (("ptq_wer", "float" if float_row else "ptq"),
                          ("qat_wer", "finetune" if float_row else "qat")):
            if r.get(key) is not None:
                points.append({"recipe": r["recipe"], "mode": mode, "size_mb": r["size_mb"],
                               "wer": r[key]})
    return points


def plot(path: Path, rows: list[dict], title: str) -> None:
    """wer_size_figure written to `path` (PNG)."""
    save_png(wer_size_figure(rows, title), path)


def plot_group_size(path: Path, rows: list[dict], title: str, bits: int = 2) -> bool:
    """group_size_figure written to `path` (PNG); False if the study has no such runs."""
    fig = group_size_figure(rows, title, bits)
    if fig is not None:
        save_png(fig, path)
    return fig is not None
