"""Packed files of any nn.Module: `save_packed(model, path, recipe)` and
`load_packed(model_or_builder, path)`, which puts the codes back into the user's own
architecture (the quantized modules swapped, by name, for their packed classes).

File: one safetensors file (no pickle: loading executes no code).
  tensors   for every quantized weight W: "W::packed", "W::scale", and as its spec needs
            "W::zero_point" and "W::super_scale" (the same layout as our recognizer's files,
            docs/format.md); every other parameter and persistent buffer under its own
            state-dict name, at its own dtype.
  metadata  format "asrquant.packed-module", format_version, recipe (or null when the
            model was quantized already and no recipe was given), "quantized": {W: {shape,
            dtype, spec}}, "left_float": {matrix kept float: why}, and "module" (the class
            saved, to name it in errors). JSON strings.
The data after the header is exactly `QuantReport.stored_bytes` long: the report `save_packed`
returns counts every byte of the file but its header (`header_bytes`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from asrquant.export.packed import (
    FORMAT,
    ExportError,
    check_finite,
    check_format,
    meta_json,
    packed_key,
    read_packed_weight,
    read_safetensors,
    weight_info,
)
from asrquant.io import atomic_write
from asrquant.quant import QuantRecipe, QuantReport, build_report, original_name
from asrquant.quant.api import (
    as_recipe,
    check_packable,
    packed_weights,
    quantized_specs,
    recipe_plan,
)
from asrquant.quant.packed import SEP, PackedWeight, pack_module_weights
from asrquant.quant.recipe import packed_weight_modules, split_learned_qparams

MODULE_FORMAT = "asrquant.packed-module"
MODULE_FORMAT_VERSION = 1
_READS = ("1",)


def save_packed(model: nn.Module, path: str | os.PathLike,
                recipe: QuantRecipe | dict | None = None) -> QuantReport:
    """Write `model` with its weights packed to one safetensors file (atomically); returns
    the report of what was written (`stored_bytes` = file size - `header_bytes(path)`).

    The model may be float (then `recipe` says what to quantize, round to nearest),
    carry fake quantization (`quantize_`, `attach_fake_quant`, QAT with
    QuantizationCallback: the codes its quantizers give, learned scales included), or be
    packed already (`quantize_(..., packed=True)`, `load_packed`). For the last two the
    recipe is optional; given, it must plan exactly the weights quantized, with the same
    specs, or ExportError says which differ. The model is not changed.
    """
    path = Path(path)
    specs = quantized_specs(model)
    plan: dict = {}
    if recipe is not None:
        recipe = as_recipe(recipe)
        if specs:
            want = recipe_plan(model, recipe)
            if want != specs:
                diff = sorted(n for n in set(want) | set(specs) if want.get(n) != specs.get(n))
                raise ExportError(f"recipe {recipe.name!r} does not describe how {path.name} "
                                  f"is quantized: it differs on {diff[:5]}; pass recipe=None "
                                  "to store the model as it is quantized")
        else:
            plan = recipe.plan(model)
    elif not specs:
        raise ExportError(f"save_packed({path.name}): the model is float and no recipe was "
                          "given; pass a QuantRecipe (QuantRecipe(None) stores it all float)")
    try:
        check_packable(model, {**specs, **plan})
    except ValueError as e:
        raise ExportError(f"{path}: {e}") from None
    weights = packed_weights(model, plan)
    report = build_report(model, {**specs, **plan}, recipe.name if recipe else "")

    tensors = _plain_tensors(model, set(weights))
    quantized = {}
    for name, pw in weights.items():
        for part, t in pw.named_buffers():  # None ones skipped
            tensors[name + SEP + part] = t.detach().contiguous()
        quantized[name] = {"shape": list(pw.shape),
                           "dtype": str(pw.dtype).replace("torch.", ""),
                           "spec": pw.spec.to_dict()}
    metadata = {
        "format": MODULE_FORMAT,
        "format_version": str(MODULE_FORMAT_VERSION),
        "module": f"{type(model).__module__}.{type(model).__qualname__}",
        "recipe": json.dumps(None if recipe is None else recipe.to_dict()),
        "quantized": json.dumps(quantized),
        "left_float": json.dumps(report.left_float),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return report


def _plain_tensors(model: nn.Module, quantized: set[str]) -> dict[str, torch.Tensor]:
    """State-dict entries other than the quantized weights, under the names of the float
    model; ExportError for two entries sharing memory (tied weights: stored once each is
    not what the model had)."""
    inside_packed = tuple(f"{packed_key(n)}." for n in packed_weight_modules(model))
    state, _learned = split_learned_qparams(model.state_dict())
    out, seen = {}, {}
    for k, t in state.items():
        name = original_name(k)
        if name in quantized or k.startswith(inside_packed):
            continue
        t = t.detach()
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                raise ExportError(f"tensors {seen[ptr]!r} and {name!r} share memory (tied "
                                  "weights); save_packed stores untied tensors only")
            seen[ptr] = name
        out[name] = t.contiguous()
    return out


def load_packed(model: nn.Module | Callable[[], nn.Module],
                path: str | os.PathLike) -> nn.Module:
    """Load a `save_packed` file into the architecture it came from; returns the model in
    eval mode, its quantized modules swapped for packed ones holding the file's codes.

    model: the architecture, as a module (its weights are replaced; it is changed in place)
        or a zero-argument callable that builds one (e.g. a torchaudio builder with its
        arguments bound). A weight the file holds packed replaces whatever
        parametrization the module had on it (e.g. weight_norm, folded first). The tensors
        go to the device of the model's; a model built on the meta device (`with
        torch.device("meta"): build()`) is given the file's tensors on the CPU, so no
        random float weights are ever made.
    Every other tensor is loaded strictly: a tensor missing from the file or from the
    model, a shape or dtype that differs, a bad format or version, NaN or Inf, or a
    malformed packed weight raises ExportError naming the file and the tensor.
    """
    path = Path(path)
    meta, tensors = read_safetensors(path)
    check_format(meta, path, MODULE_FORMAT, _READS,
                 hint=(": a recognizer file; load it with asrquant.export.load_quantized"
                       if meta.get("format") == FORMAT else ""))
    quantized = meta_json(meta, "quantized", path)
    meta_json(meta, "recipe", path)
    saved_from = meta.get("module", "?")

    weights = {}
    for name, info in quantized.items():
        spec, shape, dtype = weight_info(path, name, info)
        weights[name] = read_packed_weight(path, name, spec, shape, dtype, tensors)
    plain = {k: t for k, t in tensors.items() if SEP not in k}
    stray = sorted(k.split(SEP)[0] for k in tensors if SEP in k and
                   k.split(SEP)[0] not in weights)
    if stray:
        raise ExportError(f"{path}: tensors of {stray[:5]} are packed but the metadata does "
                          "not list them as quantized")
    for k, t in plain.items():
        check_finite(k, t, path)

    module = model if isinstance(model, nn.Module) else model()
    if not isinstance(module, nn.Module):
        raise ExportError(f"load_packed model={model!r} built {type(module).__name__}; "
                          "allowed: an nn.Module or a callable returning one")
    if quantized_specs(module):
        raise ExportError(f"{path}: the skeleton is quantized already (fake quantization "
                          "attached or packed weights); load into a float model")
    _swap_in(module, weights, path, saved_from)

    expected = module.state_dict()
    packed_entries = {f"{packed_key(n)}.{b}": t for n, pw in weights.items()
                      for b, t in pw.named_buffers()}
    unknown = sorted(set(plain) - set(expected))
    absent = sorted(set(expected) - set(plain) - set(packed_entries))
    if unknown or absent:
        raise ExportError(f"{path}: tensors do not fit {type(module).__name__} (the file was "
                          f"saved from {saved_from}): in the file only {unknown[:5]}, in the "
                          f"model only {absent[:5]}")
    for k, t in plain.items():
        target = expected[k]
        if target.shape != t.shape or target.dtype != t.dtype:
            raise ExportError(f"{path}: tensor {k!r} is {t.dtype} {tuple(t.shape)}; the model "
                              f"has {target.dtype} {tuple(target.shape)}")
    on_meta = any(t.is_meta for t in expected.values())
    module.load_state_dict({**plain, **packed_entries}, strict=True, assign=on_meta)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ExportError(f"{path}: {left[:5]} of the model are on the meta device and not in "
                          "the file (non-persistent buffers?); build the model on a real device")
    return module.eval()


def _swap_in(module: nn.Module, weights: dict[str, PackedWeight], path, saved_from) -> None:
    """Swap each module named by `weights` for its packed class, after checking that it
    exists, takes a packed weight, and has the weight's shape and dtype."""
    owners = {}
    for name, pw in weights.items():
        mod_name, _, attr = name.rpartition(".")
        try:
            owners[name] = module.get_submodule(mod_name) if mod_name else module
        except AttributeError:
            raise ExportError(f"{path}: quantized weight {name!r} names module {mod_name!r}, "
                              f"which {type(module).__name__} lacks (the file was saved from "
                              f"{saved_from})") from None
        current = getattr(owners[name], attr, None)
        if not isinstance(current, torch.Tensor):
            raise ExportError(f"{path}: quantized weight {name!r}: the model's "
                              f"{type(owners[name]).__name__} has no tensor {attr!r}")
        if current.shape != pw.shape or current.dtype != pw.dtype:
            raise ExportError(f"{path}: quantized weight {name!r} is {pw.dtype} "
                              f"{tuple(pw.shape)}; the model's is {current.dtype} "
                              f"{tuple(current.shape)}")
        pw.to("cpu" if current.is_meta else current.device)
    try:
        check_packable(module, weights)
    except ValueError as e:
        raise ExportError(f"{path}: {e}") from None
    for name, owner in owners.items():
        attr = name.rpartition(".")[2]
        if parametrize.is_parametrized(owner, attr):  # e.g. weight_norm: the file holds W
            parametrize.remove_parametrizations(owner, attr, leave_parametrized=True)
    pack_module_weights(module, weights)
