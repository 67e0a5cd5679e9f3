"""Time and memory of calibration PTQ (GPTQ) of a model of a given size. Prints JSON.

    python bench/calib_bench.py [--size l] [--recipe int2_asym_g32] [--method gptq]
                                [--utterances 16] [--seconds 4] [--threads 2]

A randomly initialised ConformerCTC of --size (time and memory of calibration do not depend
on the weights' values) is calibrated with asrquant.quant.calibrate.calibrate_quantize on
--utterances waveforms of --seconds of Gaussian noise at 16 kHz (the Hessians' sizes, and so
the memory, do not depend on the audio either; the time grows with the audio, about linearly,
for the forward passes). Batches of 8. Figures: per stage the float64 Hessian sums held at
once (`hessian_bytes`; the largest is the peak the method adds), seconds to collect and to
quantize; the peak RSS of the process (ru_maxrss) after building the model and after
calibration; total time. Threads are set explicitly (--threads).
"""

import argparse
import json
import os
import platform
import resource
import time


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="l")
    ap.add_argument("--recipe", default="int2_asym_g32", help="a conf/quant/*.yaml name")
    ap.add_argument("--method", default="gptq")
    ap.add_argument("--utterances", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch
    from hydra import compose, initialize_config_dir

    from asrquant.cli.common import CONF_DIR
    from asrquant.models.conformer_ctc import ConformerCTC
    from asrquant.models.sizes import size_config
    from asrquant.quant import recipe_from_config
    from asrquant.quant.calibrate import CalibrationConfig, calibrate_quantize

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        quant = compose(config_name="eval", overrides=[f"quant={args.recipe}"]).quant
    recipe = recipe_from_config(dict(quant))
    model = ConformerCTC(size_config(args.size, 128)).eval()
    plan = recipe.plan(model)
    after_build = peak_rss_bytes()
    n = int(args.seconds * 16000)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(min(8, args.utterances - i), n, generator=g) * 0.1,
                torch.full((min(8, args.utterances - i),), n))
               for i in range(0, args.utterances, 8)]
    stats: list = []
    t0 = time.perf_counter()
    calibrate_quantize(model, plan, batches, lambda m, b: m(*b),
                       CalibrationConfig(args.method), stats=stats)
    total = time.perf_counter() - t0
    print(json.dumps({
        "size": args.size, "recipe": recipe.name, "method": args.method,
        "params": sum(p.numel() for p in model.parameters()),
        "float32_mb": 4 * sum(p.numel() for p in model.parameters()) / 1e6,
        "utterances": args.utterances, "seconds_each": args.seconds, "threads": args.threads,
        "total_s": round(total, 1),
        "collect_s": round(sum(s["collect_s"] for s in stats), 1),
        "quantize_s": round(sum(s["quantize_s"] for s in stats), 1),
        "stages": len(stats),
        "max_stage_hessian_mb": max(s["hessian_bytes"] for s in stats) / 1e6,
        "peak_rss_after_build_mb": after_build / 1e6,
        "peak_rss_after_calibration_mb": peak_rss_bytes() / 1e6,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }, indent=2))


if __name__ == "__main__":
    main()
