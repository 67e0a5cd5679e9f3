"""Recipes: which parameter gets which QuantSpec; attaching fake quantization to a model.

A `QuantRecipe` has a default spec (None = keep float) and ordered rules
`pattern -> QuantSpec | None`. For each parameter name, the first rule whose pattern
matches decides; if none matches, candidates get the default and others stay float.

Patterns are shell-style globs matched against the full parameter name with
`fnmatch.fnmatchcase` ("*.ffn1.*", "conformer_layers.0.*"), or regular expressions when
prefixed with "re:" (matched with `re.fullmatch`, like the globs against the whole name,
e.g. "re:.*layers\\.(0|1)\\..*").

Candidates are the weights of Linear, Conv1d, Conv2d and MultiheadAttention
(in_proj_weight, or q/k/v_proj_weight). Rules apply to candidates only, unless a rule is
made with `candidates_only=False`: biases, norms and embeddings are quantized only then.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from asrquant.checks import check_keys

from .packed import PackedWeight
from .primitives import (
    QuantizedTensor,
    _round_scale,
    fake_quantize,
    fake_quantize_learned,
    quantize,
    quantize_with,
)
from .report import QuantReport, param_row
from .spec import QuantSpec


@dataclass(frozen=True)
class QuantRule:
    """`pattern -> spec`. With `candidates_only` (default) the rule applies to candidate
    weights only, so "*.self_attn.*" does not catch biases; set it False to quantize other
    parameters (biases, norms, embeddings) that the pattern names."""

    pattern: str
    spec: QuantSpec | None
    candidates_only: bool = True

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"QuantRule.pattern={self.pattern!r} is invalid; allowed: a non-empty "
                             "glob or 're:<regex>' string")
        if self.pattern.startswith("re:"):
            try:
                re.compile(self.pattern[3:])
            except re.error as e:
                raise ValueError(
                    f"QuantRule.pattern={self.pattern!r} is not a valid regex: {e}"
                ) from None

    def matches(self, name: str) -> bool:
        if self.pattern.startswith("re:"):
            return re.fullmatch(self.pattern[3:], name) is not None
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class QuantRecipe:
    default: QuantSpec | None
    rules: tuple[QuantRule, ...] = field(default_factory=tuple)
    name: str = "custom"

    def __post_init__(self):
        rules = tuple(
            r if isinstance(r, QuantRule) else QuantRule(*r) for r in (self.rules or ())
        )
        object.__setattr__(self, "rules", rules)

    def spec_for(self, name: str, is_candidate: bool) -> QuantSpec | None:
        for rule in self.rules:
            if (is_candidate or not rule.candidates_only) and rule.matches(name):
                return rule.spec
        return self.default if is_candidate else None

    def plan(self, model: nn.Module, strict: bool = False) -> dict[str, QuantSpec]:
        """Parameter name -> spec for every parameter this recipe quantizes.

        A rule that matches no parameter is a likely typo: a warning naming it, or a
        ValueError if `strict`.
        """
        if _has_fake_quant(model):
            raise ValueError("model already has fake quantization attached; "
                             "call detach_fake_quant(model) first")
        candidates = set(candidate_weight_names(model))
        names = [n for n, _ in model.named_parameters()]
        unused = [
            r.pattern for r in self.rules
            if not any(r.matches(n) for n in (candidates if r.candidates_only else names))
        ]
        if unused:
            msg = (f"recipe {self.name!r}: rule pattern(s) {unused} match no parameter of "
                   f"{type(model).__name__} (e.g. {names[:3]})")
            if strict:
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=2)
        plan = {}
        for n in names:
            spec = self.spec_for(n, n in candidates)
            if spec is not None:
                plan[n] = spec
        return plan

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "default": None if self.default is None else self.default.to_dict(),
            "rules": [
                {"pattern": r.pattern, "spec": None if r.spec is None else r.spec.to_dict(),
                 "candidates_only": r.candidates_only}
                for r in self.rules
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> QuantRecipe:
        check_keys("QuantRecipe", d, ("name", "default", "rules"))
        default = d.get("default")
        rules = []
        for i, r in enumerate(d.get("rules") or []):
            if not isinstance(r, dict) or "pattern" not in r:
                raise ValueError(f"QuantRecipe.rules[{i}]={r!r} is invalid; allowed: "
                                 "{'pattern': str, 'spec': dict | None}")
            check_keys(f"QuantRecipe.rules[{i}]", r, ("pattern", "spec", "candidates_only"))
            spec = r.get("spec")
            spec = None if spec is None else QuantSpec.from_dict(spec)
            rules.append(QuantRule(r["pattern"], spec, bool(r.get("candidates_only", True))))
        return cls(
            default=None if default is None else QuantSpec.from_dict(dict(default)),
            rules=tuple(rules),
            name=d.get("name", "custom"),
        )


_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def candidate_weight_names(model: nn.Module) -> list[str]:
    """Names of the parameters a recipe's default applies to."""
    names = []
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            names.append(prefix + "weight")
        elif isinstance(mod, nn.MultiheadAttention):
            names += [prefix + w for w in _MHA_WEIGHTS if getattr(mod, w, None) is not None]
    return names


