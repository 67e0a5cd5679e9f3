"""The quantization demo (`asrquant-demo`) on a real torchaudio Conformer: sizes and output
error per recipe, then the per-parameter report of the mixed recipe and the wall time.

A randomly initialised encoder is enough to show the mechanics (which weights are found,
how big each recipe makes the model, how far its outputs move); WER on trained models comes
with the ASR recipes.
"""

from __future__ import annotations

import time

import torch
import torchaudio
from tqdm import tqdm

from asrquant.quant import QuantRecipe, QuantRule, QuantSpec, attach_fake_quant, detach_fake_quant

RECIPES = {
    "int8 per-channel": QuantRecipe(QuantSpec(bits=8, symmetric=True, granularity="channel")),
    "int4 per-channel": QuantRecipe(QuantSpec(bits=4, symmetric=True, granularity="channel")),
    "int4 asym g128": QuantRecipe(QuantSpec(bits=4, group_size=128)),
    "int2 sym per-channel": QuantRecipe(QuantSpec(bits=2, symmetric=True, granularity="channel")),
    "int2 asym g32": QuantRecipe(QuantSpec(bits=2, group_size=32)),
    "int2 asym g32 mse": QuantRecipe(QuantSpec(bits=2, group_size=32, clip="mse")),
    "mixed: attn int4, rest int2 g32": QuantRecipe(
        QuantSpec(bits=2, group_size=32),
        rules=(QuantRule("*.self_attn.*", QuantSpec(bits=4, group_size=128)),),
    ),
}


def run_demo(layers: int = 4, d_model: int = 144, heads: int = 4, seed: int = 0,
             threads: int = 2) -> None:
    """Quantize a random torchaudio Conformer with each of RECIPES and print the table."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    model = torchaudio.models.Conformer(
        input_dim=d_model, num_heads=heads, ffn_dim=4 * d_model,
        num_layers=layers, depthwise_conv_kernel_size=31,
    ).eval()
    x = torch.randn(4, 200, d_model)
    lengths = torch.tensor([200, 180, 150, 120])
    with torch.no_grad():
        ref, _ = model(x, lengths)

    print(f"torchaudio Conformer: {layers} layers, d_model {d_model}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    rows = []
    for name, recipe in tqdm(RECIPES.items(), desc="recipes", unit="recipe"):
        t0 = time.perf_counter()
        report = attach_fake_quant(model, recipe)
        with torch.no_grad(), torch.nn.utils.parametrize.cached():
            out, _ = model(x, lengths)
        seconds = time.perf_counter() - t0
        detach_fake_quant(model)
        rel_err = ((out - ref).norm() / ref.norm()).item()
        t = report.totals()
        rows.append((name, t["size_mb"], t["compression"], t["effective_bits"],
                     t["quantized_share"], rel_err, seconds))
        if name.startswith("mixed"):
            mixed_report = report

    print(f"\nfloat32 size: {t['float32_mb']:.3f} MB")
    head = f"{'recipe':34s} {'size MB':>8s} {'x smaller':>9s} {'bits/w':>7s} " \
           f"{'quantized':>9s} {'rel. output error':>17s} {'seconds':>7s}"
    print(head)
    print("-" * len(head))
    for name, mb, comp, bits, share, err, sec in rows:
        print(f"{name:34s} {mb:8.3f} {comp:9.2f} {bits:7.3f} {share:9.1%} {err:17.4f} {sec:7.2f}")
    print("\nPer-parameter report of the mixed recipe (quantized weights of layer 0):")
    lines = mixed_report.table(quantized_only=True).splitlines()
    keep = [ln for ln in lines if "layers.0." in ln or ln.startswith(("name", "-"))]
    print("\n".join(keep))
    print(lines[-1])
    print(f"\nwall time: {time.perf_counter() - started:.1f} s")
