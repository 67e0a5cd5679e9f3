"""asrquant-report: one table and one plot from a sweep's results.json files.

    asrquant-report SWEEP_DIR [--out DIR] [--test-set test] [--baseline results.json]
    asrquant-report --compare synthetic=runs/synthetic_study fsdd=runs/fsdd_study --out F.md

Reads every results.json under SWEEP_DIR (a Hydra multirun folder, or any tree of runs) and
writes into --out (default SWEEP_DIR):
  results.md   the study table (one row per recipe: PTQ and QAT WER, file size, size
               against float32 and the best 4-bit model, relative WER change), the findings
               on each of the paper's claims computed from these numbers, every run, and the
               failed runs with their errors;
  results.csv  every run; study.csv the study table;
  wer_vs_size.png (Pareto front marked), wer_vs_group_size.png (2 bits, sym/asym, +-clip).
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
            lines.append(f"- {where}: {failure_text(r)}")
    return "\n".join(lines) + "\n"


def failure_text(run: dict) -> str:
    """The error of a run that is not ok; a run still marked "running" was killed outright
    (SIGKILL, out of memory, a time limit) or has not finished yet."""
    if run.get("status") == "running":
        return (f"did not finish: status 'running' since {run.get('started', '?')} (killed, "
                "e.g. out of memory or a time limit, or still running)")
    return run.get("error") or f"unknown error (status {run.get('status')!r})"


def write_csv(path: Path, rows, failed) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS + ["status", "error"])
    w.writeheader()
    for r in rows:
        w.writerow({**{c: r.get(c) for c in COLUMNS}, "status": "ok", "error": ""})
    for r in failed:
        w.writerow({"run": r["_path"], "status": r.get("status") or "failed",
                    "error": failure_text(r)})
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
    _finish(fig, ax, path, title)


def _finish(fig, ax, path: Path, title: str) -> None:
    """Title, grid, legend; written atomically as PNG."""
    import matplotlib.pyplot as plt

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


# ------------------------------------------------------------------- the study table

STUDY_COLUMNS = ["recipe", "bits", "sym", "granularity", "group", "clip", "ptq_wer", "qat_wer",
                 "size_mb", "vs_float32", "vs_best_4bit", "rel_wer_ptq", "rel_wer_qat"]


def _run_bytes(run: dict) -> tuple[int, bool]:
    """(bytes, from_file): the exported file's size when the run wrote one (eval
    export=true), else the report's predicted parameter bytes (`size_bytes`)."""
    if run.get("file_bytes"):
        return int(run["file_bytes"]), True
    return int(run["size_bytes"]), False


def study_rows(runs: list[dict], test_set: str):
    """One row per recipe. PTQ WER from the post-training run (for float: the baseline),
    QAT WER from the fine-tuned run (for float: the control fine-tuned for the same steps)."""
    ok = [r for r in runs if r.get("status") == "ok" and test_set in (r.get("test") or {})]
    by_label: dict[str, dict] = {}
    for r in ok:
        fields = _spec_fields(r)
        row = by_label.setdefault(fields["recipe"], {**fields, "runs": []})
        row["runs"].append(r["_path"])
        wer = r["test"][test_set]["wer"]
        if r.get("mode") in ("ptq", "float"):
            row["ptq_wer"] = wer
        elif r.get("mode") in ("qat", "finetune"):
            row["qat_wer"] = wer
        else:
            continue
        nbytes, from_file = _run_bytes(r)
        if from_file or "size_bytes" not in row:
            row["size_bytes"], row["from_file"] = nbytes, from_file
    rows = [r for r in by_label.values() if "size_bytes" in r]
    for r in rows:
        r["size_mb"] = r["size_bytes"] / 1e6
    floats = [r for r in rows if r["bits"] == 32]
    base = floats[0] if floats else None
    fours = [r for r in rows if r["bits"] == 4 and r.get("ptq_wer") is not None]
    best4 = min(fours, key=lambda r: (r["ptq_wer"], r["size_bytes"])) if fours else None
    for r in rows:
        r["vs_float32"] = r["size_bytes"] / base["size_bytes"] if base else None
        r["vs_best_4bit"] = r["size_bytes"] / best4["size_bytes"] if best4 else None
        for mode in ("ptq", "qat"):
            ref = base.get(f"{mode}_wer") if base else None
            wer = r.get(f"{mode}_wer")
            r[f"rel_wer_{mode}"] = (wer - ref) / ref if ref and wer is not None else None
    rows.sort(key=lambda r: (-r["size_bytes"], r.get("ptq_wer") or 0))
    return rows, base, best4


