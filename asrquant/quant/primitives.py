"""The quantizer math: pure functions over tensors (no modules, no configs beyond QuantSpec).

Layout. A weight of shape (out, d1, d2, ...) is seen as a matrix of `rows = out` rows of
length `row_len = d1*d2*...` (Linear (out, in); Conv1d/Conv2d (out, in/groups, k...) over the
flattened input dims; depthwise Conv1d (out, 1, k); MultiheadAttention in_proj (3d, d)).
Tensors with fewer than two dims are one row. Each row is cut into `n_groups` groups of
`group_len` consecutive weights:

    tensor  -> one group holding every weight (rows is taken as 1)
    channel -> one group per row
    group   -> groups of `group_size` along the row; when `group_size` does not divide the
               row, the last group is zero-padded. Zero padding is neutral: every grid below
               contains 0 exactly (symmetric by construction, asymmetric because the range
               always includes 0 and the zero point is an integer), so padded entries change
               neither min/max nor any reconstruction error. A `group_size` >= the row length
               gives one group per row.

Grids (b = bits, r = clip ratio in (0, 1]):

    symmetric:  qmax = 2^(b-1) - 1,  s = r * max|w| / qmax,  q = clamp(round(w/s), -qmax, qmax)
                w^ = s * q
    asymmetric: lo = min(min w, 0), hi = max(max w, 0),  s = r * (hi - lo) / (2^b - 1)
                z = clamp(-round(r * lo / s), 0, 2^b - 1),  q = clamp(round(w/s) + z, 0, 2^b - 1)
                w^ = s * (q - z)

`s` is rounded up to `spec.scale_dtype` and `z` (an integer) cast to `spec.zero_point_dtype`
before the codes are
computed, so the stored values are exactly the ones that produced the codes. `s` is kept at
least the smallest normal number of that dtype (an all-zero group gets codes equal to its
zero point and decodes to 0).
All arithmetic is in float32 whatever the weight dtype; results are cast back to it.

Double quantization (`spec.scale_bits = k`): per row a super-scale S = max over the row's
groups of the unclipped s / (2^k - 1), rounded up to `scale_dtype`; each group's s (clipped
or not) becomes the code c = ceil(s / S) in [1, 2^k - 1] and the grid uses c * S (float32),
never narrower than s. Codes and zero points then follow from that decoded scale as above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .spec import QuantSpec


@dataclass(frozen=True)
class GroupLayout:
    rows: int
    row_len: int
    group_len: int
    n_groups: int

    @property
    def pad(self) -> int:
        return self.n_groups * self.group_len - self.row_len

    @property
    def num_scales(self) -> int:
        return self.rows * self.n_groups


def group_layout(shape: torch.Size | tuple[int, ...], spec: QuantSpec) -> GroupLayout:
    numel = 1
    for d in shape:
        numel *= int(d)
    rows = int(shape[0]) if len(shape) >= 2 else 1
    row_len = numel // rows if rows > 0 else 0
    if spec.granularity == "tensor":
        return GroupLayout(rows=1, row_len=numel, group_len=numel, n_groups=1)
    if spec.granularity == "channel" or row_len == 0:
        return GroupLayout(rows=rows, row_len=row_len, group_len=row_len, n_groups=1)
    group_len = min(spec.group_size, row_len)
    n_groups = -(-row_len // group_len)
    return GroupLayout(rows=rows, row_len=row_len, group_len=group_len, n_groups=n_groups)


def to_groups(w: torch.Tensor, layout: GroupLayout) -> torch.Tensor:
    """(rows, n_groups, group_len) float32 view of `w`, zero-padded at the end of each row."""
    x = w.detach().reshape(layout.rows, layout.row_len).to(torch.float32)
    if layout.pad:
        x = torch.nn.functional.pad(x, (0, layout.pad))
    return x.reshape(layout.rows, layout.n_groups, layout.group_len)


def cast_saturating(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x.to(dtype)`, clamping to a narrower float dtype's largest finite value first: a float16
    weight near 65504 can decode one (rounded-up) step above it, which would become inf."""
    if dtype != x.dtype and dtype.is_floating_point and x.is_floating_point():
        top = torch.finfo(dtype).max
        if top < torch.finfo(x.dtype).max:
            x = x.clamp(-top, top)
    return x.to(dtype)


def from_groups(x: torch.Tensor, layout: GroupLayout, shape) -> torch.Tensor:
    x = x.reshape(layout.rows, layout.n_groups * layout.group_len)
    if layout.pad:
        x = x[:, : layout.row_len].contiguous()
    return x.reshape(shape)