class FakeQuantize(nn.Module):
    """Parametrization: the module sees fake_quantize(weight); the optimizer sees the weight."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self.spec)

    def extra_repr(self) -> str:
        return self.spec.describe()


class LearnedFakeQuantize(FakeQuantize):
    """Parametrization with learned quantization parameters (LSQ / LSQ+): `scale` and, if
    asymmetric, `zero_point` (rows, n_groups) are nn.Parameters trained with the weights
    (see `fake_quantize_learned`), initialised from a quantized tensor (RTN, mse or GPTQ)."""

    def __init__(self, spec: QuantSpec, init: QuantizedTensor):
        super().__init__(spec)
        if spec.scale_bits is not None:
            raise ValueError(f"qat.scales=learned does not support {spec.name()} (scale_bits="
                             f"{spec.scale_bits}); allowed: recipes without scale_bits")
        self.scale = nn.Parameter(init.float_scale().clone())
        zp = init.zero_point
        self.zero_point = None if zp is None else nn.Parameter(zp.to(torch.float32).clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize_learned(w, self.spec, self.scale, self.zero_point)

    def quantized(self, w: torch.Tensor) -> QuantizedTensor:
        """The codes and stored qparams this parametrization gives `w` (what export packs)."""
        return learned_quantized(w, self.spec, self.scale, self.zero_point)

    def extra_repr(self) -> str:
        return f"{self.spec.describe()}, learned scales"


def learned_quantized(w: torch.Tensor, spec: QuantSpec, scale: torch.Tensor,
                      zero_point: torch.Tensor | None) -> QuantizedTensor:
    """Codes of `w` under learned qparams, stored as `fake_quantize_learned` uses them."""
    with torch.no_grad():
        s = _round_scale(scale.detach().abs().to(torch.float32), spec)
        z = None if zero_point is None else torch.round(zero_point.detach()).clamp(spec.qmin,
                                                                                   spec.qmax)
        return quantize_with(w.detach(), spec, s, z)


SCALE_MODES = ("dynamic", "learned")
_LEARNED = re.compile(r"(.*)\.parametrizations\.([^.]+)\.0\.(scale|zero_point)$")


def split_learned_qparams(state_dict: dict) -> tuple[dict, dict[str, dict]]:
    """(the rest, {parameter name: {"scale", "zero_point"}}) of a state dict with learned
    quantization parameters (LearnedFakeQuantize's tensors)."""
    rest, learned = {}, {}
    for k, v in state_dict.items():
        m = _LEARNED.fullmatch(k)
        if m:
            name = f"{m.group(1)}.{m.group(2)}"
            learned.setdefault(name, {"zero_point": None})[m.group(3)] = v
        else:
            rest[k] = v
    return rest, learned


def _split(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, pname = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), pname


def _has_fake_quant(model: nn.Module) -> bool:
    return any(
        isinstance(p, FakeQuantize)
        for m in model.modules()
        if parametrize.is_parametrized(m)
        for plist in m.parametrizations.values()
        for p in plist
    )


_ORIGINAL = re.compile(r"(?:(.*)\.)?parametrizations\.([^.]+)\.original")


def original_name(name: str) -> str:
    """'a.parametrizations.weight.original' -> 'a.weight': a parameter's name before
    fake quantization was attached. Names of parametrizations with several originals
    (weight_norm's 'a.parametrizations.weight.original0') are the tensors themselves, kept."""
    m = _ORIGINAL.fullmatch(name)
    if m is None:
        return name
    return f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)


def packed_weight_modules(model: nn.Module) -> dict[str, PackedWeight]:
    """Weight name ('a.weight') -> its PackedWeight, for the weights of `model` that are
    stored packed (modules swapped by `pack_module_weights`)."""
    out = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, PackedWeight):
            parent, _, child = mod_name.rpartition(".")
            attr = child.removeprefix("packed_")
            out[f"{parent}.{attr}" if parent else attr] = mod
    return out


def weight_names(model: nn.Module) -> list[str]:
    """Names of the model's tensors as they were before quantization: parameters (with fake
    quantization attached, under their own names; learned scales left out), then the
    weights stored packed."""
    names = [original_name(n) for n, _ in model.named_parameters() if not _LEARNED.fullmatch(n)]
    return names + list(packed_weight_modules(model))


_RECURRENT = (nn.RNNBase,)
_TABLES = (nn.Embedding, nn.EmbeddingBag)


