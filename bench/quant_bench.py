"""Quantizer speed and error against torchao, one process, fixed threads. Prints JSON.

    python bench/quant_bench.py [--threads 2] [--repeats 3]

4096x4096 float32 weight, 2 bits, asymmetric, groups of 128:
  ours clip=none, ours clip=mse (grid of 16 ratios), torchao choose_qparams_affine +
  quantize_affine + dequantize_affine (min-max). Times are the best of `repeats` runs.
Targets (issue 2): ours none <= torchao; ours mse error <= 0.6x torchao's; mse < 3 s.
"""

import argparse
import json
import platform
import time

import torch

from asrquant.quant import QuantSpec, fake_quantize


def best_time(fn, repeats):
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    w = torch.randn(args.size, args.size)
    bits, group = 2, 128
    grid = tuple(round(1.0 - 0.04 * i, 2) for i in range(16))  # 1.00 ... 0.40

    none = QuantSpec(bits=bits, symmetric=False, granularity="group", group_size=group,
                     scale_dtype="float32")
    mse = QuantSpec(bits=bits, symmetric=False, granularity="group", group_size=group,
                    clip="mse", clip_grid=grid, scale_dtype="float32")
    t_none, q_none = best_time(lambda: fake_quantize(w, none), args.repeats)
    t_mse, q_mse = best_time(lambda: fake_quantize(w, mse), args.repeats)
    result = {
        "weight": list(w.shape),
        "bits": bits,
        "group_size": group,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "ours_clip_none_s": t_none,
        "ours_clip_mse_s": t_mse,
        "ours_clip_mse_grid": len(grid),
        "ours_clip_none_mse": ((q_none - w) ** 2).mean().item(),
        "ours_clip_mse_mse": ((q_mse - w) ** 2).mean().item(),
    }
    try:
        from torchao.quantization import quant_primitives as qp
    except ImportError:
        result["torchao"] = "not installed (pip install -e '.[dev]')"
    else:
        block, qmax = (1, group), 2**bits - 1

        def torchao_fq():
            s, z = qp.choose_qparams_affine(w, qp.MappingType.ASYMMETRIC, block, torch.uint8,
                                            0, qmax, scale_dtype=torch.float32)
            q = qp.quantize_affine(w, block, s, z, torch.uint8, 0, qmax)
            return qp.dequantize_affine(q, block, s, z, torch.uint8, 0, qmax)

        t_ao, q_ao = best_time(torchao_fq, args.repeats)
        e_ao = ((q_ao - w) ** 2).mean().item()
        result.update({
            "torchao_minmax_s": t_ao,
            "torchao_minmax_mse": e_ao,
            "speed_ratio_ours_none_vs_torchao": t_none / t_ao,
            "error_ratio_ours_mse_vs_torchao": result["ours_clip_mse_mse"] / e_ao,
            "targets_met": {
                "clip_none_not_slower_than_torchao": t_none <= t_ao,
                "mse_error_at_most_0.6x_torchao": result["ours_clip_mse_mse"] / e_ao <= 0.6,
                "mse_search_under_3s": t_mse < 3.0,
            },
        })
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
