"""Peer comparison: the same float model and test split quantized by torchao, HQQ, quanto
and by asrquant, side by side (test WER and size). Writes Markdown + JSON.

    python bench/peers.py --model models/cpu_synthetic_float.safetensors \
        --out runs/peers/synthetic
    python bench/peers.py --model models/cpu_fsdd_float.safetensors --out runs/peers/fsdd \
        data=fsdd_digits data.dir=/work/cache/fsdd_digits

Trailing arguments are Hydra overrides of conf/eval.yaml that select the test data (default:
the built-in synthetic corpus with its default size and seed, i.e. the split the shipped
synthetic model was scored on).

Rows (all post-training, no fine-tuning; only the asrquant gptq rows see data):
  - float: the model as loaded.
  - torchao `quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int2/int4,
    granularity=PerGroup(32|128) or PerAxis(0), mapping_type=ASYMMETRIC,
    scale_dtype=float16))` on the nn.Linear layers it supports: IntxUnpackedToInt8Tensor needs
    in_features divisible by the group size, and it cannot run the out_proj of
    nn.MultiheadAttention (aten.t is not implemented for it), so those stay float.
  - HQQ (`HQQLinear`, nbits 2/4, group 32/128, axis 1, its default optimizer) on the same
    Linear layers (HQQ groups the flattened weight, so any layer whose size divides).
  - optimum-quanto `quantize(weights=qint2|qint4)` + `freeze` on the same Linear layers.
  - asrquant like-for-like: our quantizer with the same bits, group size, asymmetric grid and
    float16 scales on exactly the layers that peer row quantized (QuantRule per weight), with
    clip=none (min-max, as the peers) and, for 2 bits, clip=mse.
  - asrquant gptq, next to each like-for-like row on HQQ's layers (HQQ optimises its
    rounding too, without data): the same recipe (layers, bits, group, float16 scales,
    size), codes picked by GPTQ (asrquant.quant.calibrate, conf/eval.yaml's calib defaults)
    on `--calib-utterances` utterances of the data config's TRAIN split (the seeded subset
    without augmentation that asrquant-eval quant.method=gptq calibrates on; the dev split
    carved out as training made it). The peers use no data.
  - asrquant recipes: conf/quant/*.yaml as shipped (all Linear, Conv and attention weights).
  Every asrquant row is measured on its packed export (asrquant.export_packed, kept in
  <out>/packed/), loaded back with asrquant.load_quantized: WER decoded from that model,
  `held_bytes` the bytes its parameters and packed codes, scales and zero points take as
  loaded, `file_bytes` the file's size; `size_bytes` is the predicted count (QuantReport).

Sizes count parameters only (buffers such as feature statistics are left out, as in
asrquant's own reports): quantized weights at their code width densely packed
(ceil(numel * bits / 8)) plus the scales and zero points at the dtype the library keeps them
in, other parameters at their own dtype. `held_bytes` is what the library actually holds in
memory (torchao's IntxUnpackedToInt8Tensor keeps one int8 per code; HQQ and quanto pack
2/4-bit codes into bytes). HQQ groups run along the flattened weight, so with rows of 144
a group of 32 or 128 can span two rows; HQQ keeps its scales and zeros in float32.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

from asrquant import load_quantized
from asrquant.data.text import normalize_text
from asrquant.export import export_packed
from asrquant.lightning.metrics import corpus_cer, corpus_wer
from asrquant.models.decoding import greedy_ctc_decode
from asrquant.quant import (
    QuantRecipe,
    QuantRule,
    QuantSpec,
    build_report,
    recipe_from_config,
)
from asrquant.quant.calibrate import CalibrationConfig, calibrate_quantize
from asrquant.quant.packed import PackedWeight

OUR_RECIPES = ("int4_asym_g128", "int2_asym_g32", "int2_asym_g32_mse", "mixed_attn4_rest2")


# ------------------------------------------------------------------------------ data / eval

def eval_config(overrides: list[str]) -> dict:
    """conf/eval.yaml + overrides, as asrquant-eval composes it."""
    from hydra import compose, initialize_config_dir

    from asrquant.cli.common import CONF_DIR
    from asrquant.runs.common import plain

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return plain(compose(config_name="eval", overrides=list(overrides)))


def test_batches(overrides: list[str], tokenizer, max_utts: int | None = None) -> dict:
    """{test set name: [batch, ...]} from conf/eval.yaml + overrides, as asrquant-eval
    builds them (same readers, validation, batching)."""
    from asrquant.runs.blocks import build_datamodule, data_sources

    cfg = eval_config(overrides)
    sources = data_sources({**cfg["data"], "dev_fraction": 0.0})
    if max_utts:
        from asrquant.data.readers import read_utterances

        sources = {**sources,
                   "test": read_utterances(sources["test"])[:max_utts],
                   "extra_test": {k: read_utterances(v)[:max_utts]
                                  for k, v in sources["extra_test"].items()}}
    dm = build_datamodule(cfg, tokenizer, sources, cfg["data"].get("eval_policy", "error"))
    dm.setup("test")
    loaders = dm.test_dataloader()
    loaders = loaders if isinstance(loaders, list) else [loaders]
    return {name: list(loader) for name, loader in zip(dm.test_names, loaders, strict=True)}


def calibration_batches(overrides: list[str], tokenizer, num_utterances: int) -> list:
    """Batches of `num_utterances` TRAIN utterances of the same data config (never test):
    the seeded subset, without augmentation, that asrquant-eval quant.method=gptq calibrates
    on (ASRDataModule.calibration_dataloader; the dev split carved out as training made it)."""
    from asrquant.runs.blocks import build_datamodule, data_sources

    cfg = eval_config(overrides)
    sources = data_sources(cfg["data"])
    dm = build_datamodule(cfg, tokenizer, sources, cfg["data"].get("eval_policy", "error"))
    return list(dm.calibration_dataloader(num_utterances))


@torch.no_grad()
def evaluate(module, batches: dict) -> dict:
    """Greedy CTC decoding and corpus WER/CER, as ASRModule.test_step scores them."""
    module.eval()
    out = {}
    for name, split in batches.items():
        refs, hyps = [], []
        for batch in split:
            log_probs, lens = module.model(batch["audio"], batch["audio_lens"])
            hyps += [normalize_text(module.tokenizer.decode(ids))
                     for ids in greedy_ctc_decode(log_probs, lens)]
            refs += [normalize_text(t) for t in batch["texts"]]
        wer, cer = corpus_wer(refs, hyps), corpus_cer(refs, hyps)
        out[name] = {"wer": wer.rate, "cer": cer.rate, "words": wer.ref_length,
                     "utterances": len(refs)}
    return out


# ------------------------------------------------------------------------------- layers

def linear_layers(model: nn.Module) -> list[str]:
    """Module names of the nn.Linear layers the peers can run: all except the out_proj of
    nn.MultiheadAttention (its forward reads out_proj.weight inside
    F.multi_head_attention_forward, which torchao's tensor subclass does not support)."""
    mha_out = {f"{n}.out_proj" for n, m in model.named_modules()
               if isinstance(m, nn.MultiheadAttention)}
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n not in mha_out]


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _float_bytes(model: nn.Module, skip: set[str]) -> int:
    return sum(_nbytes(p) for n, p in model.named_parameters() if n not in skip)


