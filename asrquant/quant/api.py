"""Quantize any nn.Module in place, ours or not: `quantize_(model, recipe)`.

    report = quantize_(model, recipe)               # fake quantization (parametrizations)
    report = quantize_(model, recipe, packed=True)  # packed codes (Packed* modules)
    report = quantize_(qat_model, packed=True)      # after QAT: the trained quantizers' codes

The recipe's default applies to the weights of Linear, Conv1d, Conv2d and
MultiheadAttention (in_proj_weight), found by module type, whatever the model's names;
everything else stays float and the report's `left_float` says which matrices and why.
Packed modules decode to the very tensor fake quantization gives, so both forms produce the
same outputs bit for bit. Files: `asrquant.export.save_packed` / `load_packed`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .packed import PackedWeight, pack_module_weights, packed_class_for
from .primitives import QuantizedTensor, quantize
from .recipe import (
    FakeQuantize,
    LearnedFakeQuantize,
    QuantRecipe,
    attach_fake_quant,
    build_report,
    candidate_weight_names,
    detach_fake_quant,
    fake_quant_specs,
    packed_weight_modules,
    recipe_from_config,
    weight_names,
)
from .report import QuantReport
from .spec import QuantSpec


def as_recipe(recipe: QuantRecipe | dict) -> QuantRecipe:
    """A QuantRecipe as it is, or one built from a dict: the `QuantRecipe.to_dict` form
    ({"default": {...}, "rules": [...]}) or the flat form of conf/quant/*.yaml
    ({"bits": 4, "group_size": 128, ...}, see `recipe_from_config`)."""
    if isinstance(recipe, QuantRecipe):
        return recipe
    if isinstance(recipe, dict):
        if "default" in recipe:
            return QuantRecipe.from_dict(recipe)
        return recipe_from_config(recipe)
    raise ValueError(f"recipe={recipe!r} is invalid; allowed: a QuantRecipe or a dict "
                     "(QuantRecipe.to_dict form, or the flat conf/quant form with 'bits')")


def quantized_specs(model: nn.Module) -> dict[str, QuantSpec]:
    """Weight name -> spec, for the weights quantized now: with fake quantization attached
    or stored packed."""
    specs = fake_quant_specs(model)
    specs.update({n: pw.spec for n, pw in packed_weight_modules(model).items()})
    return specs


def recipe_plan(model: nn.Module, recipe: QuantRecipe) -> dict[str, QuantSpec]:
    """What `recipe.plan` gives the float model, computed on `model` as it is now (fake
    quantization attached, or weights packed): to check a quantized model against a recipe."""
    candidates = set(candidate_weight_names(model))
    plan = {}
    for n in weight_names(model):
        spec = recipe.spec_for(n, n in candidates)
        if spec is not None:
            plan[n] = spec
    return plan


def check_packable(model: nn.Module, names) -> None:
    """Every named weight has a packed module (Linear, Conv1d, Conv2d weight; MHA
    in_proj_weight): raises ValueError naming those that do not, before anything changes."""
    bad = []
    for name in names:
        mod_name, _, attr = name.rpartition(".")
        module = model.get_submodule(mod_name) if mod_name else model
        try:
            packed_class_for(module, attr)
        except ValueError:
            bad.append(f"{name} ({type(module).__name__}.{attr})")
    if bad:
        raise ValueError(f"cannot store {bad[:5]} packed: no packed module; allowed: Linear, "
                         "Conv1d, Conv2d weight and MultiheadAttention in_proj_weight (keep "
                         "the others float with a rule, or use fake quantization)")


def packed_weights(model: nn.Module, plan: dict[str, QuantSpec] | None = None,
                   ) -> dict[str, PackedWeight]:
    """Every quantized weight of `model` as a PackedWeight: those already packed as they
    are; those with fake quantization attached, with the codes their quantizer gives
    (learned scales and zero points included); and the float weights `plan` names,
    rounded to nearest (`quantize`)."""
    out = dict(packed_weight_modules(model))
    for mod_name, mod in model.named_modules():
        if not parametrize.is_parametrized(mod):
            continue
        for attr, plist in mod.parametrizations.items():
            fq = [p for p in plist if isinstance(p, FakeQuantize)]
            if not fq:
                continue
            name = f"{mod_name}.{attr}" if mod_name else attr
            if len(plist) != 1:
                raise ValueError(f"{name} has parametrizations {[type(p).__name__ for p in plist]}"
                                 "; packing needs fake quantization alone on a weight")
            out[name] = PackedWeight.from_quantized(_codes(fq[0], plist.original))
    params = dict(model.named_parameters())
    for name, spec in (plan or {}).items():
        if name in out:
            raise ValueError(f"plan names {name!r}, which is quantized already")
        if name not in params:
            raise ValueError(f"plan names {name!r}, which is not a parameter of "
                             f"{type(model).__name__}")
        out[name] = PackedWeight.from_quantized(quantize(params[name].detach(), spec))
    return out


def _codes(fq: FakeQuantize, w: torch.Tensor) -> QuantizedTensor:
    if isinstance(fq, LearnedFakeQuantize):
        return fq.quantized(w)
    return quantize(w.detach(), fq.spec)


def quantize_(model: nn.Module, recipe: QuantRecipe | dict | None = None, *,
              packed: bool = False, strict: bool = False) -> QuantReport:
    """Post-training quantization of `model` in place (round to nearest); returns the
    size report (`QuantReport`: per-tensor rows, totals, `left_float`).

    packed=False: fake quantization (`attach_fake_quant`): the weights stay float
        parameters and each forward sees their quantized values; ready for QAT.
    packed=True: each planned module is swapped for its packed class (PackedLinear,
        PackedConv1d, PackedConv2d, PackedMultiheadAttention) holding only the codes,
        scales and zero points; its forward code is unchanged. With recipe=None a model
        with fake quantization attached (e.g. after QAT) is converted to packed, keeping the
        codes its quantizers give.
    recipe: a QuantRecipe or a dict (see `as_recipe`). strict: a rule matching no
        parameter raises instead of warning.
    """
    if recipe is None:
        specs = fake_quant_specs(model)
        if not packed or not specs:
            raise ValueError("quantize_ recipe=None is allowed only with packed=True on a "
                             "model with fake quantization attached (after QAT); pass a "
                             "QuantRecipe or a dict")
        check_packable(model, specs)
        report = build_report(model, specs, "")
        weights = {n: w for n, w in packed_weights(model).items() if n in specs}
        detach_fake_quant(model)
        pack_module_weights(model, weights)
        return report
    recipe = as_recipe(recipe)
    if not packed:
        return attach_fake_quant(model, recipe, strict=strict)
    plan = recipe.plan(model, strict=strict)
    check_packable(model, plan)
    report = build_report(model, plan, recipe.name)
    weights = packed_weights(model, plan)
    pack_module_weights(model, {n: weights[n] for n in plan})
    return report
