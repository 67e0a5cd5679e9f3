"""asrquant-report: one table and one plot from a sweep's results.json files.

    asrquant-report SWEEP_DIR [--out DIR] [--test-set test] [--baseline results.json]

Reads every results.json under SWEEP_DIR (a Hydra multirun folder, or any tree of runs) and
writes results.md, results.csv and wer_vs_size.png (WER against model size, Pareto front
marked) into --out (default SWEEP_DIR). Failed runs are listed with their errors.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

from asrquant.io import atomic_write, atomic_write_text

COLUMNS = ["run", "mode", "recipe", "bits", "sym", "granularity", "group", "clip", "size_mb",
           "vs_float", "vs_4bit", "eff_bits", "wer", "cer", "rel_wer_change", "words"]


def load_runs(root: Path) -> list[dict]:
    runs = []
    for path in sorted(root.rglob("results.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            data = {"status": "failed", "error": f"unreadable results.json: {e}"}
        data["_path"] = short_run_name(path.parent.relative_to(root))
        runs.append(data)
    return runs


def short_run_name(rel: Path) -> str:
    """'ptq_group/13_quant.bits=4,quant.clip=mse,...' -> 'ptq_group/13' (Hydra job folders
    start with the job number; the overrides are in the other columns)."""
    parts = [p.split("_", 1)[0] if p[:1].isdigit() else p for p in rel.parts]
    return "/".join(parts) or "."


def _spec_fields(run: dict) -> dict:
    recipe = run.get("recipe") or {}
    default = recipe.get("default") or {}
    mixed = bool(recipe.get("rules"))
    if default and not mixed:
        kind = "sym" if default.get("symmetric") else "asym"
        gran = {"tensor": "tensor", "channel": "ch"}.get(default.get("granularity"),
                                                          f"g{default.get('group_size')}")
        clip = "" if default.get("clip", "none") == "none" else f" {default.get('clip')}"
        label = f"int{default.get('bits')} {kind} {gran}{clip}"
    else:
        label = recipe.get("name") or "float"
    return {
        "recipe": label,
        "bits": ("mixed" if mixed else default.get("bits")) if default else
                ("mixed" if mixed else 32),
        "sym": default.get("symmetric", ""),
        "granularity": default.get("granularity", ""),
        "group": default.get("group_size") or "",
        "clip": default.get("clip", ""),
    }


def build_rows(runs: list[dict], test_set: str, baseline: dict | None = None):
    ok = [r for r in runs if r.get("status") == "ok" and test_set in (r.get("test") or {})]
    failed = [r for r in runs if r.get("status") != "ok"]
    floats = [r for r in ok if r.get("mode") == "float"]
    base = baseline or (floats[0] if floats else None)
    rows = []
    for r in ok:
        t = r["test"][test_set]
        rows.append({"run": r["_path"], "mode": r.get("mode", ""), **_spec_fields(r),
                     "size_mb": r["size_bytes"] / 1e6, "eff_bits": r.get("effective_bits"),
                     "wer": t["wer"], "cer": t.get("cer"), "words": t.get("words")})
    fours = [row for row in rows if row["bits"] == 4]
    best4 = min(fours, key=lambda row: row["wer"]) if fours else None
    base_size = base["size_bytes"] / 1e6 if base else None
    base_wer = base["test"][test_set]["wer"] if base else None
    for row in rows:
        row["vs_float"] = row["size_mb"] / base_size if base_size else None
        row["vs_4bit"] = row["size_mb"] / best4["size_mb"] if best4 else None
        row["rel_wer_change"] = ((row["wer"] - base_wer) / base_wer
                                 if base_wer else None)
    rows.sort(key=lambda row: (-row["size_mb"], row["wer"]))
    return rows, failed, best4


def pareto_front(rows: list[dict]) -> list[dict]:
    """Runs no other run beats on both size and WER (smaller or equal on both, better on one)."""
    front = []
    for r in rows:
        dominated = any(o is not r and o["size_mb"] <= r["size_mb"] and o["wer"] <= r["wer"]
                        and (o["size_mb"] < r["size_mb"] or o["wer"] < r["wer"]) for o in rows)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r["size_mb"])


def _fmt(v, col):
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if col in ("vs_float", "vs_4bit"):
            return f"{v:.3f}"
        if col == "rel_wer_change":
            return f"{v:+.1%}"
        if col in ("wer", "cer"):
            return f"{v:.4f}"
        return f"{v:.3f}"
    return str(v)


def markdown(rows, failed, best4, test_set, words) -> str:
    lines = [f"Test set: `{test_set}` ({words} words). Sizes count codes, scales and zero points "
             "and float parameters (see docs/method.md). `vs_4bit`: relative to the best 4-bit "
             f"run{' (' + best4['run'] + ')' if best4 else ''}. Pareto-optimal runs in bold.",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    front = {id(r) for r in pareto_front(rows)}
    for r in rows:
        cells = [_fmt(r.get(c), c) for c in COLUMNS]
        if id(r) in front:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "Failed runs:", ""]
        for r in failed:
            overrides = " ".join(r.get("overrides") or [])
            where = f"`{r['_path']}`" + (f" (`{overrides}`)" if overrides else "")
            lines.append(f"- {where}: {r.get('error', 'unknown error')}")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows, failed) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS + ["status", "error"])
    w.writeheader()
    for r in rows:
        w.writerow({**{c: r.get(c) for c in COLUMNS}, "status": "ok", "error": ""})
    for r in failed:
        w.writerow({"run": r["_path"], "status": "failed", "error": r.get("error", "")})
    atomic_write_text(path, buf.getvalue())


def plot(path: Path, rows, title: str) -> None:
    """WER (log scale) against size (log scale); Pareto-optimal runs circled and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["mode"] != "packed"]  # same WER as the run it came from
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"float": ("s", "black", "float"), "finetune": ("s", "grey", "float fine-tuned"),
              "ptq": ("o", "tab:blue", "PTQ"), "qat": ("^", "tab:orange", "QAT")}
    for mode, (marker, color, label) in styles.items():
        pts = [r for r in rows if r["mode"] == mode]
        if pts:
            ax.scatter([r["size_mb"] for r in pts], [max(r["wer"], 1e-4) for r in pts],
                       marker=marker, color=color, label=label, s=28, zorder=3)
    front = pareto_front(rows)
    ax.plot([r["size_mb"] for r in front], [max(r["wer"], 1e-4) for r in front], "-",
            color="tab:red", label="Pareto front", zorder=2)
    ax.scatter([r["size_mb"] for r in front], [max(r["wer"], 1e-4) for r in front],
               facecolors="none", edgecolors="tab:red", s=110, zorder=4)
    for r in front:
        ax.annotate(r["recipe"] + (" (QAT)" if r["mode"] == "qat" else ""),
                    (r["size_mb"], max(r["wer"], 1e-4)), fontsize=7, xytext=(5, 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model size (MB, log scale)")
    ax.set_ylabel("WER (log scale)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def export_table(root: Path) -> str | None:
    """Markdown table of the packed files under `root` (export.json of asrquant-export)."""
    exports = []
    for path in sorted(root.rglob("export.json")):
        data = json.loads(path.read_text())
        if data.get("status") == "ok":
            data["_path"] = str(path.parent.relative_to(root))
            exports.append(data)
    if not exports:
        return None
    fours = [e for e in exports if (e["recipe"].get("default") or {}).get("bits") == 4
             and not e["recipe"].get("rules")]
    floats = [e for e in exports
              if not e["recipe"].get("default") and not e["recipe"].get("rules")]
    f32 = floats[0] if floats else None
    four = min(fours, key=lambda e: e["file_bytes"]) if fours else None
    lines = ["| run | recipe | eff. bits | predicted bytes | tensor bytes | header bytes | "
             "file bytes | file MB | file vs float32 | file vs 4-bit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(exports, key=lambda e: -e["file_bytes"]):
        vs4 = f"{e['file_bytes'] / four['file_bytes']:.3f}" if four else ""
        vsf = f"{e['file_bytes'] / f32['file_bytes']:.4f}" if f32 else ""
        bits = e.get("effective_bits")
        lines.append(f"| {e['_path']} | {e['recipe'].get('name')} | "
                     f"{'' if bits is None else f'{bits:.3f}'} | "
                     f"{e['predicted_bytes']} | {e['tensor_bytes']} | {e['header_bytes']} | "
                     f"{e['file_bytes']} | {e['file_bytes'] / 1e6:.3f} | {vsf} | {vs4} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--test-set", default="test")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="results.json of the float model, if not inside the sweep")
    ap.add_argument("--title", default="WER against model size")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        ap.error(f"sweep_dir {str(args.sweep_dir)!r} is not a folder")
    runs = load_runs(args.sweep_dir)
    if not runs:
        ap.error(f"no results.json under {str(args.sweep_dir)!r}")
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    rows, failed, best4 = build_rows(runs, args.test_set, baseline)
    out = args.out or args.sweep_dir
    words = rows[0]["words"] if rows else 0
    md = markdown(rows, failed, best4, args.test_set, words)
    atomic_write_text(out / "results.md", md)
    write_csv(out / "results.csv", rows, failed)
    if rows:
        plot(out / "wer_vs_size.png", rows, args.title)
    exports = export_table(args.sweep_dir)
    if exports:
        atomic_write_text(out / "exports.md", exports)
        print(exports)
    print(md)
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}"
          + (f", {out / 'wer_vs_size.png'}" if rows else ""))


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------- learning curves

def learning_curve(run_dir: Path) -> list[dict]:
    """Per epoch: step, mean train loss, dev loss/WER/CER, from the run's CSV log."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no CSV log at {str(path)!r} (train with logger=csv)")
    epochs: dict[int, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            e = epochs.setdefault(int(row["epoch"]), {"epoch": int(row["epoch"]), "losses": []})
            if row.get("train/loss"):
                e["losses"].append(float(row["train/loss"]))
                e["step"] = int(row["step"])
            for key in ("val/wer", "val/cer", "val/loss"):
                if row.get(key):
                    e[key.replace("val/", "dev_")] = float(row[key])
                    e["step"] = int(row["step"])
    out = []
    for e in sorted(epochs.values(), key=lambda e: e["epoch"]):
        losses = e.pop("losses")
        e["train_loss"] = sum(losses) / len(losses) if losses else None
        if e["train_loss"] is not None or "dev_wer" in e:
            out.append(e)
    return out


def curve_main(argv: list[str] | None = None) -> None:
    """asrquant-curve RUN_DIR [--out DIR]: learning curve (loss and dev WER per epoch) of a
    training run as Markdown table and PNG."""
    ap = argparse.ArgumentParser(description="learning curve of a training run")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--title", default="learning curve")
    args = ap.parse_args(argv)
    rows = learning_curve(args.run_dir)
    out = args.out or args.run_dir
    lines = ["| epoch | step | train loss | dev loss | dev WER | dev CER |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| {} | {} | {} | {} | {} | {} |".format(
            r["epoch"], r.get("step", ""), *(_fmt(r.get(k), "x") for k in (
                "train_loss", "dev_loss")), *(_fmt(r.get(k), "wer") for k in ("dev_wer",
                                                                               "dev_cer"))))
    atomic_write_text(out / "learning_curve.md", "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(7, 4))
    ep = [r["epoch"] + 1 for r in rows]
    ax1.plot(ep, [r.get("train_loss") for r in rows], "o-", label="train loss")
    ax1.plot(ep, [r.get("dev_loss") for r in rows], "s-", label="dev loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("CTC loss per token")
    ax2 = ax1.twinx()
    ax2.plot(ep, [r.get("dev_wer") for r in rows], "^-", color="tab:red", label="dev WER")
    ax2.set_ylabel("dev WER")
    ax2.set_ylim(0, max(1.0, max((r.get("dev_wer") or 0) for r in rows)))
    handles = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax1.legend(handles, [h.get_label() for h in handles], loc="upper right")
    ax1.set_title(args.title)
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out / "learning_curve.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    print("\n".join(lines))