# -------------------------------------------------------------------------------- peers

def torchao_quantize(module, bits: int, group: int | None) -> dict:
    from torchao.quantization import IntxWeightOnlyConfig, PerAxis, PerGroup, quantize_
    from torchao.quantization.quant_primitives import MappingType

    names = [n for n in linear_layers(module)
             if group is None or _get(module, n).in_features % group == 0]
    if not names:
        return {"layers": []}
    config = IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{bits}"),
        granularity=PerAxis(0) if group is None else PerGroup(group),
        mapping_type=MappingType.ASYMMETRIC, scale_dtype=torch.float16)
    wanted = set(names)
    quantize_(module, config, filter_fn=lambda m, fqn: fqn in wanted)
    ideal = held = 0
    quantized = set()
    for n, p in module.named_parameters():
        if hasattr(p, "qdata"):
            quantized.add(n)
            side = _nbytes(p.scale) + _nbytes(p.zero_point)
            ideal += math.ceil(p.qdata.numel() * bits / 8) + side
            held += _nbytes(p.qdata) + side
    rest = _float_bytes(module, quantized)
    return {"layers": names, "size_bytes": ideal + rest, "held_bytes": held + rest}


def hqq_layers(module, group: int) -> list[str]:
    """The Linear layers HQQ quantizes: it groups the flattened weight, so any whose size
    the group divides."""
    return [n for n in linear_layers(module) if _get(module, n).weight.numel() % group == 0]