def left_float(model: nn.Module, plan: dict[str, QuantSpec]) -> dict[str, str]:
    """Matrices and kernels (parameters of 2+ dims) of `model` that `plan` keeps float,
    each with the reason. Vectors (biases, norm scales) always stay float: not listed."""
    candidates = set(candidate_weight_names(model))
    out = {}
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if ".parametrizations" in f".{mod_name}" or isinstance(mod, PackedWeight):
            continue  # a parametrization's originals: reported under their module below
        if parametrize.is_parametrized(mod):
            for attr, plist in mod.parametrizations.items():
                kinds = [type(p).__name__ for p in plist]
                if prefix + attr in plan or any(isinstance(p, FakeQuantize) for p in plist):
                    continue
                out[prefix + attr] = (
                    f"parametrized by {kinds} (stored as its originals, not as one tensor); "
                    f"fold it with torch.nn.utils.parametrize.remove_parametrizations(module, "
                    f"{attr!r}) to quantize it")
        for pname, p in mod.named_parameters(recurse=False):
            name = prefix + pname
            if p.dim() < 2 or name in plan:
                continue
            if name in candidates:
                why = "kept float by the recipe"
            elif isinstance(mod, _RECURRENT):
                why = (f"{type(mod).__name__} weight: read by a fused recurrent kernel, "
                       "no packed module")
            elif isinstance(mod, _TABLES):
                why = "embedding table: rows are looked up, not multiplied"
            else:
                why = f"{type(mod).__name__}.{pname}: no packed module for it"
            out[name] = why
    return out


def build_report(
    model: nn.Module, plan: dict[str, QuantSpec], recipe_name: str = ""
) -> QuantReport:
    """Report of `plan` on `model`; parameter names are taken as before attaching, so the
    plan of a model with fake quantization (fake_quant_specs) works too, and weights stored
    packed (PackedWeight modules) are counted at their own specs. `left_float` names the
    matrices the plan keeps float and why."""
    rows = []
    for n, p in model.named_parameters():
        if _LEARNED.fullmatch(n):  # a learned scale or zero point: counted with its weight
            continue
        n = original_name(n)
        rows.append(param_row(n, p, plan.get(n)))
    packed = packed_weight_modules(model)  # a packed model: each weight at its own spec
    for n, pw in packed.items():
        rows.append(param_row(n, torch.empty(pw.shape, dtype=pw.dtype, device="meta"),
                              pw.spec))
    persistent = model.state_dict(keep_vars=True)
    packed_buffers = {id(b) for pw in packed.values() for b in pw.buffers()}
    buffer_bytes = sum(
        b.numel() * b.element_size() for n, b in model.named_buffers()
        if n in persistent and id(b) not in packed_buffers
    )
    return QuantReport(rows=rows, recipe_name=recipe_name, buffer_bytes=buffer_bytes,
                       left_float=left_float(model, plan))


def attach_fake_quant(
    model: nn.Module,
    recipe: QuantRecipe,
    strict: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
    scales: str = "dynamic",
    init: dict[str, QuantizedTensor] | None = None,
) -> QuantReport:
    """Swap in fake-quantized weights via torch.nn.utils.parametrize; returns the size report.

    The model's forward code is untouched; `module.weight` now returns the fake-quantized
    value, recomputed from the float weight (`...parametrizations.weight.original`) on every
    access, so training updates the float weights through the straight-through estimator.
    Wrap inference in `torch.nn.utils.parametrize.cached()` to quantize once per forward.
    `progress` may wrap the list of parameters (e.g. tqdm) to show progress.

    scales: "dynamic" (scales recomputed from the weight on every call, gradient straight
    through) or "learned" (LSQ: trainable scales and zero points, LearnedFakeQuantize),
    initialised from `init[name]` (e.g. the codes calibration PTQ chose) or else from
    round-to-nearest of the weight.
    """
    if scales not in SCALE_MODES:
        raise ValueError(f"scales={scales!r} is invalid; allowed: {list(SCALE_MODES)}")
    plan = recipe.plan(model, strict=strict)
    report = build_report(model, plan, recipe.name)
    items = list(plan.items())
    for name, spec in progress(items) if progress else items:
        module, pname = _split(model, name)
        if scales == "learned":
            start = (init or {}).get(name) or quantize(getattr(module, pname).detach(), spec)
            fq = LearnedFakeQuantize(spec, start)
        else:
            fq = FakeQuantize(spec)
        parametrize.register_parametrization(module, pname, fq, unsafe=True)
    return report


