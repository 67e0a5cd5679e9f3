"""Modules whose weights are stored only as packed integer codes, dequantized on the fly.

`packed_state_dict(model, plan)` is the generic packer: any nn.Module and a plan
(parameter name -> QuantSpec, e.g. `QuantRecipe.plan(model)`) give the tensors to store
(codes, scales, zero points; every other tensor as it is) and the metadata to rebuild them.
`pack_module_weights(model, qtensors)` turns, in place, each named weight into a
`PackedWeight` (packed uint8 codes + scales + zero points, + super-scales when the scales are
double-quantized) and switches its module to the
matching class below, whose `weight` (or `in_proj_weight`) is a property that dequantizes.
The modules' own forward code is unchanged, so outputs equal those of the fake-quantized
model bit for bit: the dequantized weight is the same tensor `fake_quantize` produces.

    PackedLinear                 nn.Linear (and MultiheadAttention's out_proj)
    PackedConv1d / PackedConv2d  nn.Conv1d (pointwise and depthwise) / nn.Conv2d
    PackedMultiheadAttention     nn.MultiheadAttention's in_proj_weight
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .pack import from_unsigned, pack, to_unsigned, unpack
from .primitives import QuantizedTensor, cast_saturating, decode_scales, group_layout, quantize
from .spec import QuantSpec

SEP = "::"  # "<param>::packed", "<param>::scale", "<param>::zero_point", "<param>::super_scale"


class PackedWeight(nn.Module):
    """Packed codes (uint8 buffer), scales and zero points of one weight; call it to decode.

    The buffers are the tensors of the file: `scale` (rows, n_groups) at scale_dtype, or with
    spec.scale_bits the groups' k-bit scale codes packed (1-D uint8) and `super_scale` (rows,)
    at scale_dtype; `zero_point` (rows, n_groups) at zero_point_dtype, or for "packed" at
    `bits` bits, packed (1-D uint8); None if symmetric.
    """

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor,
                 zero_point: torch.Tensor | None, shape, dtype: torch.dtype, spec: QuantSpec,
                 super_scale: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("packed", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)
        self.register_buffer("super_scale", super_scale)
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.spec = spec

    @classmethod
    def from_quantized(cls, qt: QuantizedTensor) -> PackedWeight:
        spec = qt.spec
        u = to_unsigned(qt.codes, spec.bits, spec.symmetric)
        scale = qt.scale if spec.scale_bits is None else pack(qt.scale, spec.scale_bits)
        zp = qt.zero_point
        if zp is not None and spec.zero_point_dtype == "packed":
            zp = pack(zp, spec.bits)
        return cls(pack(u, spec.bits), scale, zp, qt.shape, qt.dtype, spec, qt.super_scale)

    def qparam_tables(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scales and zero points (rows, n_groups) as QuantizedTensor holds them: scale codes
        and packed zero points unpacked."""
        layout = group_layout(self.shape, self.spec)
        scale, zp = self.scale, self.zero_point
        if self.spec.scale_bits is not None:
            scale = unpack(scale, self.spec.scale_bits, layout.num_scales).reshape(
                layout.rows, layout.n_groups)
        if zp is not None and self.spec.zero_point_dtype == "packed":
            zp = unpack(zp, self.spec.bits, layout.num_scales).reshape(layout.rows,
                                                                       layout.n_groups)
        return scale, zp

    def quantized(self) -> QuantizedTensor:
        u = unpack(self.packed, self.spec.bits, self.shape.numel())
        codes = from_unsigned(u, self.spec.bits, self.spec.symmetric).reshape(self.shape)
        scale, zp = self.qparam_tables()
        return QuantizedTensor(codes, scale, zp, self.shape, self.dtype, self.spec,
                               self.super_scale)

    def forward(self) -> torch.Tensor:
        """The dequantized weight, equal bit for bit to dequantize(self.quantized()).

        Fast path: w = (u - offset) * scale on the unsigned codes u, with offset = zero point
        (asymmetric) or qmax (symmetric): the same integer differences in float32, without
        building signed codes or converting scales on every call.
        """
        bits, numel, rows, row_len, glen, full, body = self._plan()
        w = _unpack_float(self.packed, bits, numel)
        offset, scale, off_tail, scale_tail = self._float_qparams(full)
        if body == row_len:  # no short last group: one broadcast over (rows, groups, glen)
            w.view(rows, full, glen).sub_(offset).mul_(scale)
        else:
            w = w.view(rows, row_len)
            if full:
                w[:, :body].unflatten(1, (full, glen)).sub_(offset).mul_(scale)
            w[:, body:].sub_(off_tail).mul_(scale_tail)
        w = w.view(self.shape)  # a fresh tensor: decoded in place above
        return w if self.dtype == torch.float32 else cast_saturating(w, self.dtype)

    def _plan(self):
        """Layout numbers, fixed by shape and spec: computed once (forward runs per call)."""
        plan = self.__dict__.get("_layout_plan")
        if plan is None:
            layout = group_layout(self.shape, self.spec)
            full = layout.row_len // layout.group_len  # complete groups; a short one may follow
            plan = (self.spec.bits, self.shape.numel(), layout.rows, layout.row_len,
                    layout.group_len, full, full * layout.group_len)
            self.__dict__["_layout_plan"] = plan
        return plan

    def _float_qparams(self, full: int):
        """Offsets and scales as float32 (rows, groups, 1), split into the complete groups
        and the short last one; cached until the buffers change (e.g. `.to(device)`)."""
        cache = self.__dict__.get("_qparams_cache")
        zp, sup = self.zero_point, self.super_scale
        key = (self.scale.data_ptr(), self.scale._version,
               None if zp is None else (zp.data_ptr(), zp._version),
               None if sup is None else (sup.data_ptr(), sup._version))
        if cache is None or cache[0] != key:
            scale, zp = self.qparam_tables()
            if sup is None:
                scale = scale.to(torch.float32).unsqueeze(-1)
            else:  # as the quantizer decoded them: code * super in float32
                scale = decode_scales(scale, sup.unsqueeze(-1)).unsqueeze(-1)
            if zp is not None:
                offset = zp.to(torch.float32).unsqueeze(-1)
            else:
                offset = torch.full_like(scale, float(-self.spec.qmin))
            tail = (offset[:, full], scale[:, full]) if full < scale.shape[1] else (None, None)
            cache = (key, offset[:, :full], scale[:, :full], *tail)
            self.__dict__["_qparams_cache"] = cache
        return cache[1:]

    def extra_repr(self) -> str:
        return f"{tuple(self.shape)}, {self.spec.describe()}, {self.packed.numel()} bytes"


