"""ONNX Runtime against our torch models: latency, file size, peak RSS. Prints JSON.

    python bench/onnx_bench.py [--size cpu] [--ckpt models/cpu_synthetic_float.safetensors]
        [--utterances 8] [--rounds 3] [--threads 2] [--levels 0,4] [--peers rtn,hqq] [--settle 0.05]
        [--manifest test.jsonl] [--out results.json] [--workdir DIR [--export-only]]

Models, all from one float model (--ckpt, or random weights of --size: latency and size do
not depend on training):
  onnx_float32                  our ONNX export of the float model (MatMul)
  onnx_int4_g128 / onnx_int2_g32 / onnx_int2_g32_dq  our packed int4 asym g128 / int2 asym
                                g32 / int2 asym g32 with double-quantized scales (2.35 bits)
                                files exported: MatMulNBits over our codes, one file per
                                --levels accuracy_level (0: float32 compute, 1: float32, 2: float16,
                                3: bfloat16, 4: int8 activations; what the CPU lacks falls
                                back inside onnxruntime)
  ort_<algo>_int4_g128 / _int2_g32  the peer: onnxruntime's own MatMulNBitsQuantizer (rtn =
                                its default blockwise RTN, hqq, k_quant) run on our float
                                ONNX, same bits and block size, asymmetric, accuracy level 4
  torch_float32 / torch_int2_g32 our torch model and our packed torch int2 (unpack per call)
Latency: per utterance (batch of one: log-probs only, no decoding), the models taking turns on
every utterance, --rounds rounds, median, an untimed --settle pause before each call;
intra_op_num_threads = torch threads = --threads. The two torch models take their turns
before any onnxruntime session is created (beside the sessions they ran 2-3x slower).
Peak RSS: a fresh process per model that imports onnxruntime, creates the session and runs
one utterance (VmHWM, reset after the imports). The targets of issue 11 are checked at the
end (`targets`): int2/int4 latency <= 1.0x onnx_float32 at the CPU size and <= 0.7x at L,
int2 L file <= 1/13 of float32, int2 L session peak RSS <= 1/5 of float32's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from asrquant.data.tokenizer import CharTokenizer
from asrquant.export import export_packed, load_quantized
from asrquant.export.onnx import export_onnx
from asrquant.io import atomic_write_json
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config
from asrquant.quant import QuantRecipe, QuantSpec

HERE = Path(__file__).resolve().parent


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


packed_bench = _bench_module("packed_bench")  # the timed audio
peer_quantize = _bench_module("onnx_peers").peer_quantize

# name -> QuantSpec fields (asymmetric). int2_g32_dq: 6-bit scale codes under a per-row
# float16 super-scale, zero points packed at 2 bits (conf/quant/int2_asym_g32_dq, 2.35 bits)
RECIPES = {"int4_g128": dict(bits=4, group_size=128), "int2_g32": dict(bits=2, group_size=32),
           "int2_g32_dq": dict(bits=2, group_size=32, scale_bits=6, zero_point_dtype="packed")}
PEER_RECIPES = {"int4_g128": (4, 128), "int2_g32": (2, 32)}
PEER_ALGOS = ("rtn", "hqq", "k_quant")  # bench/onnx_peers.py

_PEAK = """
import sys
import numpy as np
import onnxruntime as ort