def _round_scale(scale: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Round up to the nearest value of the scale dtype (never down: a grid that is at least
    as wide as the range keeps every in-range weight within half a step of a level)."""
    sdt = spec.torch_scale_dtype
    finfo = torch.finfo(sdt)
    scale = scale.nan_to_num(nan=finfo.tiny, posinf=finfo.max).clamp(finfo.tiny, finfo.max)
    if sdt == torch.float32:
        return scale
    rounded = scale.to(sdt)
    below = rounded.to(torch.float32) < scale
    if below.any():
        up = torch.nextafter(rounded, torch.full_like(rounded, float("inf")))
        rounded = torch.where(below, up.clamp(max=finfo.max), rounded)
    return rounded.to(torch.float32)


def _unclipped_scale(lo, hi, spec: QuantSpec) -> torch.Tensor:
    """Per group the scale of the whole range (ratio 1), before any rounding."""
    return hi / spec.qmax if spec.symmetric else (hi - lo) / (spec.qmax - spec.qmin)


def super_scales(unclipped: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Double quantization: per row (dim 0) the largest unclipped group scale / (2^k - 1),
    rounded up to `scale_dtype` and bumped one step further if `(2^k - 1) * super` still falls
    short of it in float32, so the top code covers every group. Unlike group scales it may be
    a float16 subnormal (floored at the dtype's smallest positive value, but never below
    float32's smallest normal, where 1 / scale would overflow): a float16 row of small
    weights keeps the full resolution of its k-bit codes. Shape (rows, 1, ..., 1), float32
    holding a `scale_dtype` value."""
    sdt = spec.torch_scale_dtype
    top_code = 2**spec.scale_bits - 1
    finfo = torch.finfo(sdt)
    smallest = max(torch.nextafter(torch.zeros((), dtype=sdt), torch.ones((), dtype=sdt)).item(),
                   torch.finfo(torch.float32).tiny)
    top = unclipped.nan_to_num(nan=0.0, posinf=finfo.max).flatten(1).amax(dim=1)
    top = top.reshape(-1, *[1] * (unclipped.dim() - 1))
    want = (top / top_code).clamp(smallest, finfo.max)
    rounded = want.to(sdt)
    sup = rounded.to(torch.float32)
    short = (sup < want) | (sup * top_code < top)
    if short.any():
        up = torch.nextafter(rounded, torch.full_like(rounded, float("inf")))
        sup = torch.where(short, up.to(torch.float32).clamp(max=finfo.max), sup)
    return sup


def decode_scales(codes: torch.Tensor, super_scale: torch.Tensor) -> torch.Tensor:
    """Group scales from k-bit codes and (broadcastable) super-scales: code * super in
    float32. The one expression every decoder uses (quantizer, dequantize, packed modules)."""
    return codes.to(torch.float32) * super_scale.to(torch.float32)


def encode_scales(scale: torch.Tensor, super_scale: torch.Tensor, spec: QuantSpec
                  ) -> torch.Tensor:
    """k-bit codes (float32 integers in [1, 2^k - 1]) of group scales: the smallest c with
    c * super >= scale, so the grid is never narrower than the range. ceil of the float32
    quotient can land one below when the division rounds down onto an integer: checked on
    the decoded value and fixed."""
    finfo = torch.finfo(torch.float32)
    scale = scale.nan_to_num(nan=0.0, posinf=finfo.max)
    codes = torch.ceil(scale / super_scale)
    codes = torch.where(decode_scales(codes, super_scale) < scale, codes + 1, codes)
    return codes.clamp_(1, 2**spec.scale_bits - 1)


def _group_scale(scale: torch.Tensor, unclipped: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """A group's scale as stored and used (float32): `scale` rounded up to `scale_dtype`, or,
    with `scale_bits`, encoded against its row's super-scale (a function of the `unclipped`
    scales only, so every clip candidate shares it) and decoded."""
    if spec.scale_bits is None:
        return _round_scale(scale, spec)
    sup = super_scales(unclipped, spec)
    return decode_scales(encode_scales(scale, sup, spec), sup)


def _stored_scales(x: torch.Tensor | None, scale: torch.Tensor, spec: QuantSpec) -> dict:
    """QuantizedTensor's `scale` (and `super_scale`) from the float32 scales (rows, n_groups,
    1) chosen for grouped weights `x` (None: an empty tensor)."""
    scale = scale.squeeze(-1)
    if spec.scale_bits is None:
        return {"scale": scale.to(spec.torch_scale_dtype)}
    if x is None:
        sup = torch.zeros(scale.shape[0])
        codes = torch.zeros_like(scale)
    else:
        sup = super_scales(_unclipped_scale(*_range_stats(x, spec), spec), spec).reshape(-1, 1)
        codes = torch.round(scale / sup)  # exact: each scale is a code times its row's super
    return {"scale": codes.to(torch.uint8),
            "super_scale": sup.reshape(-1).to(spec.torch_scale_dtype)}


def _range_stats(x: torch.Tensor, spec: QuantSpec):
    """Per-group (lo, hi) of the unclipped range, shape (rows, n_groups, 1)."""
    if spec.symmetric:
        amax = x.abs().amax(dim=-1, keepdim=True)
        return -amax, amax
    lo = x.amin(dim=-1, keepdim=True).clamp(max=0.0)
    hi = x.amax(dim=-1, keepdim=True).clamp(min=0.0)
    return lo, hi


def _qparams_for_ratio(lo, hi, ratio, spec: QuantSpec):
    """Scale and zero point (float32 holding integers) for the range [ratio*lo, ratio*hi]."""
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        scale = _group_scale(hi * ratio / qmax, _unclipped_scale(lo, hi, spec), spec)
        return scale, None
    scale = _group_scale((hi - lo) * ratio / (qmax - qmin), _unclipped_scale(lo, hi, spec), spec)
    zero_point = (qmin - torch.round(lo * ratio / scale)).clamp(qmin, qmax)
    zero_point = zero_point.to(spec.torch_zero_point_dtype).to(torch.float32)
    return scale, zero_point


def quantize_groups(x, scale, zero_point, spec: QuantSpec) -> torch.Tensor:
    """Integer codes (as float32) of grouped weights for given qparams."""
    q = torch.round(x * (1.0 / scale))
    if zero_point is not None:
        q = q.add_(zero_point)
    return q.clamp_(spec.qmin, spec.qmax)


def dequantize_groups(q, scale, zero_point) -> torch.Tensor:
    if zero_point is not None:
        q = q - zero_point
    return q * scale


def group_error(err: torch.Tensor, hessian: torch.Tensor | None) -> torch.Tensor:
    """Per-group error (rows, n_groups, 1) of weight errors `err` (rows, n_groups, glen).

    hessian None: the squared weight error sum(e^2). Otherwise the output error on
    calibration inputs X, e^T H_g e with H_g = X_g^T X_g the group's diagonal block of
    H = X^T X: (n_groups, glen, glen) shared by every row, or (rows, n_groups, glen, glen)
    with one Hessian per row (a depthwise convolution's channels see different inputs).
    """
    if hessian is None:
        return err.square().sum(dim=-1, keepdim=True)
    eq = "rgi,gij,rgj->rg" if hessian.dim() == 3 else "rgi,rgij,rgj->rg"
    return torch.einsum(eq, err, hessian, err).unsqueeze(-1)


def _mse_search(x, lo, hi, spec: QuantSpec, hessian: torch.Tensor | None = None):
    """Per group, the ratio of `spec.clip_grid` (and 1.0) with the least error: squared
    weight error, or with `hessian` the output error on calibration inputs (`group_error`).

    One pass over the weights per candidate ratio; each pass is vectorised over all groups.
    Ratio 1.0 is evaluated first and only strictly better ratios replace it, so the result
    is never worse than clip="none".
    """
    ratios = [1.0] + [float(r) for r in spec.clip_grid if float(r) != 1.0]
    best_err = best_scale = best_zp = best_ratio = None
    for r in ratios:
        scale, zp = _qparams_for_ratio(lo, hi, r, spec)
        err = quantize_groups(x, scale, zp, spec)
        if zp is not None:
            err.sub_(zp)
        err = group_error(err.mul_(scale).sub_(x), hessian)
        if best_err is None:
            best_err, best_scale, best_zp = err, scale, zp
            best_ratio = torch.ones_like(scale)
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        if zp is not None:
            best_zp = torch.where(better, zp, best_zp)
        best_ratio = torch.where(better, torch.full_like(best_ratio, r), best_ratio)
    return best_scale, best_zp, best_ratio


def choose_qparams(x: torch.Tensor, spec: QuantSpec, hessian: torch.Tensor | None = None):
    """Scale, zero point (None if symmetric) and clip ratio per group of grouped weights `x`.

    Shapes (rows, n_groups, 1); scale and zero point hold values exactly representable in
    `spec.scale_dtype` but are returned as float32 for computation. With clip="mse" and a
    `hessian` (see `group_error`) the clip ratio minimises the output error, not the weight's.
    """
    return _choose_qparams(x, _range_stats(x, spec), spec, hessian)


def _choose_qparams(x: torch.Tensor, lo_hi, spec: QuantSpec, hessian=None):
    lo, hi = lo_hi
    if spec.clip == "mse":
        return _mse_search(x, lo, hi, spec, hessian)
    ratio = spec.clip_ratio if spec.clip == "fixed" else 1.0
    scale, zp = _qparams_for_ratio(lo, hi, ratio, spec)
    return scale, zp, torch.full_like(scale, ratio)


@dataclass
class QuantizedTensor:
    """Integer codes plus what is needed to decode them.

    codes: int8 (symmetric) or uint8 (asymmetric), the weight's own shape.
    scale, zero_point: (rows, n_groups) in spec.scale_dtype / spec.zero_point_dtype
    (uint8 for "packed": packing is the file's business); zero_point is None if symmetric.
    With spec.scale_bits (double quantization) `scale` holds the groups' k-bit codes as
    uint8 and `super_scale` the rows' super-scales, (rows,) in spec.scale_dtype; the scales
    are `decode_scales(scale, super_scale)` (see `float_scale`). Otherwise super_scale is None.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    shape: torch.Size
    dtype: torch.dtype
    spec: QuantSpec
    super_scale: torch.Tensor | None = None

    @property
    def layout(self) -> GroupLayout:
        return group_layout(self.shape, self.spec)

    def float_scale(self) -> torch.Tensor:
        """The group scales (rows, n_groups) as float32, decoded if double-quantized."""
        if self.super_scale is None:
            return self.scale.to(torch.float32)
        return decode_scales(self.scale, self.super_scale.unsqueeze(-1))


def _codes_dtype(spec: QuantSpec) -> torch.dtype:
    return torch.int8 if spec.symmetric else torch.uint8


def quantize(w: torch.Tensor, spec: QuantSpec,
             hessian: torch.Tensor | None = None) -> QuantizedTensor:
    """Round-to-nearest codes of `w`; `hessian` (per group, see `group_error`) makes the
    clip search (clip="mse") minimise the output error on calibration inputs."""
    layout = group_layout(w.shape, spec)
    sdt = spec.torch_scale_dtype
    if w.numel() == 0:
        empty = torch.zeros(layout.rows, layout.n_groups, dtype=sdt)
        return QuantizedTensor(
            codes=torch.zeros(w.shape, dtype=_codes_dtype(spec)),
            **_stored_scales(None, empty.float().unsqueeze(-1), spec),
            zero_point=None if spec.symmetric else empty.to(spec.torch_zero_point_dtype),
            shape=w.shape,
            dtype=w.dtype,
            spec=spec,
        )
    x = to_groups(w, layout)
    scale, zp, _ = choose_qparams(x, spec, hessian)
    q = quantize_groups(x, scale, zp, spec)
    codes = from_groups(q, layout, w.shape).to(_codes_dtype(spec))
    return QuantizedTensor(
        codes=codes,
        **_stored_scales(x, scale, spec),  # the codes of the scales too, with scale_bits
        zero_point=None if zp is None else zp.squeeze(-1).to(spec.torch_zero_point_dtype),
        shape=w.shape,
        dtype=w.dtype,
        spec=spec,
    )


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    layout = qt.layout
    if qt.codes.numel() == 0:
        return torch.zeros(qt.shape, dtype=qt.dtype)
    q = to_groups(qt.codes, layout)
    scale = qt.float_scale().unsqueeze(-1)
    zp = None if qt.zero_point is None else qt.zero_point.to(torch.float32).unsqueeze(-1)
    return cast_saturating(from_groups(dequantize_groups(q, scale, zp), layout, qt.shape),
                           qt.dtype)


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """dequantize(quantize(w, spec)) in value; straight-through gradient inside the clip range.

    Backward passes the gradient unchanged for weights inside the (possibly clipped) range
    [r*lo, r*hi] of their group and zero outside. Scales are recomputed from `w` on every
    call and treated as constants (no gradient through them).
    """
    if w.numel() == 0:
        return w
    layout = group_layout(w.shape, spec)
    with torch.no_grad():
        x = to_groups(w, layout)
        lo, hi = _range_stats(x, spec)  # also the STE's clip range below
        scale, zp, ratio = _choose_qparams(x, (lo, hi), spec)
        w_hat = cast_saturating(from_groups(
            dequantize_groups(quantize_groups(x, scale, zp, spec), scale, zp), layout, w.shape
        ), w.dtype)
    if not w.requires_grad:
        return w_hat
    with torch.no_grad():
        inside = (x >= lo * ratio) & (x <= hi * ratio)
        inside = from_groups(inside, layout, w.shape).to(w.dtype)
    # w_hat + 0 in value (exactly), gradient `inside` with respect to w.
    return w_hat + (w - w.detach()) * inside


# --------------------------------------------------------------------------- learned scales

def quantize_with(w: torch.Tensor, spec: QuantSpec, scale: torch.Tensor,
                  zero_point: torch.Tensor | None) -> QuantizedTensor:
    """Codes of `w` for given quantization parameters (rows, n_groups) (e.g. learned ones,
    see `fake_quantize_learned`), which must be representable in `spec.scale_dtype` and, for
    zero points, integers in [qmin, qmax]. Not for double-quantized specs (scale_bits)."""
    if spec.scale_bits is not None:
        raise ValueError(f"quantize_with: spec {spec.name()} has scale_bits={spec.scale_bits}; "
                         "given scales are stored as they are (allowed: scale_bits=None)")
    layout = group_layout(w.shape, spec)
    x = to_groups(w, layout)
    s = scale.detach().to(torch.float32).reshape(layout.rows, layout.n_groups, 1)
    z = None if zero_point is None else zero_point.detach().to(torch.float32).reshape(s.shape)
    q = quantize_groups(x, s, z, spec)
    return QuantizedTensor(
        codes=from_groups(q, layout, w.shape).to(_codes_dtype(spec)),
        scale=s.squeeze(-1).to(spec.torch_scale_dtype),
        zero_point=None if z is None else z.squeeze(-1).to(spec.torch_zero_point_dtype),
        shape=w.shape, dtype=w.dtype, spec=spec)


class _RoundSTE(torch.autograd.Function):
    """round(x) forward, identity backward (exactly round(x) in value)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _StoredScaleSTE(torch.autograd.Function):
    """A learned scale as stored (positive, rounded up to the scale dtype) forward; identity
    backward, multiplied by LSQ's gradient scale g."""

    @staticmethod
    def forward(ctx, scale, spec, g):
        ctx.g = g
        return _round_scale(scale.abs(), spec)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None, None


def lsq_grad_scale(spec: QuantSpec, group_len: int) -> float:
    """LSQ's g = 1 / sqrt(weights per scale * qmax): keeps the scale's update in step with the
    weights' (Esser et al., 2020)."""
    return 1.0 / math.sqrt(group_len * max(spec.qmax, 1))


def fake_quantize_learned(w: torch.Tensor, spec: QuantSpec, scale: torch.Tensor,
                          zero_point: torch.Tensor | None) -> torch.Tensor:
    """LSQ / LSQ+ fake quantization with learned `scale` (and zero point) (rows, n_groups).

    Value: exactly dequantize(quantize_with(w, spec, s, z)) with s the scale as stored (|s|
    rounded up to scale_dtype) and z the zero point rounded and clamped to the grid, so the
    packed model equals this one bit for bit. Gradients: straight through the rounding of
    w/s (LSQ: d w^/d s = q - w/s inside the grid, qmin/qmax - z outside), to the scale times
    `lsq_grad_scale`, to the zero point straight through its rounding.
    """
    if spec.scale_bits is not None:
        raise ValueError(f"learned scales do not support spec {spec.name()} with scale_bits="
                         f"{spec.scale_bits} (allowed: scale_bits=None)")
    layout = group_layout(w.shape, spec)
    x = w.reshape(layout.rows, layout.row_len).to(torch.float32)
    if layout.pad:
        x = torch.nn.functional.pad(x, (0, layout.pad))
    x = x.reshape(layout.rows, layout.n_groups, layout.group_len)
    s = _StoredScaleSTE.apply(scale.reshape(layout.rows, layout.n_groups, 1), spec,
                              lsq_grad_scale(spec, layout.group_len))
    q = _RoundSTE.apply(x * (1.0 / s))
    if zero_point is None:
        w_hat = q.clamp(spec.qmin, spec.qmax) * s
    else:
        z = _RoundSTE.apply(zero_point.reshape(s.shape)).clamp(spec.qmin, spec.qmax)
        w_hat = ((q + z).clamp(spec.qmin, spec.qmax) - z) * s
    return cast_saturating(from_groups(w_hat, layout, w.shape), w.dtype)