_WORD_SHIFTS: dict = {}


def _unpack_float(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Unsigned codes as float32.

    When codes do not cross bytes (1, 2, 4, 8 bits), the packed bytes are read as 32-bit
    little-endian words, so the code k of a word sits at bits [k*bits, (k+1)*bits): one
    vectorised shift-and-mask over all words (about twice as fast here as a byte lookup
    table). Other widths take the general `unpack`.
    """
    if bits == 8:
        return packed[:numel].to(torch.float32)
    if 8 % bits or sys.byteorder != "little":
        return unpack(packed, bits, numel).to(torch.float32)
    if packed.numel() % 4 or packed.storage_offset() % 4:
        packed = torch.nn.functional.pad(packed, (0, -packed.numel() % 4))
    key = (bits, packed.device)
    if key not in _WORD_SHIFTS:
        _WORD_SHIFTS[key] = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)
    words = packed.view(torch.int32).unsqueeze(1)
    u = (words >> _WORD_SHIFTS[key]).bitwise_and_((1 << bits) - 1).reshape(-1)
    return (u if u.numel() == numel else u[:numel]).to(torch.float32)


def _decoded(attr: str):
    name = f"packed_{attr}"  # a PackedWeight submodule; its forward, without hook machinery
    return property(lambda self: self._modules[name].forward())


class PackedLinear(nn.Linear):
    weight = _decoded("weight")


class PackedConv1d(nn.Conv1d):
    weight = _decoded("weight")


class PackedConv2d(nn.Conv2d):
    weight = _decoded("weight")


class PackedMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention.forward reads `in_proj_weight` up to three times (fast-path
    checks, then the call): it is decoded once per forward and reused within it."""

    @property
    def in_proj_weight(self):
        w = self.__dict__.get("_in_proj_this_forward")
        return w if w is not None else self._modules["packed_in_proj_weight"].forward()

    def forward(self, *args, **kwargs):
        self.__dict__["_in_proj_this_forward"] = self._modules["packed_in_proj_weight"].forward()
        try:
            return super().forward(*args, **kwargs)
        finally:
            del self.__dict__["_in_proj_this_forward"]


_PACKED_CLASS = {
    (nn.Linear, "weight"): PackedLinear,
    (nn.Conv1d, "weight"): PackedConv1d,
    (nn.Conv2d, "weight"): PackedConv2d,
    (nn.MultiheadAttention, "in_proj_weight"): PackedMultiheadAttention,
}


def packed_class_for(module: nn.Module, attr: str) -> type:
    for (base, name), packed in _PACKED_CLASS.items():
        if isinstance(module, base) and attr == name:
            return packed
    allowed = [f"{b.__name__}.{n}" for b, n in _PACKED_CLASS]
    raise ValueError(f"cannot pack {type(module).__name__}.{attr}; allowed: {allowed}")


def pack_module_weights(model: nn.Module, weights: dict[str, PackedWeight]) -> None:
    """Replace each named weight of `model` by its PackedWeight (in place)."""
    for name, packed in weights.items():
        mod_name, _, attr = name.rpartition(".")
        module = model.get_submodule(mod_name) if mod_name else model
        cls = packed_class_for(module, attr)
        if attr in module._parameters:
            del module._parameters[attr]
        module.__class__ = cls
        module.add_module(f"packed_{attr}", packed)


def packed_state_dict(model: nn.Module, plan: dict[str, QuantSpec],
                      chosen: dict[str, QuantizedTensor] | None = None,
                      ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """(tensors, quantized) of `model` quantized by `plan`: every state-dict entry that the
    plan names becomes "<name>::packed" (uint8 codes at their bit width), "<name>::scale",
    if asymmetric "<name>::zero_point", and with double-quantized scales "<name>::super_scale"
    (the PackedWeight's buffers, see there); every other entry is kept under its own name.
    `quantized` maps each packed name to {"shape", "dtype", "spec"} (JSON-ready).

    `chosen`: codes already chosen for some weights (e.g. by calibration PTQ,
    `asrquant.quant.calibrate`), stored as they are instead of re-quantizing the weight."""
    state = model.state_dict()
    unknown = sorted(set(plan) - set(state))
    if unknown:
        raise ValueError(f"plan names {unknown[:5]} that are not in the model's state dict")
    given = chosen or {}
    tensors, quantized = {}, {}
    for name, tensor in state.items():
        spec = plan.get(name)
        if spec is None:
            tensors[name] = tensor.detach().contiguous()
            continue
        qt = given[name] if name in given else quantize(tensor.detach(), spec)
        for part, t in PackedWeight.from_quantized(qt).named_buffers():  # None ones skipped
            tensors[name + SEP + part] = t.contiguous()
        quantized[name] = {"shape": list(qt.shape), "dtype": str(qt.dtype).replace("torch.", ""),
                           "spec": spec.to_dict()}
    return tensors, quantized