def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak RSS (VmHWM) reset to the current RSS: imports do not count
base = status_kb("VmRSS")
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[2])
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
audio = np.load(sys.argv[3])
session.run(None, {"audio": audio[None], "audio_lens": np.array([audio.size], np.int64)})
print(base * 1024, (status_kb("VmHWM") - base) * 1024)
"""


def session(path: Path, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def peak_rss(path: Path, threads: int, audio_npy: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(threads), str(audio_npy)],
                         check=True, capture_output=True, text=True).stdout.split()
    return {"rss_after_imports_bytes": int(out[-2]), "peak_rss_growth_bytes": int(out[-1])}


def onnx_latencies(sessions: dict, torch_models: dict, audio, rounds: int,
                   settle_s: float = 0.05) -> dict:
    """Median ms per utterance; every model runs each utterance in turn, `rounds` times.

    Before each timed call the process sleeps `settle_s` (untimed): onnxruntime's intra-op
    threads spin for a while after a run, and without the pause they took the 2 cores from
    whichever model ran next (the torch float32 model, run right after the last session,
    measured 3x slower than the packed int2 one run after it)."""
    feeds = [{"audio": a.numpy()[None], "audio_lens": np.array([a.numel()], np.int64)}
             for a in audio]
    times = {name: [] for name in [*sessions, *torch_models]}
    with torch.inference_mode():
        for s in sessions.values():
            s.run(None, feeds[0])  # warm-up
        for m in torch_models.values():
            m(audio[0][None], torch.tensor([audio[0].numel()]))
        for _ in range(rounds):
            for a, feed in zip(audio, feeds, strict=True):
                for name, s in sessions.items():
                    time.sleep(settle_s)
                    t0 = time.perf_counter()
                    s.run(None, feed)
                    times[name].append(1000 * (time.perf_counter() - t0))
                for name, m in torch_models.items():
                    time.sleep(settle_s)
                    t0 = time.perf_counter()
                    m(a[None], torch.tensor([a.numel()]))
                    times[name].append(1000 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}


def op_profile(path: Path, threads: int, audio, top: int = 8) -> dict:
    """Share of kernel time per op type (onnxruntime's profiler) over the timed utterances:
    where the time goes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for a in audio:
            s.run(None, {"audio": a.numpy()[None], "audio_lens": np.array([a.numel()])})
        events = json.loads(Path(s.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"]
    total = sum(per_op.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return {op: round(us / total, 3) for op, us in ranked}


def float_ckpt(args) -> dict:
    if args.ckpt:
        m = load_quantized(args.ckpt)
        return {"state_dict": m.state_dict(), "model_config": m.hparams["model_config"],
                "tokenizer_state": m.tokenizer.to_state()}
    tok = CharTokenizer()
    cfg = size_config(args.size, tok.vocab_size)
    m = ASRModule(cfg, tok)
    return {"state_dict": m.state_dict(), "model_config": cfg.to_dict(),
            "tokenizer_state": tok.to_state()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="cpu")
    ap.add_argument("--ckpt", default=None, help="a float .safetensors (default: random)")
    ap.add_argument("--utterances", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--levels", default="0,4", help="MatMulNBits accuracy levels to time")
    ap.add_argument("--peers", default="rtn,hqq", help=f"subset of {','.join(PEER_ALGOS)}, or ''")
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--settle", type=float, default=0.05,
                    help="untimed seconds before each timed call (onnxruntime's threads spin "
                         "after a run and would slow the next model)")
    ap.add_argument("--workdir", default=None,
                    help="keep the exported files here and reuse them (default: a temp folder)")
    ap.add_argument("--export-only", action="store_true",
                    help="write the files into --workdir and stop (time them in a later run)")
    ap.add_argument("--out", default=None, help="also write the JSON here (atomically)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    levels = [int(x) for x in args.levels.split(",") if x != ""]
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in PEER_ALGOS:
            sys.exit(f"--peers {p!r} is invalid; allowed: {', '.join(PEER_ALGOS)}")
    try:
        audio, timed = packed_bench.utterances(args.utterances, args.manifest)
    except packed_bench.NoAudioError as e:
        sys.exit(str(e))
    ckpt = float_ckpt(args)
    results = {"size": args.size, "ckpt": args.ckpt, "threads": args.threads,
               "rounds": args.rounds, "settle_s": args.settle, "audio": timed, "levels": levels,
               "onnxruntime": ort.__version__, "torch": torch.__version__,
               "machine": platform.machine(), "cpu_count": os.cpu_count(), "models": {}}
    models = results["models"]
    with contextlib.ExitStack() as stack:
        if args.workdir:  # files kept, and reused when present (same seed: same weights)
            tmp = Path(args.workdir)
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        np.save(tmp / "audio.npy", audio[0].numpy())
        files, torch_models = {}, {}
        for name, recipe in [("float32", None),
                             *[(n, QuantRecipe(QuantSpec(**fields), name=n))
                               for n, fields in RECIPES.items()]]:
            packed = tmp / f"{name}.safetensors"
            if not packed.is_file():
                export_packed(ckpt, recipe, packed)
            t0 = time.perf_counter()
            if name == "float32":
                files["onnx_float32"] = tmp / "float32.onnx"
                if not files["onnx_float32"].is_file():
                    export_onnx(packed, files["onnx_float32"])
                torch_models["torch_float32"] = load_quantized(packed).model
            else:  # exported per level: level 0 files hold float32 zero points, the others uint8
                for level in levels:
                    files[f"onnx_{name}_level{level}"] = tmp / f"{name}_l{level}.onnx"
                    if not files[f"onnx_{name}_level{level}"].is_file():
                        export_onnx(packed, files[f"onnx_{name}_level{level}"],
                                    accuracy_level=level)
                if name == "int2_g32":
                    torch_models["torch_int2_g32"] = load_quantized(packed).model
            models.setdefault(f"safetensors_{name}", {})["file_bytes"] = packed.stat().st_size
            models[f"safetensors_{name}"]["onnx_export_s"] = round(time.perf_counter() - t0, 1)
        for algo in peers:
            for name, (bits, block) in PEER_RECIPES.items():
                dst = tmp / f"ort_{algo}_{name}.onnx"
                try:
                    files[f"ort_{algo}_{name}"] = dst if dst.is_file() else peer_quantize(
                        files["onnx_float32"], algo, bits, block, dst)
                except Exception as e:  # a peer that fails is reported, not hidden
                    models[f"ort_{algo}_{name}"] = {"error": f"{type(e).__name__}: {e}"[:300]}
        if args.export_only:
            print(json.dumps({name: str(path) for name, path in files.items()}, indent=2))
            return
        # our torch models first, taking turns among themselves before any session exists:
        # timed between onnxruntime sessions they ran 2-3x slower than alone (the sessions'
        # thread pools beside torch's on 2 cores), which made that comparison meaningless
        for name, ms in onnx_latencies({}, torch_models, audio, args.rounds,
                                        args.settle).items():
            models.setdefault(name, {})["latency_ms_median"] = round(ms, 3)
        sessions = {name: session(path, args.threads) for name, path in files.items()}
        for name, path in files.items():
            models.setdefault(name, {})["file_bytes"] = path.stat().st_size
            if not args.no_rss:
                models[name].update(peak_rss(path, args.threads, tmp / "audio.npy"))
        for name, ms in onnx_latencies(sessions, {}, audio, args.rounds,
                                        args.settle).items():
            models.setdefault(name, {})["latency_ms_median"] = round(ms, 3)
        del sessions
        for name in ("onnx_float32", *[f"onnx_{r}_level{lv}" for r in RECIPES
                                        for lv in levels]):
            models[name]["op_time_share"] = op_profile(files[name], args.threads, audio)
    base = models["onnx_float32"]
    for m in models.values():
        if "latency_ms_median" in m:
            m["latency_vs_onnx_float32"] = round(m["latency_ms_median"]
                                                 / base["latency_ms_median"], 3)
        if "file_bytes" in m:
            m["file_vs_onnx_float32"] = round(m["file_bytes"] / base["file_bytes"], 4)
        if "peak_rss_growth_bytes" in m and "peak_rss_growth_bytes" in base:
            m["peak_rss_vs_onnx_float32"] = round(m["peak_rss_growth_bytes"]
                                                  / base["peak_rss_growth_bytes"], 3)
    limit = 1.0 if args.size == "cpu" else 0.7
    targets = {}
    for name in RECIPES:  # latency: the best level of each recipe
        best = min((models[f"onnx_{name}_level{lv}"]["latency_vs_onnx_float32"], lv)
                   for lv in levels)
        targets[f"{name}_latency_at_most_{limit}x_float32"] = {
            "met": best[0] <= limit, "best_ratio": best[0], "at_level": best[1]}
    if args.size != "cpu":
        for name in ("int2_g32", "int2_g32_dq"):
            i2 = models[f"onnx_{name}_level{levels[0]}"]
            targets[f"{name}_file_at_most_1/13_float32"] = {
                "met": i2["file_vs_onnx_float32"] <= 1 / 13,
                "ratio": i2["file_vs_onnx_float32"]}
            if "peak_rss_vs_onnx_float32" in i2:
                ratios = [models[f"onnx_{name}_level{lv}"]["peak_rss_vs_onnx_float32"]
                          for lv in levels]
                targets[f"{name}_peak_rss_at_most_1/5_float32"] = {
                    "met": max(ratios) <= 0.2,
                    "ratio_per_level": dict(zip(levels, ratios, strict=True))}
    results["targets"] = targets
    if args.out:
        atomic_write_json(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