def hqq_quantize(module, bits: int, group: int) -> dict:
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    names = hqq_layers(module, group)
    cfg = BaseQuantizeConfig(nbits=bits, group_size=group, axis=1)
    size = 0
    for n in names:
        q = HQQLinear(_get(module, n), quant_config=cfg, compute_dtype=torch.float32,
                      device="cpu")
        _set(module, n, q)
        numel = math.prod(q.meta["shape"])
        # W_q holds the packed codes; meta holds one scale and one zero per group (float32)
        size += _nbytes(q.W_q) + _nbytes(q.meta["scale"]) + _nbytes(q.meta["zero"])
        assert _nbytes(q.W_q) == math.ceil(numel * bits / 8), "HQQ codes not densely packed"
        if q.bias is not None:
            size += _nbytes(q.bias)
    rest = sum(_nbytes(p) for p in module.parameters())  # HQQLinear holds no nn.Parameter
    return {"layers": names, "size_bytes": size + rest, "held_bytes": size + rest}


def quanto_quantize(module, bits: int) -> dict:
    import optimum.quanto as oq

    names = linear_layers(module)
    oq.quantize(module, weights={2: oq.qint2, 4: oq.qint4}[bits], include=names)
    oq.freeze(module)
    ideal = held = 0
    quantized, group = set(), None
    for n, p in module.named_parameters():
        if hasattr(p, "_data") and hasattr(p, "_scale"):
            quantized.add(n)
            data = p._data.unpack() if hasattr(p._data, "unpack") else p._data
            side = _nbytes(p._scale) + (_nbytes(p._shift) if hasattr(p, "_shift") else 0)
            ideal += math.ceil(p.numel() * bits / 8) + side
            held += _nbytes(p._data._data if hasattr(p._data, "_data") else data) + side
            group = getattr(p, "_group_size", group)
    done = sorted(n.rpartition(".")[0] for n in quantized)
    rest = _float_bytes(module, quantized)
    return {"layers": done, "size_bytes": ideal + rest, "held_bytes": held + rest,
            "group_size": group}


def packed_param_bytes(module: nn.Module) -> int:
    """Bytes a loaded packed model holds for its weights: float parameters plus the packed
    codes, scales and zero points (other buffers, e.g. feature statistics, left out)."""
    packed = sum(_nbytes(b) for m in module.modules() if isinstance(m, PackedWeight)
                 for b in m.buffers(recurse=False))
    return packed + sum(_nbytes(p) for p in module.parameters())


def ours_quantize(module, recipe: QuantRecipe, path: Path,
                  chosen: dict | None = None) -> tuple[nn.Module, dict]:
    """`module` exported packed with `recipe` to `path` and loaded back: the model the row
    decodes, and its layers, predicted size, measured bytes in memory and file size.
    `chosen`: codes calibration picked (stored as they are; the rest rounded to nearest)."""
    report = build_report(module, recipe.plan(module, strict=True), recipe.name)
    ckpt = {"state_dict": module.state_dict(), "model_config": module.hparams["model_config"],
            "tokenizer_state": module.tokenizer.to_state()}
    export_packed(ckpt, recipe, path, chosen)
    packed = load_quantized(path)
    layers = sorted(r.name.rpartition(".")[0] for r in report.quantized_rows)
    return packed, {"layers": layers, "size_bytes": report.quantized_bytes,
                    "held_bytes": packed_param_bytes(packed),
                    "file_bytes": path.stat().st_size, "file": str(path)}


def gptq_chosen(module, recipe: QuantRecipe, batches: list) -> dict:
    """GPTQ codes of `recipe`'s weights, calibrated on `batches` (conf/eval.yaml's calib
    defaults); `module`'s weights take their dequantized values."""
    plan = recipe.plan(module, strict=True)
    return calibrate_quantize(module, plan, batches,
                              lambda m, b: m(b["audio"], b["audio_lens"]),
                              CalibrationConfig(method="gptq"))


def like_for_like(layers: list[str], bits: int, group: int | None, clip: str = "none",
                  name: str = "") -> QuantRecipe:
    spec = QuantSpec(bits=bits, symmetric=False,
                     granularity="channel" if group is None else "group", group_size=group,
                     clip=clip, scale_dtype="float16")
    rules = [QuantRule(f"{n}.weight", spec) for n in layers]
    return QuantRecipe(default=None, rules=tuple(rules), name=name)


