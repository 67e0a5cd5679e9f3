"""File sizes of torchaudio architectures saved with `save_packed`. Prints JSON.

    python bench/foreign_sizes.py [--size tiny|base] [--threads 2]

tiny: the models of tests/test_foreign_models.py (2 layers, width 32-64).
base: wav2vec2_base (CTC head of 32), emformer_rnnt_base (4097 symbols), and a
Conformer-S encoder (torchaudio Conformer, 16 layers of width 144, kernel 31).
Weights are random (sizes do not depend on them); nothing is downloaded.

Per model and recipe (float: every tensor at its own dtype; int4_asym_g128 and
int2_asym_g32: every Linear, Conv1d and MultiheadAttention in_proj weight, float16 scales
and zero points): the file's bytes, its header's, the report's `stored_bytes` (checked equal
to file - header), the quantized share of parameters and the matrices left float (other
than by the recipe) with the reason.
"wav2vec2_folded" is wav2vec2 with its weight_norm positional conv folded first, so that
conv is quantized too.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torchaudio
import torchaudio.models as tam
from torch.nn.utils import parametrize

from asrquant.export import header_bytes, save_packed
from asrquant.quant import QuantRecipe, QuantSpec

RECIPES = {
    "float": QuantRecipe(None, name="float"),
    "int4_asym_g128": QuantRecipe(QuantSpec(bits=4, group_size=128), name="int4_asym_g128"),
    "int2_asym_g32": QuantRecipe(QuantSpec(bits=2, group_size=32), name="int2_asym_g32"),
}


def tiny_models() -> dict:
    return {
        "wav2vec2": lambda: tam.wav2vec2_model(
            "group_norm", [(32, 10, 5), (32, 3, 2)], False, 64, 0.0, 16, 4, 2, 4, 0.0, 128,
            0.0, 0.0, False, 0.0, 12),
        "emformer_rnnt": lambda: tam.emformer_rnnt_model(
            input_dim=16, encoding_dim=32, num_symbols=10, segment_length=4,
            right_context_length=1, time_reduction_input_dim=32, time_reduction_stride=2,
            transformer_num_heads=2, transformer_ffn_dim=64, transformer_num_layers=2,
            transformer_dropout=0.0, transformer_activation="gelu",
            transformer_left_context_length=8, transformer_max_memory_size=0,
            transformer_weight_init_scale_strategy="depthwise", transformer_tanh_on_mem=True,
            symbol_embedding_dim=16, num_lstm_layers=2, lstm_layer_norm=True,
            lstm_layer_norm_epsilon=1e-3, lstm_dropout=0.0),
        "conformer": lambda: tam.Conformer(input_dim=32, num_heads=2, ffn_dim=64, num_layers=2,
                                           depthwise_conv_kernel_size=7),
    }


def base_models() -> dict:
    return {
        "wav2vec2": lambda: tam.wav2vec2_base(aux_num_out=32),
        "emformer_rnnt": lambda: tam.emformer_rnnt_base(num_symbols=4097),
        "conformer": lambda: tam.Conformer(input_dim=144, num_heads=4, ffn_dim=576,
                                           num_layers=16, depthwise_conv_kernel_size=31),
    }


def folded(build):
    def make():
        model = build()
        conv = model.encoder.transformer.pos_conv_embed.conv
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
        return model
    return make


def measure(build, folder: Path) -> dict:
    torch.manual_seed(0)
    model = build().eval()
    out = {"params": sum(p.numel() for p in model.parameters()), "recipes": {}}
    for name, recipe in RECIPES.items():
        path = folder / f"{name}.safetensors"
        report = save_packed(model, path, recipe)
        size, header = path.stat().st_size, header_bytes(path)
        path.unlink()
        if size - header != report.stored_bytes:
            raise AssertionError(f"{name}: file {size} - header {header} != report "
                                 f"{report.stored_bytes}")
        out["float32_bytes"] = report.float32_bytes
        out["recipes"][name] = {
            "file_bytes": size, "header_bytes": header, "stored_bytes": report.stored_bytes,
            "quantized_share": round(report.quantized_share, 4),
            "left_float": {k: why for k, why in report.left_float.items()
                           if why != "kept float by the recipe"},
        }
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "base"], default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = tiny_models() if args.size == "tiny" else base_models()
    models["wav2vec2_folded"] = folded(models["wav2vec2"])
    result = {"size": args.size, "torch": torch.__version__,
              "torchaudio": torchaudio.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in models.items():
            result["models"][name] = measure(build, Path(tmp))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
