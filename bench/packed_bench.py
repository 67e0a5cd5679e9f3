"""Packed models against float32, one process, fixed threads. Prints JSON.

    python bench/packed_bench.py [--size cpu] [--ckpt best.ckpt] [--utterances 20]
                                 [--threads 2] [--group-size 128]

For float32 and packed int4 / int2 (asymmetric, groups of --group-size, every Linear and
Conv quantized): file size, resident weight memory (bytes of parameters and buffers of the
loaded model, and the process RSS growth while loading), and per-utterance latency of greedy
decoding (batch of one, median over the same utterances, the models taking turns).
Targets (issue 5): int2 file <= 1/14 of float32 at group 128; int2 latency <= 1.5x float32.
Without --ckpt a randomly initialised model of --size is used (sizes and latency do not
depend on training). Utterances come from the synthetic corpus if it is cached, else noise.
"""

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from asrquant.data.tokenizer import CharTokenizer
from asrquant.export import export_packed, load_quantized
from asrquant.lightning.module import ASRModule
from asrquant.models.sizes import size_config
from asrquant.quant import QuantRecipe, QuantSpec


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def model_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def utterances(n: int, seed: int = 0) -> list[torch.Tensor]:
    try:
        from asrquant.data.readers import manifest_utterances

        root = Path.home() / ".cache" / "asrquant" / "synthetic"
        manifests = sorted(root.glob("*/test.jsonl"))
        if manifests:
            utts = list(manifest_utterances(manifests[0]))[:n]
            return [u.load_audio(16000, True) for u in utts]
    except Exception:  # noqa: BLE001 - fall back to noise, the timing is what matters
        pass
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(16000 * (2 + i % 3)), generator=g) for i in range(n)]


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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.ckpt:
        ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    else:
        tok = CharTokenizer()
        cfg = size_config(args.size, tok.vocab_size)
        m = ASRModule(cfg, tok)
        ckpt = {"state_dict": m.state_dict(), "model_config": cfg.to_dict(),
                "tokenizer_state": tok.to_state()}
        del m
    audio = [] if args.no_latency else utterances(args.utterances)
    results = {"size": args.size, "ckpt": args.ckpt, "threads": args.threads,
               "utterances": len(audio), "group_size": args.group_size,
               "torch": torch.__version__, "machine": platform.machine(), "models": {}}
    loaded = {}
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float32.safetensors"
        save_file({k: v.contiguous() for k, v in ckpt["state_dict"].items()}, str(float_path))
        for name, bits in (("float32", None), ("int4", 4), ("int2", 2)):
            gc.collect()
            before = rss_bytes()
            if bits is None:
                path = float_path
                module = ASRModule(ckpt["model_config"], CharTokenizer() if not args.ckpt else
                                   __import__("asrquant.data.tokenizer", fromlist=["x"])
                                   .tokenizer_from_state(ckpt["tokenizer_state"]))
                module.load_state_dict(ckpt["state_dict"])
                module.eval()
            else:
                recipe = QuantRecipe(QuantSpec(bits=bits, group_size=args.group_size))
                path = Path(tmp) / f"{name}.safetensors"
                export_packed(ckpt, recipe, path)
                gc.collect()
                before = rss_bytes()
                module = load_quantized(path)
            entry = {"file_bytes": path.stat().st_size,
                     "weight_memory_bytes": model_bytes(module),
                     "rss_growth_on_load_bytes": rss_bytes() - before}
            results["models"][name] = entry
            loaded[name] = module
        if audio:
            for name, ms in latencies_ms(loaded, audio).items():
                results["models"][name]["latency_ms_median"] = ms
    f32 = results["models"]["float32"]
    for name in ("int4", "int2"):
        m = results["models"][name]
        m["file_vs_float32"] = m["file_bytes"] / f32["file_bytes"]
        m["memory_vs_float32"] = m["weight_memory_bytes"] / f32["weight_memory_bytes"]
        if audio:
            m["latency_vs_float32"] = m["latency_ms_median"] / f32["latency_ms_median"]
    i2 = results["models"]["int2"]
    results["targets_met"] = {"int2_file_at_most_1/14_of_float32": i2["file_vs_float32"] <= 1 / 14}
    if audio:
        results["targets_met"]["int2_latency_at_most_1.5x_float32"] = (
            i2["latency_vs_float32"] <= 1.5)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
