"""Calibration PTQ of a whole model: capture each layer's inputs, quantize layer by layer.

    qtensors = calibrate_quantize(model, plan, batches, forward=lambda m, b: m(b),
                                  method="gptq")

`plan` is `QuantRecipe.plan(model)` (parameter name -> QuantSpec). Weights are visited in
stages, in the order the forward pass reaches them: a stage is one block of the model (the
modules under the same "<name>.<index>" prefix, e.g. one Conformer layer), or one module
outside any numbered block. For each stage, forward hooks accumulate H = X^T X of every
planned weight's inputs over the calibration batches (the forward stops right after the
stage's last module); then those weights are quantized (`method`) and their dequantized
values written into the model, so the next stage sees the outputs of the quantized layers
before it, as in GPTQ. With sequential="module" every module is a stage of its own (GPTQ's
"true sequential"): a layer's inputs then come from the quantized layers before it in the
same block too, at the cost of one calibration forward per module instead of per block.
Memory: the Hessians of one stage at a time.

Inputs per layer type (rows of X):
    Linear                 every position of the input's last dim
    Conv1d / Conv2d        im2col patches (F.unfold), so H matches the flattened weight rows
    depthwise Conv1d       per channel: H (channels, k, k), one Hessian per weight row
    MultiheadAttention     in_proj_weight: the (self-attention) input; out_proj.weight: the
                           attention context, recomputed in the hook with an identity out_proj

Methods: "gptq" (GPTQ rounding, qparams by `spec.clip`), "awq_clip" (round to nearest; each
group's clip ratio minimises the output error on the calibration inputs, the AWQ/HQQ-style
output-aware clip), "gptq_awq_clip" (both). GPTQ options: `refine` rounds of least-squares group
scales (`gptq.refit_scales`), and target="float" (each layer matches the float model's
output, not its float weights on the quantized inputs: `_target`). Padded frames of a batch
are inputs too (batch by similar length to keep them few).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .gptq import gptq_quantize, group_hessians
from .primitives import QuantizedTensor, dequantize, quantize
from .spec import QuantSpec

METHODS = ("rtn", "gptq", "awq_clip", "gptq_awq_clip")
NEEDS_CALIBRATION = ("gptq", "awq_clip", "gptq_awq_clip")
GPTQ_METHODS = ("gptq", "gptq_awq_clip")  # the methods whose codes GPTQ rounds
SEQUENTIAL = ("block", "module")  # what one stage is: a numbered block, or each module
TARGETS = ("quantized", "float")  # what a layer's quantized output should match (see _target)


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """How calibration PTQ runs: `method` (METHODS), GPTQ's dampening, act-order, block size,
    static or on-the-way groups, rounds of least-squares scale refinement (`refine`; all in
    `gptq_quantize`), what a stage is (`sequential`), and what a layer's quantized output
    should match (`target`: "quantized": its float weights on the inputs the quantized layers
    before it give, GPTQ's; "float": the float model's output, see `_target`)."""

    method: str = "gptq"
    damp: float = 0.01
    act_order: bool = True
    block_size: int = 128
    static_groups: bool = True
    sequential: str = "block"
    refine: int = 0
    target: str = "quantized"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is invalid; allowed: "
                             f"{list(METHODS)}")
        if not (isinstance(self.damp, (int, float)) and 0.0 <= self.damp <= 1.0):
            raise ValueError(f"damp={self.damp!r} is invalid; allowed: a number in [0, 1]")
        if not isinstance(self.act_order, bool):
            raise ValueError(f"act_order={self.act_order!r} is invalid; allowed: true or false")
        if self.sequential not in SEQUENTIAL:
            raise ValueError(f"sequential={self.sequential!r} is invalid; allowed: "
                             f"{list(SEQUENTIAL)}")
        if not isinstance(self.static_groups, bool):
            raise ValueError(f"static_groups={self.static_groups!r} is invalid; allowed: true "
                             "or false")
        if not (isinstance(self.refine, int) and not isinstance(self.refine, bool)
                and self.refine >= 0):
            raise ValueError(f"refine={self.refine!r} is invalid; allowed: an integer >= 0")
        if self.refine and self.method not in GPTQ_METHODS:
            raise ValueError(f"refine={self.refine} needs GPTQ codes; method={self.method!r} "
                             "allowed with refine=0 only (allowed methods for refine > 0: "
                             "'gptq', 'gptq_awq_clip')")
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r} is invalid; allowed: {list(TARGETS)}")
        if self.target == "float" and self.method not in GPTQ_METHODS:
            raise ValueError(f"target='float' needs GPTQ; method={self.method!r} allowed with "
                             "target='quantized' only (allowed methods for target='float': "
                             "'gptq', 'gptq_awq_clip')")
        if not (isinstance(self.block_size, int) and self.block_size >= 1):
            raise ValueError(f"block_size={self.block_size!r} is invalid; "
                             "allowed: an integer >= 1")

    @property
    def needs_data(self) -> bool:
        return self.method in NEEDS_CALIBRATION


class _StopForward(Exception):
    """Raised by a hook after the last module of a stage: the rest of the forward is wasted."""


class _Hessian:
    """Running X^T X of one weight's inputs (float64 sums; float32 when read)."""

    def __init__(self):
        self.sum: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None  # X^T X_float (target="float")
        self.count = 0

    def add(self, x: torch.Tensor, x_float: torch.Tensor | None = None) -> None:
        x = x.detach().to(torch.float64)  # x: (N, n) or (rows, N, n)
        xtx = x.transpose(-1, -2) @ x
        self.sum = xtx if self.sum is None else self.sum + xtx
        if x_float is not None:
            if x_float.shape != x.shape:
                raise ValueError(f"calibration: the float model's layer input has shape "
                                 f"{tuple(x_float.shape)}, the quantized model's "
                                 f"{tuple(x.shape)}; target='float' needs the same inputs")
            xtf = x.transpose(-1, -2) @ x_float.detach().to(torch.float64)
            self.cross = xtf if self.cross is None else self.cross + xtf
        self.count += x.shape[-2]

    def cross_value(self) -> torch.Tensor | None:
        return None if self.cross is None else (self.cross / max(self.count, 1)).to(torch.float32)

    def value(self) -> torch.Tensor:
        if self.sum is None:
            raise ValueError("no calibration input reached this layer")
        return (self.sum / max(self.count, 1)).to(torch.float32)


