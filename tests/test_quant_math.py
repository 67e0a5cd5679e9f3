"""Properties of the quantizer math (hypothesis over shapes, values, bits and layouts)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asrquant.quant import QuantSpec, dequantize, fake_quantize, group_layout, quantize
from asrquant.quant.primitives import choose_qparams, to_groups

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def specs(draw, clip=None):
    symmetric = draw(st.booleans())
    bits = draw(st.integers(2 if symmetric else 1, 8))
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    group_size = draw(st.sampled_from([1, 3, 4, 7, 16, 32])) if granularity == "group" else None
    clip = clip or draw(st.sampled_from(["none", "fixed", "mse"]))
    return QuantSpec(
        bits=bits,
        symmetric=symmetric,
        granularity=granularity,
        group_size=group_size,
        clip=clip,
        clip_ratio=draw(st.sampled_from([1.0, 0.9, 0.5])) if clip == "fixed" else 1.0,
        clip_grid=(1.0, 0.9, 0.8, 0.7, 0.5),
        scale_dtype=draw(st.sampled_from(["float32", "float16", "bfloat16"])),
    )


@st.composite
def weights(draw, dtype=torch.float32):
    shape = draw(
        st.one_of(
            st.tuples(st.integers(1, 6), st.integers(1, 40)),  # Linear
            st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 7)),  # Conv1d
            st.tuples(st.integers(1, 4), st.just(1), st.integers(1, 9)),  # depthwise Conv1d
            st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
        )
    )
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1e-3, 0.05, 1.0, 30.0]))
    w = torch.randn(shape, generator=g) * scale
    if draw(st.booleans()):  # an outlier, as trained weights have
        w.view(-1)[0] *= 20
    if draw(st.booleans()):  # exact zeros
        w.view(-1)[:: 3] = 0
    return w.to(dtype)


def per_group(t, spec, shape):
    """(rows, n_groups, group_len) float32 view plus the mask of real (unpadded) entries."""
    layout = group_layout(shape, spec)
    mask = to_groups(torch.ones(shape), layout).bool()
    return to_groups(t, layout), mask


@SETTINGS
@given(specs(), weights())
def test_codes_use_at_most_2_to_the_bits_levels_per_group(spec, w):
    qt = quantize(w, spec)
    codes, mask = per_group(qt.codes.to(torch.float32), spec, w.shape)
    lo, hi = spec.qmin, spec.qmax
    assert codes.min() >= lo and codes.max() <= hi
    limit = 2**spec.bits - 1 if spec.symmetric else 2**spec.bits
    for row, m in zip(codes.reshape(-1, codes.shape[-1]), mask.reshape(-1, mask.shape[-1]),
                      strict=True):
        assert len(torch.unique(row[m])) <= limit


def test_two_bit_asymmetric_codes_use_at_most_4_levels_and_symmetric_3():
    w = torch.randn(8, 64)
    asym = quantize(w, QuantSpec(bits=2, symmetric=False, granularity="group", group_size=32))
    sym = quantize(w, QuantSpec(bits=2, symmetric=True, granularity="group", group_size=32))
    assert set(asym.codes.unique().tolist()) <= {0, 1, 2, 3}
    assert set(sym.codes.unique().tolist()) <= {-1, 0, 1}


@SETTINGS
@given(specs(), weights())
def test_error_is_at_most_half_a_step_inside_the_clip_range(spec, w):
    layout = group_layout(w.shape, spec)
    x = to_groups(w, layout)
    scale, zp, ratio = choose_qparams(x, spec)
    err = to_groups((dequantize(quantize(w, spec)) - w).abs(), layout)
    if spec.symmetric:
        amax = x.abs().amax(-1, keepdim=True)
        lo, hi = -amax * ratio, amax * ratio
    else:
        lo = x.amin(-1, keepdim=True).clamp(max=0) * ratio
        hi = x.amax(-1, keepdim=True).clamp(min=0) * ratio
    inside = (x >= lo) & (x <= hi)
    tol = scale / 2 * (1 + 1e-5) + 1e-30
    assert bool((err <= tol)[inside.expand_as(err)].all())


@SETTINGS
@given(specs(), weights())
def test_fake_quantize_equals_dequantize_of_quantize_exactly(spec, w):
    assert torch.equal(fake_quantize(w, spec), dequantize(quantize(w, spec)))


@SETTINGS
@given(specs(clip="none"), weights())
def test_fake_quantize_is_idempotent_with_float32_scales(spec, w):
    """Re-quantizing a quantized tensor gives the same codes; values equal up to float32
    rounding of the re-derived scale (see docs/method.md on scale_dtype)."""
    spec = QuantSpec(**{**spec.to_dict(), "scale_dtype": "float32"})
    once = fake_quantize(w, spec)
    assert torch.equal(quantize(once, spec).codes, quantize(w, spec).codes)
    torch.testing.assert_close(fake_quantize(once, spec), once, rtol=1e-6, atol=1e-30)


@SETTINGS
@given(specs(clip="none"), weights())
def test_symmetric_fake_quantize_is_exactly_idempotent_with_16_bit_scales(spec, w):
    spec = QuantSpec(**{**spec.to_dict(), "symmetric": True, "bits": min(max(spec.bits, 2), 4),
                        "scale_dtype": "float16"})
    once = fake_quantize(w, spec)
    assert torch.equal(fake_quantize(once, spec), once)


@SETTINGS
@given(specs(), weights())
def test_symmetric_quantization_keeps_exact_zeros(spec, w):
    spec = QuantSpec(**{**spec.to_dict(), "symmetric": True, "bits": max(spec.bits, 2)})
    w = w.clone()
    w.view(-1)[::2] = 0
    out = fake_quantize(w, spec)
    assert out.is_contiguous()
    assert bool((out.view(-1)[::2] == 0).all())


@SETTINGS
@given(specs(clip="none"), weights())
def test_asymmetric_reproduces_group_min_and_max_within_half_a_step(spec, w):
    spec = QuantSpec(**{**spec.to_dict(), "symmetric": False})
    layout = group_layout(w.shape, spec)
    x = to_groups(w, layout)
    scale, _, _ = choose_qparams(x, spec)
    xq = to_groups(fake_quantize(w, spec), layout)
    mask = to_groups(torch.ones(w.shape), layout).bool()
    big, small = torch.finfo(torch.float32).max, torch.finfo(torch.float32).min
    xmin = x.masked_fill(~mask, big).amin(-1, keepdim=True)
    xmax = x.masked_fill(~mask, small).amax(-1, keepdim=True)
    qmin = xq.masked_fill(~mask, big).amin(-1, keepdim=True)
    qmax = xq.masked_fill(~mask, small).amax(-1, keepdim=True)
    tol = scale / 2 * (1 + 1e-5)
    assert bool(((qmin - xmin).abs() <= tol).all())
    assert bool(((qmax - xmax).abs() <= tol).all())


@SETTINGS
@given(specs(clip="mse"), weights())
def test_mse_clip_never_has_larger_error_than_no_clip(spec, w):
    none = QuantSpec(**{**spec.to_dict(), "clip": "none"})
    err_mse = ((fake_quantize(w, spec) - w) ** 2).sum()
    err_none = ((fake_quantize(w, none) - w) ** 2).sum()
    assert err_mse <= err_none * (1 + 1e-6)


def test_mse_clip_lowers_two_bit_error_on_gaussian_weights():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    base = dict(bits=2, granularity="group", group_size=128)
    e_none = ((fake_quantize(w, QuantSpec(**base)) - w) ** 2).mean()
    e_mse = ((fake_quantize(w, QuantSpec(**base, clip="mse")) - w) ** 2).mean()
    assert e_mse < 0.7 * e_none


def test_ste_gradient_is_identity_inside_the_clip_range_and_zero_outside():
    w = torch.tensor([[-4.0, -1.0, -0.2, 0.0, 0.3, 1.0, 2.0, 8.0]], requires_grad=True)
    spec = QuantSpec(bits=4, symmetric=True, granularity="channel", clip="fixed", clip_ratio=0.5)
    out = fake_quantize(w, spec)
    upstream = torch.arange(1.0, 9.0).reshape(1, 8)
    (out * upstream).sum().backward()
    # clip range is [-4, 4] (half of max |w| = 8): the 8.0 is outside, -4.0 on the edge.
    inside = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.float32)
    assert torch.equal(w.grad, upstream * inside)


@SETTINGS
@given(specs(clip="none"), weights())
def test_ste_gradient_passes_everything_when_nothing_is_clipped(spec, w):
    w = w.clone().requires_grad_(True)
    g = torch.randn(w.shape)
    (fake_quantize(w, spec) * g).sum().backward()
    assert torch.equal(w.grad, g)


def test_scales_are_constants_in_backward():
    """The gradient does not flow through max|w|: only the STE mask, not d scale / d w."""
    w = torch.tensor([[0.1, 0.5, 1.0]], requires_grad=True)
    fake_quantize(w, QuantSpec(bits=2, symmetric=True, granularity="channel")).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_group_size_that_does_not_divide_the_row_pads_the_last_group():
    w = torch.randn(3, 70, generator=torch.Generator().manual_seed(1))
    spec = QuantSpec(bits=4, granularity="group", group_size=32)
    layout = group_layout(w.shape, spec)
    assert (layout.n_groups, layout.group_len, layout.pad) == (3, 32, 26)
    qt = quantize(w, spec)
    assert qt.codes.shape == w.shape and qt.scale.shape == (3, 3)
    # The short last group (6 weights) is quantized on its own: same as quantizing it alone.
    tail = quantize(w[:, 64:], QuantSpec(bits=4, granularity="channel"))
    assert torch.equal(qt.codes[:, 64:], tail.codes)
    assert torch.equal(qt.scale[:, 2], tail.scale[:, 0])


def test_group_size_larger_than_the_row_is_one_group_per_row():
    w = torch.randn(5, 1, 31)  # depthwise Conv1d with kernel 31
    g = quantize(w, QuantSpec(bits=2, granularity="group", group_size=128))
    c = quantize(w, QuantSpec(bits=2, granularity="channel"))
    assert torch.equal(g.codes, c.codes) and torch.equal(g.scale, c.scale)


@pytest.mark.parametrize(
    "shape, granularity, n_scales",
    [
        ((48, 20), "group", 48 * 2),  # Linear (out, in), group 16 -> 2 groups (padded)
        ((12, 6, 5), "group", 12 * 2),  # Conv1d (out, in, k): 30 inputs -> 2 groups
        ((12, 1, 15), "group", 12 * 1),  # depthwise Conv1d
        ((8, 3, 3, 3), "group", 8 * 2),  # Conv2d: 27 flattened inputs -> 2 groups
        ((3 * 16, 16), "group", 48 * 1),  # MultiheadAttention in_proj (3d, d)
        ((48, 20), "channel", 48),
        ((48, 20), "tensor", 1),
    ],
)
def test_weight_layouts_group_along_the_flattened_input(shape, granularity, n_scales):
    spec = QuantSpec(bits=4, granularity=granularity,
                     group_size=16 if granularity == "group" else None)
    w = torch.randn(shape)
    qt = quantize(w, spec)
    assert qt.scale.numel() == n_scales
    assert dequantize(qt).shape == w.shape


def test_conv_groups_run_over_the_flattened_input_dims_in_order():
    w = torch.randn(4, 2, 8)
    spec = QuantSpec(bits=3, granularity="group", group_size=8)
    flat = quantize(w.reshape(4, 16), spec)
    conv = quantize(w, spec)
    assert torch.equal(conv.codes.reshape(4, 16), flat.codes)
    assert torch.equal(conv.scale, flat.scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_half_precision_weights_keep_their_dtype_and_stay_close(dtype, symmetric):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    spec = QuantSpec(bits=8, symmetric=symmetric, granularity="group", group_size=32)
    out = fake_quantize(w.to(dtype), spec)
    assert out.dtype == dtype
    assert torch.equal(out, dequantize(quantize(w.to(dtype), spec)))
    step = (w.abs().max() / 100).item()
    assert (out.float() - w).abs().max().item() < step


@SETTINGS
@given(specs(), weights())
def test_quantization_is_deterministic_bit_for_bit(spec, w):
    a, b = quantize(w, spec), quantize(w.clone(), spec)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)
    assert (a.zero_point is None) == spec.symmetric
    if a.zero_point is not None:
        assert torch.equal(a.zero_point, b.zero_point)


def test_scales_and_zero_points_are_stored_in_scale_dtype_and_codes_in_8_bit_ints():
    w = torch.randn(4, 32)
    qa = quantize(w, QuantSpec(bits=4, symmetric=False, scale_dtype="bfloat16"))
    qs = quantize(w, QuantSpec(bits=4, symmetric=True, scale_dtype="float16"))
    assert qa.scale.dtype == qa.zero_point.dtype == torch.bfloat16 and qa.codes.dtype == torch.uint8
    assert qs.scale.dtype == torch.float16 and qs.codes.dtype == torch.int8
    assert torch.equal(qa.zero_point, qa.zero_point.round())


@settings(max_examples=60, deadline=None)
@given(w=weights(), bits=st.integers(1, 8), clip=st.sampled_from(["none", "mse"]))
def test_uint8_zero_points_give_the_same_codes_as_float16_ones(w, bits, clip):
    """Zero points are integers in [0, 2^bits - 1]: exact in uint8, so only storage changes."""
    f16 = quantize(w, QuantSpec(bits=bits, group_size=16, clip=clip))
    u8 = quantize(w, QuantSpec(bits=bits, group_size=16, clip=clip, zero_point_dtype="uint8"))
    assert u8.zero_point.dtype == torch.uint8
    assert torch.equal(u8.codes, f16.codes) and torch.equal(u8.scale, f16.scale)
    assert torch.equal(u8.zero_point.float(), f16.zero_point.float())
    assert torch.equal(dequantize(u8), dequantize(f16))


def test_all_zero_and_empty_tensors_give_no_nan():
    for spec in (QuantSpec(bits=2), QuantSpec(bits=2, symmetric=True, clip="mse")):
        z = torch.zeros(4, 64)
        assert torch.equal(fake_quantize(z, spec), z)
        e = torch.zeros(0, 8)
        assert dequantize(quantize(e, spec)).shape == (0, 8)
        assert fake_quantize(e, spec).shape == (0, 8)


def test_mse_search_matches_a_per_group_loop_reference():
    """The vectorised search picks, per group, the same ratio a slow loop would."""
    w = torch.randn(6, 96, generator=torch.Generator().manual_seed(3))
    grid = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
    spec = QuantSpec(bits=3, granularity="group", group_size=32, clip="mse", clip_grid=grid,
                     scale_dtype="float32")
    fast = fake_quantize(w, spec).reshape(6, 3, 32)
    groups = w.reshape(6, 3, 32)
    for i in range(6):
        for j in range(3):
            g = groups[i, j].reshape(1, 32)
            cands = [fake_quantize(g, QuantSpec(bits=3, granularity="channel", clip="fixed",
                                                clip_ratio=r, scale_dtype="float32"))
                     for r in grid]
            errs = np.array([((c - g) ** 2).sum().item() for c in cands])
            best = cands[int(np.argmin(errs))]
            assert torch.equal(fast[i, j], best.reshape(32))