def our_recipe(name: str) -> QuantRecipe:
    """conf/quant/<name>.yaml as the commands compose it (on top of conf/quant/_base.yaml)."""
    from hydra import compose, initialize_config_dir

    from asrquant.cli.common import CONF_DIR
    from asrquant.runs.common import plain

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = plain(compose(config_name="eval", overrides=[f"quant={name}"]))
    return recipe_from_config(cfg["quant"])


# --------------------------------------------------------------------------------- main

def peer_versions() -> dict:
    out = {}
    for mod, label in (("torchao", "torchao"), ("hqq", "hqq"), ("optimum.quanto", "quanto")):
        try:
            m = __import__(mod, fromlist=["__version__"])
            out[label] = getattr(m, "__version__", "installed")
        except Exception as e:  # noqa: BLE001 - report any import failure as text
            out[label] = f"not available: {type(e).__name__}: {e}"
    return out


def gs(group):
    return "ch" if group is None else f"g{group}"


def plan_rows(versions: dict, gptq: bool = True) -> list[tuple]:
    """(row name, library, kind, args)."""
    rows = [("float32", "-", "float", ())]
    for bits in (4, 2):
        for group in (128, 32, None):
            rows.append((f"torchao int{bits} {gs(group)}", "torchao", "torchao", (bits, group)))
            rows.append((f"asrquant int{bits} {gs(group)} (torchao's layers)", "asrquant",
                         "lfl", ("torchao", bits, group, "none")))
            if bits == 2:
                rows.append((f"asrquant int{bits} {gs(group)} mse (torchao's layers)",
                             "asrquant", "lfl", ("torchao", bits, group, "mse")))
    if not versions["hqq"].startswith("not available"):
        for bits in (4, 2):
            for group in (128, 32):
                rows.append((f"hqq int{bits} {gs(group)}", "hqq", "hqq", (bits, group)))
                rows.append((f"asrquant int{bits} {gs(group)} (hqq's layers)", "asrquant",
                             "lfl", ("hqq", bits, group, "none")))
                if gptq:
                    rows.append((f"asrquant int{bits} {gs(group)} gptq (hqq's layers)",
                                 "asrquant", "gptq", ("hqq", bits, group, "none")))
    if not versions["quanto"].startswith("not available"):
        for bits in (4, 2):
            rows.append((f"quanto qint{bits}", "quanto", "quanto", (bits,)))
    for name in OUR_RECIPES:
        rows.append((f"asrquant recipe {name}", "asrquant", "recipe", (name,)))
    return rows