def _conv_padding(mod: nn.Module) -> tuple[int, ...]:
    k = mod.kernel_size
    if mod.padding == "valid":
        return tuple(0 for _ in k)
    if mod.padding == "same":
        raise ValueError(f"calibration of {type(mod).__name__} with padding='same' is not "
                         "supported; allowed: integer padding")
    if mod.padding_mode != "zeros":
        raise ValueError(f"calibration of {type(mod).__name__} with padding_mode="
                         f"{mod.padding_mode!r} is not supported; allowed: 'zeros'")
    return tuple(mod.padding)


def conv_inputs(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """im2col rows of a Conv1d/Conv2d input: (N, in/groups * k...) for groups=1, or
    (channels, N, k) for a depthwise convolution."""
    one_d = isinstance(mod, nn.Conv1d)
    if one_d:
        x = x.unsqueeze(-2)  # (B, C, 1, T)
        kernel, dilation = (1, mod.kernel_size[0]), (1, mod.dilation[0])
        padding, stride = (0, _conv_padding(mod)[0]), (1, mod.stride[0])
    else:
        kernel, dilation, padding, stride = (mod.kernel_size, mod.dilation,
                                             _conv_padding(mod), mod.stride)
    cols = torch.nn.functional.unfold(x, kernel, dilation, padding, stride)  # (B, C*K, L)
    kk = cols.shape[1] // x.shape[1]
    if mod.groups == 1:
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if mod.groups == mod.in_channels == mod.out_channels:
        c = x.shape[1]
        return cols.reshape(x.shape[0], c, kk, -1).permute(1, 0, 3, 2).reshape(c, -1, kk)
    raise ValueError(f"calibration of {type(mod).__name__} with groups={mod.groups} is not "
                     "supported; allowed: groups=1 or depthwise (groups = channels)")


@contextlib.contextmanager
def _identity_out_proj(mha: nn.MultiheadAttention):
    w, b = mha.out_proj.weight, mha.out_proj.bias
    saved = (w.data, None if b is None else b.data)
    w.data = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    if b is not None:
        b.data = torch.zeros_like(b.data)
    try:
        yield
    finally:
        w.data = saved[0]
        if b is not None:
            b.data = saved[1]


def _owner(name: str) -> tuple[str, str]:
    mod, _, attr = name.rpartition(".")
    return mod, attr


def stage_of(module_name: str) -> str:
    """The block a module belongs to: its name up to the first numeric component
    ("model.encoder.layers.3.ffn.0" -> "model.encoder.layers.3"), else itself."""
    parts = module_name.split(".")
    for i, p in enumerate(parts):
        if re.fullmatch(r"\d+", p) and i > 0:
            return ".".join(parts[: i + 1])
    return module_name


def _forward_order(model, batches, forward, modules: list[str]) -> list[str]:
    """Module names in the order the forward pass first calls them (one batch)."""
    order: list[str] = []
    handles = []
    for name in modules:
        def hook(mod, args, _name=name):
            if _name not in order:
                order.append(_name)
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            forward(model, batches[0])
    finally:
        for h in handles:
            h.remove()
    missing = [m for m in modules if m not in order]
    if missing:
        raise ValueError(f"calibration: the forward pass never calls {missing[:3]}; their "
                         "weights cannot be calibrated (quantize them with method=rtn)")
    return order


def calibrate_quantize(
    model: nn.Module,
    plan: dict[str, QuantSpec],
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any],
    config: CalibrationConfig = CalibrationConfig(),
    progress: Callable[[Iterable], Iterable] | None = None,
    stats: list | None = None,
) -> dict[str, QuantizedTensor]:
    """Quantize every weight of `plan` with calibration `config.method`, stage by stage (see
    the module docstring). The model's planned weights end up holding their dequantized
    values (float model in, PTQ model out); returns name -> QuantizedTensor (the codes and
    qparams to pack). `stats`, if given, receives per stage {"stage", "weights",
    "hessian_bytes" (the float64 sums held at once), "collect_s", "quantize_s"}."""
    batches = list(batches)
    if not batches:
        raise ValueError("calibration needs at least one batch of calibration data")
    by_module: dict[str, list[str]] = {}
    for name in plan:
        mod_name, attr = _owner(name)
        mod = model.get_submodule(mod_name) if mod_name else model
        if isinstance(mod, nn.Linear) and mod_name.endswith("out_proj"):
            parent = mod_name.rpartition(".")[0]
            if isinstance(model.get_submodule(parent), nn.MultiheadAttention):
                by_module.setdefault(parent, []).append(name)  # its input: the context
                continue
        if not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention)):
            raise ValueError(f"calibration cannot quantize {name!r} ({type(mod).__name__}); "
                             "allowed: weights of Linear, Conv1d, Conv2d, MultiheadAttention")
        by_module.setdefault(mod_name, []).append(name)
    was_training = model.training
    model.eval()
    floats = {} if config.target == "float" else None  # float values of quantized weights
    try:
        order = _forward_order(model, batches, forward, list(by_module))
        stages: dict[str, list[str]] = {}
        for m in order:
            stages.setdefault(stage_of(m) if config.sequential == "block" else m, []).append(m)
        out: dict[str, QuantizedTensor] = {}
        items = list(stages.items())
        for stage, mods in progress(items) if progress else items:
            t0 = time.perf_counter()
            acc = _collect(model, batches, forward, mods, by_module, floats)
            hessians = {name: a.value() for name, a in acc.items()}
            t1 = time.perf_counter()
            for m in mods:
                for name in by_module[m]:
                    if floats is not None:
                        floats[name] = model.get_parameter(name).detach().clone()
                    out[name] = _quantize_one(model, name, plan[name], hessians[name], config,
                                              acc[name].cross_value())
                    acc[name].cross = None
            if stats is not None:
                stats.append({"stage": stage, "weights": len(hessians),
                              "hessian_bytes": sum((2 if floats is None else 4) * h.numel()
                                                   * h.element_size()
                                                   for h in hessians.values()),
                              "collect_s": t1 - t0, "quantize_s": time.perf_counter() - t1})
        return out
    finally:
        model.train(was_training)


