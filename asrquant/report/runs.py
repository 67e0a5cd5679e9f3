"""Results files -> rows: the runs of a sweep and their names, the table of every run, the
study table (one row per recipe), the Pareto front, packed exports and learning curves."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from asrquant.quant import QuantSpec

# Override keys that name files or folders: never part of a run's name.
PATH_KEYS = ("ckpt", "packed", "init_from", "out", "cache_dir", "data.root", "data.dir",
             "data.train", "data.val", "data.test", "data.extra_test", "data.synthetic.cache_dir",
             "augment.noise_manifest")
_JOB_FOLDER = re.compile(r"^\d+(_|$)")  # Hydra sweep members: '<job number>[_<overrides>]'


def load_runs(root: Path) -> list[dict]:
    """Every results.json under `root`, each with `_path` (its folder, short), `_overrides`
    (the Hydra overrides it ran with) and `_name` (what the tables call it: see run_names)."""
    runs = []
    for path in sorted(root.rglob("results.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            data = {"status": "failed", "error": f"unreadable results.json: {e}"}
        data["_path"] = short_run_name(path.parent.relative_to(root))
        data["_overrides"] = run_overrides(path.parent, data)
        runs.append(data)
    for run, name in zip(runs, run_names(runs), strict=True):
        run["_name"] = name
    return runs


def short_run_name(rel: Path) -> str:
    """'ptq_group/13_quant.bits=4,quant.clip=mse' -> 'ptq_group/13'. A Hydra job folder starts
    with the job number; what follows is its override string, and an override holding a path
    ('+data.extra_test={a:/data/x.jsonl}') splits it into nested folders, all dropped here."""
    parts = []
    for p in rel.parts:
        if _JOB_FOLDER.match(p):
            parts.append(p.split("_", 1)[0])
            if "_" in p:  # the rest of the parts are the tail of the override string
                break
        else:
            parts.append(p)
    return "/".join(parts) or "."


def run_overrides(run_dir: Path, data: dict) -> list[str]:
    """The command-line overrides of a run: results.json holds them while the run is running
    or after it failed; a finished run's are in Hydra's .hydra/overrides.yaml."""
    if data.get("overrides") is not None:
        return list(data["overrides"])
    path = run_dir / ".hydra" / "overrides.yaml"
    return read_overrides_yaml(path) if path.is_file() else []


def read_overrides_yaml(path: Path) -> list[str]:
    """Hydra's overrides.yaml, a YAML list of strings ('- quant=int4'; quoted where YAML needs
    it, long items folded onto indented lines), read without a YAML library."""
    items: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("- "):
            items.append(line[2:])
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
    return [_unquote(s) for s in items]


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] == "'":
        return s[1:-1].replace("''", "'")
    if len(s) >= 2 and s[0] == s[-1] == '"':
        try:
            return json.loads(s)  # YAML's double-quoted escapes, as far as Hydra writes them
        except ValueError:
            return s[1:-1]
    return s


def _names_a_file(key: str, value: str) -> bool:
    if any(key == k or key.startswith(k + ".") for k in PATH_KEYS) or key.startswith("hydra"):
        return True
    if "/" in value or "\\" in value:
        return True
    try:
        return bool(value) and Path(value).exists()
    except (OSError, ValueError):
        return False


def without_paths(overrides) -> list[str]:
    """The overrides, in order, less every one that names a file or folder: PATH_KEYS and any
    key under them (`+data.extra_test.other=/data/x.jsonl`), Hydra's own, or a value that
    is a path. Paths are long, and '/' in a folder name nests folders."""
    return [o for o in overrides
            if not _names_a_file(o.partition("=")[0].lstrip("+~"), o.partition("=")[2])]


def folder_overrides(overrides) -> str:
    """What follows a sweep member's number in its folder name (conf/hydra/default.yaml):
    its overrides as Hydra's override_dirname writes them (sorted, joined by ','), less
    every path (see without_paths)."""
    return ",".join(sorted(without_paths(overrides)))


def naming_overrides(overrides: list[str]) -> list[tuple[str, str]]:
    """(key, value) of the overrides that may name a run: not paths, not data files, not
    `quant` or `quant.*` (the recipe label says what ran: `quant=int8 quant.bits=2` is
    'int2 sym ch'), not Hydra's own."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        key = key.lstrip("+~")
        recipe = key == "quant" or key.startswith("quant.")
        if sep and not recipe and not _names_a_file(key, value):
            out.append((key, value))
    return out


