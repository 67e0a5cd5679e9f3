"""Rows -> Markdown and CSV: the table of every run, the study table, studies compared claim by
claim, packed exports, a learning curve and a search's most sensitive groups."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from asrquant.io import atomic_write_text

from .findings import finding_items
from .runs import dev_words_of, pareto_front, study_rows, without_paths

COLUMNS = ["run", "mode", "recipe", "bits", "sym", "granularity", "group", "clip", "size_mb",
           "vs_float", "vs_4bit", "eff_bits", "wer", "cer", "rel_wer_change", "words", "dev_wer"]
STUDY_COLUMNS = ["recipe", "bits", "sym", "granularity", "group", "clip", "ptq_wer", "ptq_dev_wer",
                 "qat_wer", "size_mb", "vs_float32", "vs_best_4bit", "rel_wer_ptq", "rel_wer_qat"]


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
        if col in ("wer", "cer", "dev_wer"):
            return f"{v:.4f}"
        return f"{v:.3f}"
    return str(v)


def best4_note(best4, label: str, rows) -> str:
    """How the 4-bit reference was chosen: by dev WER, or why there is none. `label`: the
    row field that names it ("run" or "recipe")."""
    if best4:
        mode = f" ({best4['ref_mode'].upper()})" if best4.get("ref_mode") else ""
        return f"(chosen by dev WER, never test): {best4[label]}{mode}"
    if any(r["bits"] == 4 for r in rows):
        return ("(none: no 4-bit PTQ run recorded a dev WER; results from before asrquant-eval "
                "scored the dev split must be rerun)")
    return "(none: no 4-bit PTQ run)"


def markdown(rows, failed, best4, test_set, words) -> str:
    lines = [f"Test set: `{test_set}` ({words} words). Sizes count codes, scales and zero points "
             "and float parameters (see docs/method.md). `vs_4bit`: relative to the best 4-bit "
             f"PTQ run {best4_note(best4, 'run', rows)}. `dev_wer`: the dev "
             "split, where references are chosen. Pareto-optimal runs in bold.",
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
            overrides = " ".join(without_paths(r.get("overrides") or []))
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
    """Every run: the table's columns, status, error and the run's folder."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS + ["status", "error", "folder"])
    w.writeheader()
    for r in rows:
        w.writerow({**{c: r.get(c) for c in COLUMNS}, "status": "ok", "error": "",
                    "folder": r.get("folder", "")})
    for r in failed:
        w.writerow({"run": r["_path"], "status": r.get("status") or "failed",
                    "error": failure_text(r), "folder": r["_path"]})
    atomic_write_text(path, buf.getvalue())


