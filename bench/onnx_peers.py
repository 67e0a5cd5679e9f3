"""The peer a deploying user would pick: onnxruntime's own MatMulNBitsQuantizer, run on our
float ONNX export. Writes one .onnx per algorithm and recipe, loadable by `asrquant-eval
onnx=` (our metadata is copied over; `recipe` names the peer's bits and block size).

    python bench/onnx_peers.py FLOAT.onnx OUT_DIR [--algos rtn,hqq] [--recipes int4_g128,int2_g32]

rtn: DefaultWeightOnlyQuantConfig (blockwise round-to-nearest, asymmetric); hqq:
HQQWeightOnlyQuantConfig; k_quant: KQuantWeightOnlyQuantConfig (its own bit allocation).
Every MatMul on a weight is quantized except the mel filterbank (`mel_fb`): the same layers as
our recipes' Linears (our recipes also quantize the convolutions, which the peer leaves in
float32). Weights only; accuracy_level 4 (int8 activations), onnxruntime's fast setting; our
accuracy_level 0 parity runs are the exact ones. Prints one JSON line per file written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import onnx

from asrquant.export.onnx import set_accuracy_level
from asrquant.quant import QuantRecipe, QuantSpec

RECIPES = {"int4_g128": (4, 128), "int2_g32": (2, 32), "int4_g32": (4, 32),
           "int8_g128": (8, 128)}
ALGOS = ("rtn", "hqq", "k_quant")


def peer_quantize(float_onnx: Path, algo: str, bits: int, block: int, dst: Path) -> Path:
    """onnxruntime's MatMulNBitsQuantizer with `algo` on our float ONNX, saved to `dst`."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    common = dict(block_size=block, bits=bits)
    if algo == "rtn":
        config = mq.DefaultWeightOnlyQuantConfig(is_symmetric=False, accuracy_level=4,
                                                 **common)
    elif algo == "hqq":
        config = mq.HQQWeightOnlyQuantConfig(**common)
    elif algo == "k_quant":
        config = mq.KQuantWeightOnlyQuantConfig()
    else:
        raise ValueError(f"peer algo {algo!r} is invalid; allowed: {list(ALGOS)}")
    source = onnx.load(str(float_onnx))
    quantizer = mq.MatMulNBitsQuantizer(onnx.load(str(float_onnx)), algo_config=config,
                                        nodes_to_exclude=["mel_fb"], accuracy_level=4,
                                        **common)
    quantizer.process()
    model = quantizer.model.model
    model.ir_version = min(model.ir_version, source.ir_version)
    set_accuracy_level(model, 4)
    meta = {p.key: p.value for p in source.metadata_props}
    meta["recipe"] = json.dumps(QuantRecipe(QuantSpec(bits=bits, group_size=block),
                                            name=f"ort_{algo}_int{bits}_g{block}").to_dict())
    meta["lowering"] = json.dumps({"peer": f"onnxruntime MatMulNBitsQuantizer {algo}, bits="
                                           f"{bits}, block_size={block}, accuracy_level 4"})
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(dst))
    return dst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("float_onnx")
    ap.add_argument("out_dir")
    ap.add_argument("--algos", default="rtn,hqq")
    ap.add_argument("--recipes", default="int4_g128,int2_g32")
    args = ap.parse_args()
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # a line per layer
    for algo in args.algos.split(","):
        for name in args.recipes.split(","):
            if name not in RECIPES:
                sys.exit(f"--recipes {name!r} is invalid; allowed: {', '.join(RECIPES)}")
            bits, block = RECIPES[name]
            dst = Path(args.out_dir) / f"ort_{algo}_{name}.onnx"
            try:
                peer_quantize(Path(args.float_onnx), algo, bits, block, dst)
                print(json.dumps({"algo": algo, "recipe": name, "path": str(dst),
                                  "file_bytes": dst.stat().st_size}))
            except Exception as e:  # reported, not hidden: the table says it failed
                print(json.dumps({"algo": algo, "recipe": name,
                                  "error": f"{type(e).__name__}: {e}"[:300]}))


if __name__ == "__main__":
    main()