def run_names(runs: list[dict]) -> list[str]:
    """Short names for the tables: mode, recipe label and the `key=value` overrides whose
    value differs between the runs given (no paths: see naming_overrides); 'ptq int4 asym g32
    seed=1'. A key that only some runs set, all to one value, names nothing (their mode says
    it: experiment=finetune). A name two runs would share gets the folder appended. Runs that
    are not ok are named by their folder."""
    named = [naming_overrides(r.get("_overrides") or []) for r in runs]
    values: dict[str, set[str]] = {}
    for pairs in named:
        for key, value in pairs:
            values.setdefault(key, set()).add(value)
    names = []
    for r, pairs in zip(runs, named, strict=True):
        if r.get("status") != "ok":
            names.append(r["_path"])
            continue
        mode, label = r.get("mode") or "", _spec_fields(r)["recipe"]
        words = [mode] + ([label] if label != mode else [])
        words += [f"{k}={v}" for k, v in pairs if len(values[k]) > 1]
        names.append(" ".join(w for w in words if w))
    return [f"{n} ({r['_path']})" if names.count(n) > 1 and r.get("status") == "ok" else n
            for r, n in zip(runs, names, strict=True)]


def _spec_fields(run: dict) -> dict:
    """Recipe columns of a run: its label ('int2 asym g32 mse', QuantSpec.describe; a mixed
    recipe's name; 'float'; followed by how the codes were chosen when not round-to-nearest,
    the run's `method`: 'int2 asym g32 gptq') and the default spec's fields."""
    fields = _recipe_fields(run)
    method = run.get("method")
    if method and method != "rtn":
        fields["recipe"] = f"{fields['recipe']} {method}"
    return fields


def _recipe_fields(run: dict) -> dict:
    recipe = run.get("recipe") or {}
    default = recipe.get("default") or {}
    mixed = bool(recipe.get("rules"))
    try:  # results.json from before a field existed lack it: from_dict fills the default
        spec = QuantSpec.from_dict(dict(default)) if default else None
    except ValueError as e:
        raise ValueError(f"{run.get('_path', '?')}/results.json: recipe.default={default!r} "
                         f"is not a QuantSpec: {e}") from e
    if spec is None:
        return {"recipe": recipe.get("name") or "float", "bits": "mixed" if mixed else 32,
                "sym": "", "granularity": "", "group": "", "clip": ""}
    return {
        "recipe": (recipe.get("name") or "mixed") if mixed else spec.describe(),
        "bits": "mixed" if mixed else spec.bits,
        "sym": spec.symmetric,
        "granularity": spec.granularity,
        "group": spec.group_size or "",
        "clip": spec.clip,
    }


def dev_wer(run: dict) -> float | None:
    """A run's WER on the dev split, where references are chosen (never on test): an eval
    run's `dev` scores (asrquant-eval score_dev=true, the default), or a training run's
    dev WER at its best checkpoint (`best_dev_wer`). None when the run recorded neither."""
    if isinstance(run.get("dev"), dict) and run["dev"].get("wer") is not None:
        return float(run["dev"]["wer"])
    if run.get("mode") in ("qat", "finetune", "float") and run.get("best_dev_wer") is not None:
        return float(run["best_dev_wer"])
    return None


def ingredients(method: str | None) -> int:
    """How many ingredients a run's `method` names: 0 for round-to-nearest ('rtn' or none),
    else the parts of e.g. 'gptq+kd+lsq' (3)."""
    return 0 if method in (None, "", "rtn") else len(method.split("+"))


def best_on_dev(rows: list[dict], key: str = "dev_wer") -> dict | None:
    """The row with the lowest dev WER (`key`); on a tie the smaller file, then the recipe
    with fewer ingredients (`method`: plain QAT before QAT with distillation); None when no
    row has one. Test WER never enters the choice."""
    scored = [r for r in rows if r.get(key) is not None]
    return min(scored, key=lambda r: (r[key], r["size_mb"], ingredients(r.get("method")))) \
        if scored else None


def build_rows(runs: list[dict], test_set: str, baseline: dict | None = None):
    """Every ok run with `test_set` as a row (sizes against float and the best 4-bit run, WER
    change against the float baseline), the runs that are not ok, and the best 4-bit row."""
    ok = [r for r in runs if r.get("status") == "ok" and test_set in (r.get("test") or {})]
    failed = [r for r in runs if r.get("status") != "ok"]
    floats = [r for r in ok if r.get("mode") == "float"]
    base = baseline or (floats[0] if floats else None)
    rows = []
    for r in ok:
        t = r["test"][test_set]
        rows.append({"run": r.get("_name") or r["_path"], "folder": r["_path"],
                     "mode": r.get("mode", ""), **_spec_fields(r),
                     "size_mb": r["size_bytes"] / 1e6, "eff_bits": r.get("effective_bits"),
                     "wer": t["wer"], "cer": t.get("cer"), "words": t.get("words"),
                     "dev_wer": dev_wer(r), "method": r.get("method")})
    best4 = best_on_dev([row for row in rows if row["bits"] == 4 and row["mode"] == "ptq"])
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