def _collect(model, batches, forward, mods: list[str], by_module, floats=None
             ) -> dict[str, _Hessian]:
    """H of every planned weight of the modules `mods` (one stage), from all batches. With
    `floats` (target="float": name -> the float value of every weight quantized so far), each
    batch first runs with those float weights swapped in, and X^T X_float is summed too,
    X_float being the same layer's input in the float model."""
    acc = {name: _Hessian() for m in mods for name in by_module[m]}
    pending: dict[str, list[torch.Tensor]] = {name: [] for name in acc}
    mode = {"float": False}

    def sink(name, x):
        if mode["float"]:
            pending[name].append(x.detach().clone())
        elif floats is None:
            acc[name].add(x)
        elif not pending[name]:
            raise ValueError(f"calibration: {name!r} saw more inputs in the quantized model "
                             "than in the float one; target='float' needs the same calls in both")
        else:
            acc[name].add(x, pending[name].pop(0))

    handles = _input_hooks(model, mods, by_module, sink)
    try:
        with torch.no_grad():
            for batch in batches:
                for as_float in ([True] if floats is not None else []) + [False]:
                    mode["float"] = as_float
                    try:
                        with _swapped(model, floats if as_float else None):
                            forward(model, batch)
                    except _StopForward:
                        pass
                left = [name for name, xs in pending.items() if xs]
                if left:
                    raise ValueError(f"calibration: {left[:3]} saw more inputs in the float "
                                     "model than in the quantized one; target='float' needs "
                                     "the same calls in both")
    finally:
        for h in handles:
            h.remove()
    return acc