def run(model_path: str, overrides: list[str], out_dir: Path, only: str | None = None,
        max_utts: int | None = None, calib_utts: int = 128) -> dict:
    started = time.perf_counter()
    base = load_quantized(model_path)
    versions = peer_versions()
    batches = test_batches(overrides, base.tokenizer, max_utts)
    calib: list | None = None  # read when the first gptq row runs
    layer_sets: dict[tuple, list[str]] = {}
    results = []
    (out_dir / "packed").mkdir(parents=True, exist_ok=True)
    for name, library, kind, args in plan_rows(versions, gptq=calib_utts > 0):
        if only and only not in name:
            continue
        t0 = time.perf_counter()
        module = copy.deepcopy(base)
        row = {"row": name, "library": library}
        packed_file = out_dir / "packed" / (re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
                                            + ".safetensors")
        try:
            if kind == "float":
                info = {"layers": [], "size_bytes": _float_bytes(module, set())}
                info["held_bytes"] = info["size_bytes"]
            elif kind == "torchao":
                info = torchao_quantize(module, *args)
                layer_sets[("torchao", *args)] = info["layers"]
            elif kind == "hqq":
                info = hqq_quantize(module, *args)
                layer_sets[("hqq", *args)] = info["layers"]
            elif kind == "quanto":
                info = quanto_quantize(module, *args)
            elif kind in ("lfl", "gptq"):
                peer, bits, group, clip = args
                layers = layer_sets.get((peer, bits, group), [])
                recipe = like_for_like(layers, bits, group, clip, name)
                chosen = None
                if layers and kind == "gptq":
                    if calib is None:
                        calib = calibration_batches(overrides, base.tokenizer, calib_utts)
                    chosen = gptq_chosen(module, recipe, calib)
                if not layers:
                    info = {"layers": []}
                else:
                    module, info = ours_quantize(module, recipe, packed_file, chosen)
            else:
                module, info = ours_quantize(module, our_recipe(*args), packed_file)
            row.update({k: v for k, v in info.items() if k != "layers"})
            row["layers"] = len(info["layers"])
            row["quantized_layers"] = info["layers"]
            if not info["layers"] and kind != "float":
                row["status"] = "no supported layer"
            else:
                row["test"] = evaluate(module, batches)
                row["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - a failing peer is a result, not a crash
            row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({k: v for k, v in row.items() if k != "quantized_layers"}),
              flush=True)
        results.append(row)
    report = {
        "model": str(model_path),
        "data_overrides": overrides,
        "max_utterances_per_set": max_utts,
        "calib_utterances": None if calib is None else sum(len(b["ids"]) for b in calib),
        "peers": versions,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "rows": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "peers.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "peers.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    rows = report["rows"]
    sets = []
    for r in rows:
        for s in r.get("test", {}):
            if s not in sets:
                sets.append(s)
    float_bytes = next((r["size_bytes"] for r in rows if r["row"] == "float32"), None)
    head = ["row", "layers", "size (MB)", "x smaller", "held in memory (MB)"]
    head += [f"{s} WER" for s in sets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        size = r.get("size_bytes")
        cells = [r["row"], str(r.get("layers", "")),
                 f"{size / 1e6:.3f}" if size else "",
                 f"{float_bytes / size:.2f}" if size and float_bytes else "",
                 f"{r['held_bytes'] / 1e6:.3f}" if r.get("held_bytes") else ""]
        for s in sets:
            t = r.get("test", {}).get(s)
            cells.append(f"{100 * t['wer']:.2f}%" if t else r["status"])
        lines.append("| " + " | ".join(cells) + " |")
    words = {s: next(r["test"][s]["words"] for r in rows if s in r.get("test", {}))
             for s in sets}
    peers = ", ".join(f"{k} {v}" for k, v in report["peers"].items())
    n_calib = report.get("calib_utterances")
    data_used = (f"Post-training; the gptq rows (asrquant's GPTQ: the same layers and size as "
                 f"the asrquant row above each) calibrate on {n_calib} training utterances (a "
                 "seeded subset of the train split, no augmentation); the peers and all other "
                 "rows use no data." if n_calib else "Post-training, no calibration data.")
    return (
        f"# Peer comparison: {Path(report['model']).name}\n\n"
        f"Test data: `{' '.join(report['data_overrides']) or 'data=synthetic (default)'}`; "
        f"words per set: {words}. {data_used} {peers}; "
        f"torch {report['torch']}, {report['threads']} thread(s), "
        f"{report['wall_time_s']:.0f} s in all.\n\n"
        + "\n".join(lines) + "\n\n"
        "Size: parameters only; quantized weights at their code width, densely packed, plus "
        "scales and zero points at the dtype each library stores them in; other parameters at "
        "float32. `held in memory`: what the library keeps (torchao's "
        "IntxUnpackedToInt8Tensor holds one int8 per code; HQQ and quanto pack the codes). "
        "asrquant's rows are measured on their packed export, loaded back with "
        "asrquant.load_quantized: `held in memory` is the bytes its parameters and packed "
        "codes, scales and zero points take as loaded, and the WER is decoded from it "
        "(the files: `packed/`). `layers`: how "
        "many weights the row quantized; peers quantize nn.Linear layers only (torchao: "
        "in_features divisible by the group size; none of them: the attention out_proj).\n"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a float .safetensors (asrquant-export)")
    ap.add_argument("--out", default=None, help="output folder (default runs/peers/<model>)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="run only rows whose name contains this")
    ap.add_argument("--max-utts", type=int, default=None,
                    help="first N utterances of each test set (smoke runs)")
    ap.add_argument("--calib-utterances", type=int, default=128,
                    help="training utterances the gptq rows calibrate on (the peers use "
                         "none); 0: no gptq rows")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/eval.yaml (data)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/peers/{Path(args.model).stem}")
    run(args.model, args.overrides, out, args.only, args.max_utts, args.calib_utterances)
    print(f"wrote {out / 'peers.md'} and {out / 'peers.json'}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