def study_markdown(rows, best4, test_set: str, words: int) -> str:
    file_note = ("all sizes are exported files' bytes" if all(r["from_file"] for r in rows)
                 else "sizes marked * are predicted parameter bytes (no file exported)")
    lines = [f"Test set `{test_set}`, {words} words (one word = {100 / max(words, 1):.3f} WER "
             f"points). PTQ: post-training quantization of the float model; QAT: fine-tuned "
             f"with fake quantization; the float row's QAT column is the float control "
             f"fine-tuned for the same steps. `rel_wer_*`: relative to the float baseline "
             f"(PTQ) or the float control (QAT). Best 4-bit: "
             f"{best4['recipe'] if best4 else 'none'}; {file_note}.", "",
             "| " + " | ".join(STUDY_COLUMNS) + " |", "|" + "---|" * len(STUDY_COLUMNS)]
    fmt = {"ptq_wer": "wer", "qat_wer": "wer", "vs_float32": "vs_float", "vs_best_4bit":
           "vs_4bit", "rel_wer_ptq": "rel_wer_change", "rel_wer_qat": "rel_wer_change"}
    for r in rows:
        cells = [_fmt(r.get(c), fmt.get(c, c)) for c in STUDY_COLUMNS]
        if not r["from_file"]:
            cells[STUDY_COLUMNS.index("size_mb")] += "*"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _noise_points(wer: float, words: int) -> float:
    """One binomial standard deviation of a WER measured on `words` words, in points."""
    p = min(max(wer, 1e-9), 1.0)
    return 100 * math.sqrt(p * (1 - p) / max(words, 1)) if p < 1 else 0.0


