"""parity.md / parity.json from the runs of recipes/onnx/parity.sh (OUT DOCS CORPUS)."""

import json
import sys
from pathlib import Path

from asrquant.io import atomic_write_json, atomic_write_text


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def main(out: str, docs: str, corpus: str) -> None:
    out, docs = Path(out), Path(docs)
    rows = []
    for folder in sorted((out / "eval").iterdir()):
        runs = {p.name: load(p / "results.json") for p in folder.iterdir()}
        runs = {k: v for k, v in runs.items() if v and v.get("status") == "ok"}
        if not runs:
            continue
        any_run = next(iter(runs.values()))
        sets = list(any_run["test"])
        row = {"model": folder.name, "sets": sets}
        for kind, r in runs.items():
            row[kind] = {"wer": {s: r["test"][s]["wer"] for s in sets},
                         "words": {s: r["test"][s].get("words") for s in sets},
                         "file_bytes": r.get("file_bytes")}
        rows.append(row)
    sets = rows[0]["sets"] if rows else []
    words = next((r[k]["words"] for r in rows for k in ("packed", "onnx0") if k in r), {})
    lines = [f"# ONNX parity on {corpus}", "",
             "Test WER of each model as a packed torch file (`asrquant-eval packed=`) and as "
             "its ONNX export run by onnxruntime (`asrquant-eval onnx=`, MatMulNBits at "
             "accuracy_level 0 = float32 compute, and 4 = int8 activations); `ort_*` rows are "
             "onnxruntime's own MatMulNBitsQuantizer on our float ONNX (accuracy_level 4, "
             "Linears only: convolutions stay float32). Made by `bash recipes/onnx/parity.sh "
             f"{corpus} ...`. Words per set: "
             + ", ".join(f"{s} {words.get(s)}" for s in sets) + ".", ""]
    head = "| model | " + " | ".join(f"{s}: packed | {s}: onnx L0 | {s}: onnx L4"
                                      for s in sets)
    lines += [head + " | same L0 WER | packed bytes | onnx bytes | onnx / packed |",
              "|" + "---|" * (4 + 3 * len(sets)) + "---|"]

    def pct(x):
        return "" if x is None else f"{100 * x:.2f}%"

    for r in rows:
        cells = []
        same = []
        for s in sets:
            p = r.get("packed", {}).get("wer", {}).get(s)
            o0 = r.get("onnx0", {}).get("wer", {}).get(s)
            o4 = r.get("onnx4", {}).get("wer", {}).get(s)
            cells += [pct(p), pct(o0), pct(o4)]
            if p is not None and o0 is not None:
                same.append(p == o0)
        pb = r.get("packed", {}).get("file_bytes")
        ob = (r.get("onnx0") or r.get("onnx4") or {}).get("file_bytes")
        ratio = f"{ob / pb:.3f}" if pb and ob else ""
        lines.append(f"| {r['model']} | " + " | ".join(cells)
                     + f" | {'yes' if same and all(same) else ('NO' if same else '')} | "
                     + f"{pb or ''} | {ob or ''} | {ratio} |")
    atomic_write_text(docs / "parity.md", "\n".join(lines) + "\n")
    atomic_write_json(docs / "parity.json", rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:4])