@contextlib.contextmanager
def _swapped(model, values: dict[str, torch.Tensor] | None):
    """The parameters named in `values` hold those tensors (no copy) inside the block."""
    saved = {}
    try:
        for name, value in (values or {}).items():
            param = model.get_parameter(name)
            saved[name] = param.data
            param.data = value
        yield
    finally:
        for name, data in saved.items():
            model.get_parameter(name).data = data


def _input_hooks(model, mods: list[str], by_module, sink) -> list:
    """Forward hooks on the modules `mods` that hand each planned weight's input rows to
    `sink(name, x)` (see the module docstring for what they are per layer type) and stop
    the forward after the last of them."""
    last = mods[-1]
    busy = set()

    def make_hook(m: str):
        mod = model.get_submodule(m)

        def hook(module, args, kwargs, output):
            if m in busy:
                return
            x = args[0] if args else kwargs.get("query", kwargs.get("input"))
            for name in by_module[m]:
                attr = _owner(name)[1]
                if isinstance(module, nn.MultiheadAttention):
                    if attr == "weight":  # out_proj: its input is the attention context
                        busy.add(m)
                        try:
                            with _identity_out_proj(module):
                                ctx = module(*args, **kwargs)[0]
                        finally:
                            busy.discard(m)
                        sink(name, ctx.reshape(-1, ctx.shape[-1]))
                    else:
                        key = args[1] if len(args) > 1 else kwargs.get("key", x)
                        value = args[2] if len(args) > 2 else kwargs.get("value", x)
                        if key is not x or value is not x:
                            raise ValueError(f"calibration of {name!r}: only self-attention "
                                             "(query is key is value) is supported")
                        sink(name, x.reshape(-1, x.shape[-1]))
                elif isinstance(module, nn.Linear):
                    sink(name, x.reshape(-1, x.shape[-1]))
                else:
                    sink(name, conv_inputs(module, x))
            if m == last:
                raise _StopForward

        return mod.register_forward_hook(hook, with_kwargs=True)

    return [make_hook(m) for m in mods]


def _target(w: torch.Tensor, h: torch.Tensor, cross: torch.Tensor, damp: float
            ) -> torch.Tensor:
    """The weight whose outputs on the quantized model's inputs X best match the float
    model's outputs X_f w (target="float", the asymmetric calibration of GPTAQ, Li et al.
    2025): min_v ||X v - X_f w||^2 is solved by v = H^-1 C w = w + H^-1 (C - H) w with
    H = X^T X and C = X^T X_f; the correction is damped like GPTQ's H, so v = w exactly when
    the inputs agree (the first stage). Then ||X q - X_f w||^2 = (q - v)^T H (q - v) + const
    (undamped), so GPTQ of v with H minimises the error against the float model's outputs."""
    rows = w.shape[0]
    flat = w.detach().reshape(rows, -1).to(torch.float64)
    h64 = h.to(torch.float64)
    hd = h64.clone()
    mean = hd.diagonal(dim1=-2, dim2=-1).mean(dim=-1, keepdim=True)
    hd.diagonal(dim1=-2, dim2=-1).add_(damp * mean)
    dead = hd.diagonal(dim1=-2, dim2=-1) <= 0
    hd.diagonal(dim1=-2, dim2=-1)[dead] = 1.0
    gap = cross.to(torch.float64) - h64  # X^T (X_f - X)
    if hd.dim() == 2:
        v = flat + torch.linalg.solve(hd, gap @ flat.T).T
    else:
        v = flat + torch.linalg.solve(hd, gap @ flat.unsqueeze(-1)).squeeze(-1)
    return v.to(torch.float32).reshape(w.shape)


def _quantize_one(model, name: str, spec: QuantSpec, h: torch.Tensor,
                  config: CalibrationConfig, cross: torch.Tensor | None = None
                  ) -> QuantizedTensor:
    param = model.get_parameter(name)
    w = param.detach()
    if cross is not None:
        w = _target(w, h, cross, config.damp)
    if config.method in GPTQ_METHODS:
        qt = gptq_quantize(w, h, spec, damp=config.damp, act_order=config.act_order,
                           block_size=config.block_size,
                           output_clip=config.method == "gptq_awq_clip",
                           static_groups=config.static_groups, refine=config.refine)
    elif config.method == "awq_clip":
        qt = quantize(w, dataclasses.replace(spec, clip="mse"),
                      hessian=group_hessians(h, w.shape, spec))
    else:
        qt = quantize(w, spec)
    qt = dataclasses.replace(qt, spec=spec)
    with torch.no_grad():
        param.copy_(dequantize(qt))
    return qt