def finding_items(rows, base, best4, words: int) -> list[tuple[str, str]]:
    """(claim, what our numbers say) for each claim of Rybakov et al. (2023); computed."""
    def find(bits, sym, gran, group, clip):
        for r in rows:
            if (r["bits"], r["sym"], r["granularity"], r["group"] or None, r["clip"]) == (
                    bits, sym, gran, group, clip):
                return r
        return None

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.2f}%"

    out = []
    two = [r for r in rows if r["bits"] == 2 and r.get("ptq_wer") is not None]
    # 1. asymmetric vs symmetric at 2 bits, matched on granularity and clipping
    pairs = []
    for a in (r for r in two if r["sym"] is False):
        s = find(2, True, a["granularity"], a["group"] or None, a["clip"])
        if s is not None and s.get("ptq_wer") is not None:
            pairs.append((a, s))
    if pairs:
        wins = sum(a["ptq_wer"] < s["ptq_wer"] for a, s in pairs)
        eg = min(pairs, key=lambda p: p[0]["ptq_wer"])
        verdict = "holds" if wins == len(pairs) else ("mostly holds" if wins > len(pairs) / 2
                                                      else "does not hold")
        out.append(("Asymmetric beats symmetric at 2 bits", f"(paper: yes): {verdict} here: "
                   f"asymmetric has the lower PTQ WER in {wins} of {len(pairs)} matched pairs "
                   f"(same granularity and clipping); best pair {eg[0]['recipe']} "
                   f"{pct(eg[0]['ptq_wer'])} vs {eg[1]['recipe']} {pct(eg[1]['ptq_wer'])}."))
    # 2. sub-channel vs per-channel
    pairs = []
    for c in (r for r in rows if r["granularity"] == "channel" and r.get("ptq_wer") is not None
              and r["bits"] in (2, 3, 4)):
        groups = [r for r in rows if r["bits"] == c["bits"] and r["sym"] == c["sym"]
                  and r["clip"] == c["clip"] and r["granularity"] == "group"
                  and r.get("ptq_wer") is not None]
        if groups:
            g = min(groups, key=lambda r: r["group"])
            pairs.append((g, c))
    if pairs:
        wins = sum(g["ptq_wer"] <= c["ptq_wer"] for g, c in pairs)
        at2 = [(g, c) for g, c in pairs if c["bits"] == 2]
        eg = ("; at 2 bits: " + ", ".join(
            f"{c['recipe']} {pct(c['ptq_wer'])} -> g{g['group']} {pct(g['ptq_wer'])}"
            for g, c in at2)) if at2 else ""
        out.append(("Sub-channel (small groups) beats per-channel", f"(paper: yes, at a small "
                   f"size cost): the smallest group is at least as good as per-channel in "
                   f"{wins} of {len(pairs)} matched pairs at 2-4 bits{eg}."))
    # 3. clipping
    by_bits = {}
    for r in (r for r in rows if r["clip"] == "mse" and r.get("ptq_wer") is not None):
        n = find(r["bits"], r["sym"], r["granularity"], r["group"] or None, "none")
        if n is not None and n.get("ptq_wer") is not None:
            d = by_bits.setdefault(r["bits"], [0, 0, 0])
            d[0 if r["ptq_wer"] < n["ptq_wer"] else 1 if r["ptq_wer"] > n["ptq_wer"] else 2] += 1
    if by_bits:
        parts = [f"{b} bits: better {d[0]}, worse {d[1]}, equal {d[2]}"
                 for b, d in sorted(by_bits.items())]
        out.append(("Clipping (MSE search of the clip range) helps at low bits", "(paper: "
                   "yes): PTQ WER with mse clipping against none, matched pairs, "
                   + "; ".join(parts) + "."))
    # 4. lossless 2-bit with QAT
    qat2 = [r for r in two if r.get("qat_wer") is not None]
    control = base.get("qat_wer") if base else None
    if qat2 and control is not None:
        r = min(qat2, key=lambda r: r["qat_wer"])
        diff = 100 * (r["qat_wer"] - control)
        noise = _noise_points(control, words)
        verdict = ("holds (within one standard deviation)" if diff <= noise
                   else "does not hold here")
        out.append(("2-bit QAT is lossless", f"(paper: yes, on LibriSpeech): {verdict}: "
                   f"{r['recipe']} after QAT {pct(r['qat_wer'])} against the float control "
                   f"{pct(control)} fine-tuned for the same steps ({diff:+.2f} points; one "
                   f"standard deviation {noise:.2f}); PTQ of the same recipe "
                   f"{pct(r.get('ptq_wer'))}."))
    # 5. size against 4-bit
    if best4 and two:
        cand = qat2 or two
        key = "qat_wer" if qat2 else "ptq_wer"
        r = min(cand, key=lambda r: r[key])
        saved = 1 - r["size_bytes"] / best4["size_bytes"]
        out.append(("2-bit is about a third smaller than the best 4-bit model", f"(paper: "
                   f"32%): {r['recipe']} is {r['size_mb']:.3f} MB against {best4['recipe']} "
                   f"{best4['size_mb']:.3f} MB: {100 * saved:.1f}% smaller (at WER "
                   f"{pct(r[key])} vs {pct(best4.get('ptq_wer'))})."))
    # 6. mixed precision search against uniform recipes at equal size
    mixed = [r for r in rows if r["bits"] == "mixed" and r.get("ptq_wer") is not None]
    for m in mixed:
        near = [r for r in rows if r["bits"] in (2, 3, 4) and r.get("ptq_wer") is not None
                and r["size_bytes"] <= m["size_bytes"] * 1.02]
        as_good = [r for r in rows if r["bits"] in (2, 3, 4, 8)
                   and r.get("ptq_wer") is not None and r["ptq_wer"] <= m["ptq_wer"]]
        if near:
            u = min(near, key=lambda r: r["ptq_wer"])
            text = (f"({m['size_mb']:.3f} MB): PTQ {pct(m['ptq_wer'])} against the best "
                    f"uniform recipe no larger than it (+2%), {u['recipe']} "
                    f"({u['size_mb']:.3f} MB) {pct(u['ptq_wer'])}")
            if as_good:
                g = min(as_good, key=lambda r: r["size_bytes"])
                text += (f"; the smallest uniform recipe at least as good is {g['recipe']} "
                         f"({g['size_mb']:.3f} MB, {pct(g['ptq_wer'])})")
            out.append((f"Mixed precision {m['recipe']}", text + "."))
    return out


def findings(rows, base, best4, words: int) -> str:
    lines = ["Each line below is computed by asrquant-report from the table above. Noise: one "
             f"binomial standard deviation of a WER w on {words} words is "
             f"100*sqrt(w(1-w)/{words}) points.", ""]
    lines += [f"- **{claim}** {text}" for claim, text in finding_items(rows, base, best4, words)]
    return "\n".join(lines) + "\n"


