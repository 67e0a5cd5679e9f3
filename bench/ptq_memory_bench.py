"""Peak memory and time of PTQ of a large model (issue 7: L size, mse clipping). Prints JSON.

    python bench/ptq_memory_bench.py [--size l] [--recipe int2_asym_g32_mse] [--threads 1]
                                     [--export]

A randomly initialised ConformerCTC of --size (no training: memory and time of PTQ do not
depend on the weights' values) inside an ASRModule, quantized the way `asrquant-eval` does
PTQ: QuantizationCallback's steps, i.e. a float backup of the state dict, fake quantization
attached (report built), then baked into the weights (detach_fake_quant(bake=True): every
weight quantized once, mse clipping search included). With --export, the packed file is also
written (asrquant.export.export_packed). Then one forward pass on 2 s of noise.

Figures: wall time per phase; peak RSS of the process after each phase (ru_maxrss, a running
maximum, so each value covers every phase before it); the RSS right after building the float
model; the model's float32 bytes. Threads are set explicitly (--threads).
"""

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="l")
    ap.add_argument("--recipe", default="int2_asym_g32_mse", help="a conf/quant/*.yaml name")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--export", action="store_true", help="also write the packed file")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from asrquant.cli.common import CONF_DIR
    from asrquant.data.tokenizer import CharTokenizer
    from asrquant.lightning.module import ASRModule
    from asrquant.models.sizes import size_config
    from asrquant.quant import attach_fake_quant, detach_fake_quant, recipe_from_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):  # with quant/_base
        quant = compose(config_name="eval", overrides=[f"quant={args.recipe}"]).quant
    recipe = recipe_from_config(OmegaConf.to_container(quant, resolve=True))
    out = {"bench": "ptq_memory", "size": args.size, "recipe": recipe.name,
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
           "rss_at_start_bytes": rss_bytes(), "phases": {}}

    def phase(name, fn):
        t0 = time.perf_counter()
        result = fn()
        out["phases"][name] = {"seconds": round(time.perf_counter() - t0, 3),
                               "peak_rss_bytes_so_far": peak_rss_bytes(),
                               "rss_bytes": rss_bytes()}
        print(f"[bench] {name}: {out['phases'][name]}", file=sys.stderr, flush=True)
        return result

    tok = CharTokenizer()
    module = phase("build_float_model",
                   lambda: ASRModule(size_config(args.size, tok.vocab_size), tok).eval())
    out["num_params"] = sum(p.numel() for p in module.parameters())
    out["float32_bytes"] = 4 * out["num_params"]
    ckpt = {"state_dict": module.state_dict(), "model_config": module.model.config.to_dict(),
            "tokenizer_state": tok.to_state()}
    backup = phase("float_backup",  # what QuantizationCallback keeps to restore the model
                   lambda: {k: v.detach().clone() for k, v in module.state_dict().items()})
    report = phase("attach_fake_quant", lambda: attach_fake_quant(module, recipe))
    phase("quantize_bake", lambda: detach_fake_quant(module, bake=True))
    totals = report.totals()
    out["quantized_bytes"] = totals["quantized_bytes"]
    out["effective_bits"] = totals["effective_bits"]
    out["num_quantized"] = totals["num_quantized"]
    with torch.no_grad():
        audio = torch.randn(1, 32000)
        logits, _ = phase("forward_2s", lambda: module(audio, torch.tensor([32000])))
    out["forward_finite"] = bool(torch.isfinite(logits).all())
    del backup
    if args.export:
        from asrquant.export import export_packed

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            phase("export_packed", lambda: export_packed(ckpt, recipe, path))
            out["packed_file_bytes"] = path.stat().st_size
    out["total_seconds"] = round(sum(p["seconds"] for p in out["phases"].values()), 3)
    out["peak_rss_bytes"] = peak_rss_bytes()
    out["peak_rss_gib"] = round(out["peak_rss_bytes"] / 2**30, 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