def detach_fake_quant(
    model: nn.Module,
    bake: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[str]:
    """Remove fake quantization; with bake=True the weights keep their quantized values
    (this is where PTQ does its work: `progress` may wrap the parameters, e.g. tqdm).

    Returns the names of the parameters it was removed from.
    """
    todo = [
        (mod_name, mod, pname)
        for mod_name, mod in model.named_modules()
        if parametrize.is_parametrized(mod)
        for pname, plist in mod.parametrizations.items()
        if any(isinstance(p, FakeQuantize) for p in plist)
    ]
    removed = []
    for mod_name, mod, pname in progress(todo) if progress else todo:
        with torch.no_grad():
            parametrize.remove_parametrizations(mod, pname, leave_parametrized=bake)
        removed.append(f"{mod_name}.{pname}" if mod_name else pname)
    return removed


def fake_quant_specs(model: nn.Module) -> dict[str, QuantSpec]:
    """Parameter name (as before attaching) -> spec, for the fake quantization attached now."""
    out = {}
    for mod_name, mod in model.named_modules():
        if parametrize.is_parametrized(mod):
            for pname, plist in mod.parametrizations.items():
                for p in plist:
                    if isinstance(p, FakeQuantize):
                        out[f"{mod_name}.{pname}" if mod_name else pname] = p.spec
    return out


_SPEC_KEYS = ("bits", "symmetric", "granularity", "group_size", "clip", "clip_ratio", "clip_grid",
              "scale_dtype", "zero_point_dtype", "scale_bits")


def recipe_from_config(cfg: dict) -> QuantRecipe:
    """Build a recipe from the flat form used by `conf/quant/*.yaml`.

    A recipe without rules is named after its spec (`canonical_name`), so a run made with
    `quant=int8 quant.bits=4` is called int4_sym_ch, not int8; mixed recipes keep `name`.

        name: int2_asym_g32
        bits: 2            # null: float (nothing quantized by default)
        symmetric: false
        granularity: group
        group_size: 32
        clip: none
        rules:             # first match wins; keys not given are taken from the default
          - {pattern: "*.self_attn.*", bits: 4, group_size: 128}
          - {pattern: "encoder_proj.*", float: true}

    `method` (rtn | gptq | awq_clip | gptq_awq_clip) says how codes are chosen, not what they
    are: it is read by the run (asrquant.quant.calibrate) and not part of the recipe.
    Unknown keys raise ValueError naming them and the allowed ones.
    """
    cfg = dict(cfg)
    check_keys("quant recipe", cfg, ("name", "rules", "method", *_SPEC_KEYS))
    cfg.pop("method", None)
    name = cfg.pop("name", "custom")
    rule_cfgs = cfg.pop("rules", None) or []
    base = {k: v for k, v in cfg.items() if v is not None or k == "group_size"}
    default = None if cfg.get("bits") is None else QuantSpec.from_dict(base)
    rule_keys = {"pattern", "float", "candidates_only", *_SPEC_KEYS}
    rules = []
    for i, r in enumerate(rule_cfgs):
        r = dict(r)
        check_keys(f"quant.rules[{i}]", r, rule_keys)
        if "pattern" not in r:
            raise ValueError(f"quant.rules[{i}]={r!r} is invalid: needs 'pattern'")
        pattern = r.pop("pattern")
        only = bool(r.pop("candidates_only", True))
        if r.pop("float", False):
            rules.append(QuantRule(pattern, None, only))
            continue
        merged = {**base, **r}
        if merged.get("bits") is None:
            raise ValueError(f"quant.rules[{i}] ({pattern!r}) needs 'bits' (the recipe's "
                             "default is float) or 'float: true'")
        if "granularity" in r and r["granularity"] != "group" and "group_size" not in r:
            merged["group_size"] = None
        rules.append(QuantRule(pattern, QuantSpec.from_dict(merged), only))
    if not rules:  # the name says what the recipe is, even after field overrides
        name = canonical_name(default)
    return QuantRecipe(default=default, rules=tuple(rules), name=name)


def canonical_name(spec: QuantSpec | None) -> str:
    """'float', or the spec's name (`QuantSpec.name`), e.g. 'int2_asym_g32_mse'."""
    return "float" if spec is None else spec.name()


CHECKPOINT_KEY = "asrquant_quantization"  # where a Trainer checkpoint keeps its recipe


def scales_of_checkpoint(checkpoint: dict) -> str:
    """How a QAT checkpoint's scales were trained ("dynamic" unless it says "learned")."""
    return (checkpoint.get(CHECKPOINT_KEY) or {}).get("scales", "dynamic")


def recipe_of_checkpoint(checkpoint: dict) -> QuantRecipe | None:
    """The recipe a QAT checkpoint was trained with (written by QuantizationCallback under
    CHECKPOINT_KEY); None for a float checkpoint."""
    info = checkpoint.get(CHECKPOINT_KEY)
    if not info or info.get("mode") != "qat":
        return None
    return QuantRecipe.from_dict(info["recipe"])
