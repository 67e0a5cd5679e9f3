"""Packed export of a quantized recognizer, and loading it back for inference.

File: one safetensors file (no pickle: loading executes no code).
  tensors   "<param>::packed" (uint8 codes at their bit width, see asrquant.quant.pack),
            "<param>::scale" and, if asymmetric, "<param>::zero_point" (at zero_point_dtype) for
            every quantized weight; every other parameter and buffer under its own name.
            Version 2 adds double-quantized scales (spec.scale_bits: "::scale" holds the k-bit
            codes packed, "::super_scale" one scale_dtype value per row) and packed zero points
            (zero_point_dtype "packed": "::zero_point" at `bits` bits, packed). Version 1 files
            (which have neither) still load.
  metadata  format "asrquant.packed", format_version, model_config, tokenizer_state, recipe,
            and "quantized": {param: {shape, dtype, spec}} (JSON strings).
Names are those of ASRModule ("model.encoder...").
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from asrquant.data.tokenizer import tokenizer_from_state
from asrquant.io import atomic_write, model_path
from asrquant.lightning.module import ASRModule
from asrquant.quant import (
    QuantizedTensor,
    QuantRecipe,
    QuantSpec,
    group_layout,
    original_name,
    recipe_of_checkpoint,
    split_learned_qparams,
)
from asrquant.quant.pack import packed_nbytes
from asrquant.quant.packed import SEP, PackedWeight, pack_module_weights, packed_state_dict
from asrquant.quant.recipe import learned_quantized

FORMAT = "asrquant.packed"
FORMAT_VERSION = 2
READS_VERSIONS = ("1", "2")  # 2 = 1 + double-quantized scales and packed zero points
_WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ExportError(ValueError):
    """A packed model file that cannot be trusted; the message names the file and tensor."""


def float_state_dict(state_dict: dict) -> dict:
    """State dict with fake-quantization parametrizations folded back to plain names."""
    return {original_name(k): v for k, v in state_dict.items()}


def export_packed(ckpt: dict, recipe: QuantRecipe | None, path: str | os.PathLike,
                  chosen: dict[str, QuantizedTensor] | None = None) -> dict:
    """Write the checkpoint's model quantized with `recipe` (a QAT checkpoint's own recipe if
    None) to `path`; returns a summary with the file size. Written atomically.
    `chosen`: codes a calibration PTQ picked (parameter name -> QuantizedTensor), stored as
    they are; the other planned weights are rounded to nearest."""
    own = recipe_of_checkpoint(ckpt)
    if recipe is None:
        recipe = own
    elif own is not None and own.to_dict() != recipe.to_dict():
        raise ExportError(f"this QAT checkpoint was trained with recipe {own.name!r}; export it "
                          f"with that recipe, not {recipe.name!r}")
    if recipe is None:  # a float file: every tensor at its own dtype
        recipe = QuantRecipe(None, name="float")
    module = ASRModule(ckpt["model_config"], tokenizer_from_state(ckpt["tokenizer_state"]))
    state, learned = split_learned_qparams(ckpt["state_dict"])
    module.load_state_dict(float_state_dict(state))
    plan = recipe.plan(module)
    chosen = dict(chosen or {})
    for name, qp in learned.items():  # a QAT checkpoint with learned (LSQ) scales
        name = original_name(name)
        chosen[name] = learned_quantized(module.get_parameter(name), plan[name], qp["scale"],
                                         qp["zero_point"])
    tensors, quantized = packed_state_dict(module, plan, chosen)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(ckpt["model_config"]),
        "tokenizer_state": json.dumps(ckpt["tokenizer_state"]),
        "recipe": json.dumps(recipe.to_dict()),
        "quantized": json.dumps(quantized),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return {"path": str(path), "file_bytes": Path(path).stat().st_size,
            "num_quantized_tensors": len(quantized), "recipe": recipe.name}


def meta_json(meta: dict, key: str, path) -> object:
    try:
        return json.loads(meta[key])
    except KeyError:
        raise ExportError(f"{path}: metadata lacks {key!r}") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: metadata {key!r} is not valid JSON: {e}") from None


def check_format(meta: dict, path, fmt: str, reads: tuple[str, ...], hint: str = "") -> None:
    """The file's metadata names format `fmt` at a version in `reads`; `hint` ends the
    format error (e.g. which loader a file of the other format needs)."""
    if meta.get("format") != fmt:
        raise ExportError(f"{path}: format {meta.get('format')!r} is not {fmt!r}{hint}")
    version = meta.get("format_version")
    if version not in reads:
        raise ExportError(f"{path}: written in format version {version!r}; this asrquant reads "
                          f"versions {', '.join(reads)}")


def check_finite(name: str, t: torch.Tensor, path) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ExportError(f"{path}: tensor {name!r} contains NaN or Inf")


def read_safetensors(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file; ExportError if it cannot be read."""
    if not path.is_file():
        raise FileNotFoundError(f"packed model {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                          f"{e}") from None
    return meta, tensors


def weight_info(path, name: str, info) -> tuple[QuantSpec, torch.Size, torch.dtype]:
    """Spec, shape and dtype of a quantized weight from the file's "quantized" metadata."""
    try:
        return (QuantSpec.from_dict(info["spec"]), torch.Size(info["shape"]),
                _WEIGHT_DTYPES[info["dtype"]])
    except (KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{path}: metadata of quantized weight {name!r} is invalid "
                          f"(needs spec, shape and dtype in {sorted(_WEIGHT_DTYPES)}): "
                          f"{e!r}") from None


def read_packed_weight(path, name: str, spec: QuantSpec, shape: torch.Size,
                       dtype: torch.dtype, tensors: dict) -> PackedWeight:
    """The PackedWeight of `name` from the file's tensors, after checking them: present
    (and none its spec has no use for), packed bytes fitting shape and bit width, scales
    and zero points of the right shape and dtype, no NaN or Inf."""
    need = [name + SEP + "packed", name + SEP + "scale"]
    for part, wanted in (("zero_point", not spec.symmetric),
                         ("super_scale", spec.scale_bits is not None)):
        if wanted:
            need.append(name + SEP + part)
        elif name + SEP + part in tensors:
            why = ("the recipe of this weight is symmetric" if part == "zero_point" else
                   "the recipe of this weight has no scale_bits")
            raise ExportError(f"{path}: tensor {name + SEP + part!r} present but {why}")
    missing = [k for k in need if k not in tensors]
    if missing:
        raise ExportError(f"{path}: quantized weight {name!r} lacks tensor(s) {missing}")
    packed = tensors[need[0]]
    nbytes = packed_nbytes(math.prod(shape), spec.bits)
    if packed.dtype != torch.uint8 or packed.shape != (nbytes,):
        raise ExportError(
            f"{path}: tensor {need[0]!r} is {packed.dtype} {tuple(packed.shape)}; "
            f"shape {tuple(shape)} at {spec.bits} bits needs uint8 ({nbytes},)")
    for part, (want, want_shape) in _qparam_layouts(spec, group_layout(shape, spec)).items():
        key = name + SEP + part
        t = tensors[key]
        if t.shape != want_shape or t.dtype != want:
            raise ExportError(
                f"{path}: tensor {key!r} is {t.dtype} {tuple(t.shape)}; the recipe needs "
                f"{want} {want_shape}")
        check_finite(key, t, path)
    parts = {part: tensors.get(name + SEP + part)
             for part in ("scale", "zero_point", "super_scale")}
    return PackedWeight(packed, parts["scale"], parts["zero_point"], shape, dtype, spec,
                        parts["super_scale"])


def load_quantized(path: str | os.PathLike, map_location: str = "cpu") -> ASRModule:
    """Rebuild an inference ASRModule (eval mode) whose quantized weights stay packed.

    The file is checked first: format and version, tensor presence, packed sizes, scale
    shapes and dtypes, NaN/Inf; any problem raises ExportError naming the tensor.
    """
    path = model_path(path)
    meta, tensors = read_safetensors(path)
    check_format(meta, path, FORMAT, READS_VERSIONS)
    version = meta["format_version"]
    model_config = meta_json(meta, "model_config", path)
    tokenizer = tokenizer_from_state(meta_json(meta, "tokenizer_state", path))
    quantized = meta_json(meta, "quantized", path)

    meta_json(meta, "recipe", path)
    packed_weights, plain = {}, {}
    for name, info in quantized.items():
        spec, shape, dtype = weight_info(path, name, info)
        if version == "1" and (spec.scale_bits is not None or spec.zero_point_dtype == "packed"):
            raise ExportError(f"{path}: quantized weight {name!r} has spec {spec.name()!r}, "
                              "which format version 1 cannot hold (double-quantized scales and "
                              "packed zero points came with version 2)")
        packed_weights[name] = read_packed_weight(path, name, spec, shape, dtype, tensors)
    for k, t in tensors.items():
        if SEP not in k:
            check_finite(k, t, path)
            plain[k] = t

    # Built on the meta device (no memory), then given the file's tensors with assign=True:
    # the float weights of quantized layers are never materialised, so peak memory while
    # loading stays near the packed model's size.
    with torch.device("meta"):
        module = ASRModule(model_config, tokenizer)
    expected = set(module.state_dict())
    unknown = sorted(set(plain) - expected)
    absent = sorted(expected - set(plain) - set(packed_weights))
    if unknown or absent:
        raise ExportError(f"{path}: tensors do not fit the model config: unexpected "
                          f"{unknown[:5]}, missing {absent[:5]}")
    for k, t in plain.items():
        target = module.state_dict()[k]
        if target.shape != t.shape:
            raise ExportError(f"{path}: tensor {k!r} has shape {tuple(t.shape)}; the model "
                              f"config needs {tuple(target.shape)}")
    pack_module_weights(module, packed_weights)
    module.load_state_dict({**plain, **{f"{packed_key(n)}.{b}": getattr(pw, b)
                                        for n, pw in packed_weights.items()
                                        for b in ("packed", "scale", "zero_point",
                                                  "super_scale")
                                        if getattr(pw, b) is not None}}, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ExportError(f"{path}: no tensor in the file for {left[:5]}")
    return module.to(map_location).eval()


def float_checkpoint(path: str | os.PathLike) -> dict:
    """A float model file (e.g. models/*.safetensors, `asrquant-export quant=float`) as the
    checkpoint dict that training and evaluation take: state_dict, model_config and
    tokenizer_state. Checked like any packed file; a quantized file is refused."""
    module = load_quantized(path)
    packed = [n for n, m in module.named_modules() if isinstance(m, PackedWeight)]
    if packed:
        raise ExportError(f"{path}: holds quantized weights ({packed[0]}, ...); PTQ, QAT and "
                          "fine-tuning start from a float model (export one with quant=float)")
    return {"state_dict": module.state_dict(), "model_config": module.hparams["model_config"],
            "tokenizer_state": module.tokenizer.to_state()}


def _qparam_layouts(spec: QuantSpec, layout) -> dict[str, tuple[torch.dtype, tuple]]:
    """Dtype and shape of each stored scale tensor of a weight: "scale", "zero_point" (if
    asymmetric) and "super_scale" (with scale_bits); k-bit codes and packed zero points are
    1-D uint8 of ceil(n_groups_total * bits / 8) bytes."""
    grid = (layout.rows, layout.n_groups)
    out = {"scale": (spec.torch_scale_dtype, grid)}
    if spec.scale_bits is not None:
        out["scale"] = (torch.uint8, (packed_nbytes(layout.num_scales, spec.scale_bits),))
        out["super_scale"] = (spec.torch_scale_dtype, (layout.rows,))
    if not spec.symmetric:
        out["zero_point"] = (spec.torch_zero_point_dtype, grid)
        if spec.zero_point_dtype == "packed":
            out["zero_point"] = (torch.uint8, (packed_nbytes(layout.num_scales, spec.bits),))
    return out


def packed_key(name: str) -> str:
    """'a.weight' -> 'a.packed_weight': where a swapped module keeps its PackedWeight."""
    mod, _, attr = name.rpartition(".")
    return f"{mod}.packed_{attr}" if mod else f"packed_{attr}"


def header_bytes(path: str | os.PathLike) -> int:
    """Bytes of a safetensors file before its tensor data (length prefix + JSON header)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n