def plot_group_size(path: Path, rows, title: str, bits: int = 2) -> bool:
    """PTQ WER against group size at `bits` bits: sym/asym, with and without clipping;
    per-channel drawn at the right end. False if the sweep has no such runs."""
    pts = [r for r in rows if r["bits"] == bits and r.get("ptq_wer") is not None
           and r["granularity"] in ("group", "channel")]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in pts if r["granularity"] == "group"})
    xs = {g: i for i, g in enumerate(groups)}
    xs["ch"] = len(groups)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for sym, color in ((False, "tab:blue"), (True, "tab:orange")):
        for clip, style in (("none", "o-"), ("mse", "s--")):
            line = [r for r in pts if r["sym"] == sym and r["clip"] == clip]
            line.sort(key=lambda r: xs[r["group"] if r["granularity"] == "group" else "ch"])
            if line:
                ax.plot([xs[r["group"] if r["granularity"] == "group" else "ch"] for r in line],
                        [100 * r["ptq_wer"] for r in line], style, color=color,
                        label=f"{'sym' if sym else 'asym'}, clip {clip}")
    ax.set_xticks(range(len(groups) + 1), [str(g) for g in groups] + ["per-channel"])
    ax.set_xlabel("group size (weights per scale along the input dimension)")
    ax.set_ylabel("test WER (%), PTQ")
    ax.set_yscale("log")
    _finish(fig, ax, path, title)
    return True


def study_points(study) -> list[dict]:
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


def write_study_csv(path: Path, rows) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=STUDY_COLUMNS + ["size_from_file", "runs"])
    w.writeheader()
    for r in rows:
        w.writerow({**{c: r.get(c) for c in STUDY_COLUMNS}, "size_from_file": r["from_file"],
                    "runs": " ".join(r["runs"])})
    atomic_write_text(path, buf.getvalue())


def compare_markdown(studies: dict[str, list[dict]], test_set: str = "test") -> str:
    """The findings of several studies (name -> runs) side by side, claim by claim."""
    per = {}
    for name, runs in studies.items():
        rows, base, best4 = study_rows(runs, test_set)
        words = next((r["test"][test_set].get("words", 0) for r in runs
                      if r.get("status") == "ok" and test_set in (r.get("test") or {})), 0)
        per[name] = (dict(finding_items(rows, base, best4, words)), words)
    claims = list(dict.fromkeys(c for items, _ in per.values() for c in items))
    names = list(per)
    lines = ["| claim | " + " | ".join(f"{n} ({per[n][1]} test words)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for c in claims:
        lines.append(f"| **{c}** | " + " | ".join(per[n][0].get(c, "not measured")
                                                  for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path, nargs="?")
    ap.add_argument("--compare", nargs="+", metavar="NAME=SWEEP_DIR", default=None,
                    help="write the findings of several studies side by side to --out "
                         "(a .md file) instead of one sweep's report")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--test-set", default="test")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="results.json of the float model, if not inside the sweep")
    ap.add_argument("--title", default="WER against model size")
    args = ap.parse_args(argv)
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
        ap.error("sweep_dir is required (or --compare NAME=DIR ...)")
    if not args.sweep_dir.is_dir():
        ap.error(f"sweep_dir {str(args.sweep_dir)!r} is not a folder")
    runs = load_runs(args.sweep_dir)
    if not runs:
        ap.error(f"no results.json under {str(args.sweep_dir)!r}")
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    rows, failed, best4 = build_rows(runs, args.test_set, baseline)
    out = args.out or args.sweep_dir
    words = rows[0]["words"] if rows else 0
    study, base, best4_study = study_rows(runs, args.test_set)
    md = markdown(rows, failed, best4, args.test_set, words)
    if study:
        md = (f"# {args.title}\n\n## Recipes\n\n"
              + study_markdown(study, best4_study, args.test_set, words)
              + "\n## Findings\n\n" + findings(study, base, best4_study, words)
              + "\n## All runs\n\n" + md)
        write_study_csv(out / "study.csv", study)
        plot_group_size(out / "wer_vs_group_size.png", study,
                        f"{args.title}: 2-bit PTQ WER against group size")
    atomic_write_text(out / "results.md", md)
    write_csv(out / "results.csv", rows, failed)
    if study:  # the study's sizes (exported files; a QAT run has its recipe's PTQ file size)
        plot(out / "wer_vs_size.png", study_points(study), args.title)
    elif rows:
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