def study_markdown(rows, best4, test_set: str, words: int) -> str:
    file_note = ("all sizes are exported files' bytes" if all(r["from_file"] for r in rows)
                 else "sizes marked * are predicted parameter bytes (no file exported)")
    if any(r.get("base") != r["recipe"] and r.get("qat_wer") is not None
           and r.get("ptq_wer") is None for r in rows):
        file_note += ("; a QAT-only row (its label ends with the QAT ingredients) has its "
                      "recipe's file size, which does not depend on the codes")
    lines = [f"Test set `{test_set}`, {words} words (one word = {100 / max(words, 1):.3f} WER "
             f"points). PTQ: post-training quantization of the float model; QAT: fine-tuned "
             f"with fake quantization; the float row's QAT column is the float control "
             f"fine-tuned for the same steps. `rel_wer_*`: relative to the float baseline "
             f"(PTQ) or the float control (QAT). `ptq_dev_wer`: the PTQ run on the dev split. "
             f"Best 4-bit {best4_note(best4, 'recipe', rows)}; {file_note}.",
             "",
             "| " + " | ".join(STUDY_COLUMNS) + " |", "|" + "---|" * len(STUDY_COLUMNS)]
    fmt = {"ptq_wer": "wer", "ptq_dev_wer": "wer", "qat_wer": "wer", "vs_float32": "vs_float",
           "vs_best_4bit": "vs_4bit", "rel_wer_ptq": "rel_wer_change",
           "rel_wer_qat": "rel_wer_change"}
    for r in rows:
        cells = [_fmt(r.get(c), fmt.get(c, c)) for c in STUDY_COLUMNS]
        if not r["from_file"]:
            cells[STUDY_COLUMNS.index("size_mb")] += "*"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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
        per[name] = (dict(finding_items(rows, base, best4, words, dev_words_of(runs))), words)
    claims = list(dict.fromkeys(c for items, _ in per.values() for c in items))
    names = list(per)
    lines = ["| claim | " + " | ".join(f"{n} ({per[n][1]} test words)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for c in claims:
        lines.append(f"| **{c}** | " + " | ".join(per[n][0].get(c, "not measured")
                                                  for n in names) + " |")
    return "\n".join(lines) + "\n"


def export_table(exports: list[dict]) -> str | None:
    """Markdown table of packed files (load_exports: the export.json of asrquant-export)."""
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


def curve_markdown(rows: list[dict]) -> str:
    """The learning curve (runs.learning_curve) as a table, one row per epoch."""
    lines = ["| epoch | step | train loss | dev loss | dev WER | dev CER |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| {} | {} | {} | {} | {} | {} |".format(
            r["epoch"], r.get("step", ""), *(_fmt(r.get(k), "x") for k in (
                "train_loss", "dev_loss")), *(_fmt(r.get(k), "wer") for k in ("dev_wer",
                                                                               "dev_cer"))))
    return "\n".join(lines) + "\n"


def sensitivity_table(search: dict, top: int = 7) -> str:
    """The `top` largest dev-loss increases of an asrquant-search result (search.json), each
    group quantized alone at one candidate, largest first: `groups[i]["change"][candidate]` is
    the dev-loss change, `groups[i]["dev"][candidate]["wer"]` the dev WER."""
    found = [(g["name"], cand, change, (g.get("dev") or {}).get(cand, {}).get("wer"))
             for g in search["groups"] for cand, change in g["change"].items()]
    # a change recorded as null (NaN in the measurement) cannot be ranked: listed last
    found.sort(key=lambda x: (x[2] is None, -(x[2] or 0.0), x[0], x[1]))
    lines = ["| group @ candidate | dev loss change | dev WER |", "|---|---|---|"]
    for name, cand, change, wer in found[:top]:
        lines.append(f"| {name} @ {cand} | {'n/a' if change is None else f'{change:+.4f}'} | "
                     f"{'' if wer is None else f'{100 * wer:.2f}%'} |")
    return "\n".join(lines) + "\n"


def speaker_markdown(runs: list[dict], test_set: str = "test") -> str | None:
    """Test WER per speaker (asrquant-eval's `per_speaker`), one row per run, one column per
    speaker, so one sees whether a recipe hurts some speakers more than others; the last row
    counts each speaker's words (one word = 100/words WER points). None when no run has it."""
    with_table = [r for r in runs if r.get("status") == "ok"
                  and ((r.get("test") or {}).get(test_set) or {}).get("per_speaker")]
    if not with_table:
        return None
    speakers = sorted({s for r in with_table for s in r["test"][test_set]["per_speaker"]})
    words: dict[str, int] = {}
    lines = [f"Test set `{test_set}`: WER (%) per speaker.", "",
             "| run | " + " | ".join(speakers) + " | all |",
             "|" + "---|" * (len(speakers) + 2)]
    for r in with_table:
        t = r["test"][test_set]
        cells = []
        for s in speakers:
            e = t["per_speaker"].get(s)
            cells.append(f"{100 * e['wer']:.1f}" if e else "")
            if e:
                words.setdefault(s, e["words"])
        lines.append(f"| {r.get('_name') or r.get('_path')} | " + " | ".join(cells)
                     + f" | {100 * t['wer']:.2f} |")
    lines.append("| words | " + " | ".join(str(words.get(s, "")) for s in speakers)
                 + f" | {sum(words.values())} |")
    return "\n".join(lines) + "\n"
