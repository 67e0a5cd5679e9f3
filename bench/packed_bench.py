"""Packed models against float32, one process, fixed threads. Prints JSON.

    python bench/packed_bench.py [--size cpu] [--ckpt best.ckpt] [--utterances 20]
                                 [--threads 2] [--group-size 128] [--manifest test.jsonl]

For float32 and packed int4 / int2 (asymmetric, groups of --group-size, every Linear and
Conv quantized; float16 scales, zero points in float16 or, for the *_zpu8 models, uint8):
file size, resident weight memory (bytes of parameters and buffers of the loaded model, the
process RSS growth while loading, and the peak RSS of a fresh process that only loads the
file, after its imports), and per-utterance latency of greedy decoding (batch of
one, median over the same utterances, the models taking turns).
Targets (issue 5): int2 file <= 1/14 of float32 at group 128; int2 latency <= 1.5x float32
(checked on int2_zpu8, the smaller file; both int2 models decode the same codes).
Without --ckpt a randomly initialised model of --size is used (sizes and latency do not
depend on training). The timed audio: the first --utterances of --manifest (a JSONL
manifest, e.g. ../shared/data/an4/test.jsonl), or else the test split of a small synthetic
corpus (--utterances test utterances, seed 0) under $ASRQUANT_CACHE/synthetic (default
~/.cache/asrquant/synthetic), built there in seconds if it is missing. Never noise: with no
audio the bench stops and says why. The JSON's `audio` names what was timed.
"""

import argparse
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from asrquant.data.audio import SAMPLE_RATE
from asrquant.data.readers import manifest_utterances
from asrquant.data.synthetic import build_synthetic_corpus, default_cache_dir
from asrquant.data.tokenizer import CharTokenizer
from asrquant.export import export_packed, load_quantized
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config
from asrquant.quant import QuantRecipe, QuantSpec


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


_PEAK = """
import sys
import asrquant.export

def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak RSS (VmHWM) to the current RSS: imports don't count
base = status_kb("VmRSS")
asrquant.export.load_quantized(sys.argv[1])
print((status_kb("VmHWM") - base) * 1024)
"""


def peak_load_rss_bytes(path, threads: int) -> int:
    """Peak RSS growth of a fresh process while it loads `path` (after its imports)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1])


def model_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


class NoAudioError(RuntimeError):
    pass


def utterances(n: int, manifest: str | None = None) -> tuple[list[torch.Tensor], dict]:
    """The first `n` utterances of `manifest`, or of the test split of the small synthetic
    corpus (built into the package's cache folder when missing), as 16 kHz waveforms, and a
    description of them for the results: manifest path, utterances, total seconds."""
    if manifest is None:
        where = default_cache_dir()
        try:
            manifest = build_synthetic_corpus(where, n_train=0, n_dev=0, n_test=n,
                                              n_test_voices=0, progress=False)["test"]
        except Exception as e:
            raise NoAudioError(
                f"no audio to time: --manifest not given, and building the synthetic corpus in "
                f"{where} ($ASRQUANT_CACHE/synthetic, default ~/.cache/asrquant/synthetic) "
                f"failed ({type(e).__name__}: {e}); pass --manifest PATH (a JSONL manifest, "
                f"e.g. ../shared/data/an4/test.jsonl) or point ASRQUANT_CACHE at a writable "
                f"folder") from e
        source = "synthetic corpus (test split, seed 0)"
    elif not Path(manifest).is_file():
        raise NoAudioError(f"no audio to time: --manifest {manifest} is not a file")
    else:
        source = "--manifest"
    utts = list(itertools.islice(manifest_utterances(manifest), n))
    if not utts:
        raise NoAudioError(f"no audio to time: manifest {manifest} has no utterances")
    audio = [u.load_audio(SAMPLE_RATE, True) for u in utts]
    return audio, {"source": source, "manifest": str(manifest), "utterances": len(audio),
                   "seconds": round(sum(a.numel() for a in audio) / SAMPLE_RATE, 3)}


def latencies_ms(modules: dict, audio, rounds: int = 3) -> dict:
    """Median per-utterance decoding time of each model. Models take turns on every
    utterance (interleaved, `rounds` times), so drift in machine speed hits all alike."""
    times = {name: [] for name in modules}
    with torch.inference_mode():
        for m in modules.values():
            m.transcribe(audio[:2])  # warm-up
        for _ in range(rounds):
            for a in audio:
                for name, m in modules.items():
                    t0 = time.perf_counter()
                    m.transcribe([a])
                    times[name].append(1000 * (time.perf_counter() - t0))
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="cpu")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--utterances", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--manifest", default=None,
                    help="JSONL manifest of the audio to time (default: the synthetic corpus)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.ckpt and args.ckpt.endswith(".safetensors"):  # a float file, e.g. models/*.safetensors
        m = load_quantized(args.ckpt)
        ckpt = {"state_dict": m.state_dict(), "model_config": m.hparams["model_config"],
                "tokenizer_state": m.tokenizer.to_state()}
        del m
    elif args.ckpt:
        ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    else:
        tok = CharTokenizer()
        cfg = size_config(args.size, tok.vocab_size)
        m = ASRModule(cfg, tok)
        ckpt = {"state_dict": m.state_dict(), "model_config": cfg.to_dict(),
                "tokenizer_state": tok.to_state()}
        del m
    try:
        audio, timed = ([], None) if args.no_latency else utterances(args.utterances,
                                                                     args.manifest)
    except NoAudioError as e:
        sys.exit(str(e))
    results = {"size": args.size, "ckpt": args.ckpt, "threads": args.threads,
               "audio": timed, "group_size": args.group_size,
               "torch": torch.__version__, "machine": platform.machine(), "models": {}}
    loaded = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = (("float32", None, None), ("int4", 4, None), ("int2", 2, None),
                    ("int4_zpu8", 4, "uint8"), ("int2_zpu8", 2, "uint8"))
        for name, bits, zp_dtype in variants:
            recipe = None if bits is None else QuantRecipe(
                QuantSpec(bits=bits, group_size=args.group_size, zero_point_dtype=zp_dtype))
            path = Path(tmp) / f"{name}.safetensors"
            export_packed(ckpt, recipe, path)  # float32: every tensor at its own dtype
            gc.collect()
            before = rss_bytes()
            module = load_quantized(path)
            entry = {"file_bytes": path.stat().st_size,
                     "weight_memory_bytes": model_bytes(module),
                     "rss_growth_on_load_bytes": rss_bytes() - before,
                     "peak_rss_growth_while_loading_bytes": peak_load_rss_bytes(
                         path, args.threads)}
            results["models"][name] = entry
            loaded[name] = module
        if audio:
            for name, ms in latencies_ms(loaded, audio).items():
                results["models"][name]["latency_ms_median"] = ms
    f32 = results["models"]["float32"]
    for name in ("int4", "int2", "int4_zpu8", "int2_zpu8"):
        m = results["models"][name]
        m["file_vs_float32"] = m["file_bytes"] / f32["file_bytes"]
        m["memory_vs_float32"] = m["weight_memory_bytes"] / f32["weight_memory_bytes"]
        if audio:
            m["latency_vs_float32"] = m["latency_ms_median"] / f32["latency_ms_median"]
    i2 = results["models"]["int2_zpu8"]
    results["targets_met"] = {"int2_file_at_most_1/14_of_float32": i2["file_vs_float32"] <= 1 / 14}
    if audio:
        results["targets_met"]["int2_latency_at_most_1.5x_float32"] = (
            i2["latency_vs_float32"] <= 1.5)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