def _run_bytes(run: dict) -> tuple[int, bool]:
    """(bytes, from_file): the exported file's size when the run wrote one (eval
    export=true), else the report's predicted parameter bytes (`size_bytes`)."""
    if run.get("file_bytes"):
        return int(run["file_bytes"]), True
    return int(run["size_bytes"]), False


def study_rows(runs: list[dict], test_set: str):
    """One row per recipe. PTQ WER from the post-training run (for float: the baseline),
    QAT WER from the fine-tuned run (for float: the control fine-tuned for the same steps),
    each with its dev WER. The best 4-bit model is the 4-bit recipe best on dev, PTQ or QAT
    (`best_4bit`)."""
    ok = [r for r in runs if r.get("status") == "ok" and test_set in (r.get("test") or {})]
    by_label: dict[str, dict] = {}
    for r in ok:
        fields = _spec_fields(r)
        row = by_label.setdefault(fields["recipe"], {**fields, "runs": [],
                                                      "base": _recipe_fields(r)["recipe"],
                                                      "method": r.get("method")})
        row["runs"].append(r["_path"])
        wer = r["test"][test_set]["wer"]
        if r.get("mode") in ("ptq", "float"):
            row["ptq_wer"], row["ptq_dev_wer"] = wer, dev_wer(r)
        elif r.get("mode") in ("qat", "finetune"):
            row["qat_wer"], row["qat_dev_wer"] = wer, dev_wer(r)
        else:
            continue
        nbytes, from_file = _run_bytes(r)
        if from_file or "size_bytes" not in row:
            row["size_bytes"], row["from_file"] = nbytes, from_file
        row["param_bytes"] = int(r["size_bytes"])  # parameters only (the paper's model size)
    rows = [r for r in by_label.values() if "size_bytes" in r]
    for r in rows:  # a QAT-only row (e.g. 'int2 asym g32 gptq+kd') wrote no file, but its
        # recipe's file has the same bytes whatever the codes: take that file's size
        base = by_label.get(r["base"])
        if not r["from_file"] and base is not None and base.get("from_file"):
            r["size_bytes"], r["from_file"] = base["size_bytes"], True
    for r in rows:
        r["size_mb"] = r["size_bytes"] / 1e6
    floats = [r for r in rows if r["bits"] == 32]
    base = floats[0] if floats else None
    best4 = best_4bit(rows)
    for r in rows:
        r["vs_float32"] = r["size_bytes"] / base["size_bytes"] if base else None
        r["vs_best_4bit"] = r["size_bytes"] / best4["size_bytes"] if best4 else None
        for mode in ("ptq", "qat"):
            ref = base.get(f"{mode}_wer") if base else None
            wer = r.get(f"{mode}_wer")
            r[f"rel_wer_{mode}"] = (wer - ref) / ref if ref and wer is not None else None
    rows.sort(key=lambda r: (-r["size_bytes"], r.get("ptq_wer") or 0))
    return rows, base, best4


def best_4bit(rows: list[dict]) -> dict | None:
    """The best 4-bit model of a study: the 4-bit recipe and mode (PTQ, or QAT when a 4-bit
    recipe was fine-tuned) with the lowest dev WER; on a tie the smaller file, then PTQ (no
    training). The row gets `ref_mode`, `ref_wer` and `ref_dev_wer` (that mode's test and dev
    WER); None when no 4-bit row has a dev WER. Test WER never enters the choice."""
    cands = [(r, mode) for r in rows if r["bits"] == 4 for mode in ("ptq", "qat")
             if r.get(f"{mode}_dev_wer") is not None and r.get(f"{mode}_wer") is not None]
    if not cands:
        return None
    r, mode = min(cands, key=lambda p: (p[0][f"{p[1]}_dev_wer"], p[0]["size_bytes"],
                                        p[1] != "ptq", ingredients(p[0].get("method"))))
    r.update(ref_mode=mode, ref_wer=r[f"{mode}_wer"], ref_dev_wer=r[f"{mode}_dev_wer"])
    return r


def load_exports(root: Path) -> list[dict]:
    """The ok export.json files (asrquant-export) under `root`, each with `_path`."""
    exports = []
    for path in sorted(root.rglob("export.json")):
        data = json.loads(path.read_text())
        if data.get("status") == "ok":
            data["_path"] = str(path.parent.relative_to(root))
            exports.append(data)
    return exports


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


def dev_words_of(runs: list[dict]) -> int | None:
    """Words of the dev split the runs were scored on (the noise of dev WERs); None if no
    run scored it."""
    return next((int(r["dev"]["words"]) for r in runs if isinstance(r.get("dev"), dict)
                 and r["dev"].get("words")), None)
