"""Reliability matrix, numeric edge cases of the quantizer: all-zero and constant groups, a
huge outlier, denormals, float16 at the edge of its range, bfloat16, empty tensors. For every
spec: no NaN or Inf, no division by zero, and the documented result."""

import itertools

import pytest
import torch

from asrquant.quant import QuantSpec, dequantize, fake_quantize, quantize
from asrquant.quant.packed import PackedWeight

SPECS = [QuantSpec(bits=b, symmetric=s, granularity=g, group_size=8 if g == "group" else None,
                   clip=c, scale_dtype=d)
         for b, s, g, c, d in itertools.product(
             (2, 4, 8), (True, False), ("tensor", "channel", "group"), ("none", "mse"),
             ("float16", "bfloat16", "float32"))]


def ids(spec):
    return f"{spec.describe()} {spec.scale_dtype}"


def all_paths(w, spec):
    """fake_quantize, dequantize(quantize) and the packed decoder: the three must agree."""
    qt = quantize(w, spec)
    outs = [fake_quantize(w, spec), dequantize(qt)]
    if w.numel():
        outs.append(PackedWeight.from_quantized(qt)())
    for o in outs:
        assert o.dtype == w.dtype and o.shape == w.shape
        assert torch.isfinite(o).all(), o
    assert torch.isfinite(qt.scale.float()).all()
    if w.numel():  # an empty tensor has nothing to scale: its (possibly empty) scales are 0
        assert (qt.scale.float() > 0).all()
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    return outs[0]


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_all_zero_rows_and_groups_decode_to_exact_zero(spec):
    w = torch.randn(4, 24, generator=torch.Generator().manual_seed(0))
    w[1] = 0.0  # a zero row
    w[2, 8:16] = 0.0  # a zero group inside a non-zero row
    out = all_paths(w, spec)
    assert torch.equal(out[1], torch.zeros(24))
    if spec.granularity == "group":
        assert torch.equal(out[2, 8:16], torch.zeros(8))
    assert torch.equal(all_paths(torch.zeros(3, 16), spec), torch.zeros(3, 16))


@pytest.mark.parametrize("spec", SPECS, ids=ids)
@pytest.mark.parametrize("value", [0.37, -2.5, 1e-3])
def test_constant_groups_are_reproduced_within_half_a_step(spec, value):
    w = torch.full((3, 16), value)
    out = all_paths(w, spec)
    qmax = spec.qmax if spec.symmetric else spec.qmax - spec.qmin
    # the step is floored at the smallest normal number of the scale dtype (documented)
    step = max(abs(value) / qmax * 1.01, torch.finfo(spec.torch_scale_dtype).tiny)
    assert (out - w).abs().max() <= step / 2 * 1.01


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_single_huge_outlier_keeps_its_sign_and_size_and_the_rest_stays_finite(spec):
    w = torch.randn(2, 32, generator=torch.Generator().manual_seed(1)) * 0.01
    w[0, 5] = 1000.0
    out = all_paths(w, spec)
    if spec.clip == "none":  # mse may clip it; without clipping it is the range's end
        assert out[0, 5] == pytest.approx(1000.0, rel=2 ** -spec.bits * 2)
    assert out[0, 5] > 0


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_denormal_weights_give_no_nan_and_at_most_the_smallest_scale_step(spec):
    w = torch.tensor([[1e-40, -3e-41, 0.0, 1e-39, 2e-45, -1e-38, 5e-39, 0.0]])
    assert (w[w != 0].abs() < torch.finfo(torch.float32).tiny).all()  # really subnormal
    out = all_paths(w, spec)
    tiny = torch.finfo(spec.torch_scale_dtype).tiny
    assert (out - w).abs().max() <= tiny * 2 ** spec.bits


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["channel", "group"])
def test_float16_weights_at_the_edge_of_the_range_do_not_overflow(bits, symmetric, granularity):
    """The rounded-up scale times the top code can exceed 65504: saturated, never inf."""
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity,
                     group_size=4 if granularity == "group" else None)
    top = torch.finfo(torch.float16).max
    w = torch.tensor([[top, -top, 1.0, 2.0], [top, 3.0, -1.0, 0.5]], dtype=torch.float16)
    out = all_paths(w, spec)
    assert out.abs().max() <= top
    assert out[0, 0] >= top * (1 - 2.0 / (2 ** bits - 1))


@pytest.mark.parametrize("spec", [QuantSpec(bits=8, symmetric=True, granularity="channel"),
                                  QuantSpec(bits=4, group_size=8, clip="mse")], ids=ids)
def test_weights_beyond_the_scale_dtype_saturate_to_finite_values(spec):
    """|w| > 65504 * qmax cannot be scaled with float16 scales: documented saturation."""
    w = torch.tensor([[3e38, -3e38, 1.0, 2.0, 0.0, -1.0, 0.5, 0.25]])
    out = all_paths(w, spec)
    assert out.abs().max() <= 65504 * 255


@pytest.mark.parametrize("spec", SPECS[::5], ids=ids)
def test_bfloat16_input_keeps_its_dtype_and_stays_close(spec):
    w32 = torch.randn(6, 40, generator=torch.Generator().manual_seed(2))
    w = w32.to(torch.bfloat16)
    out = all_paths(w, spec)
    ref = fake_quantize(w.float(), spec).to(torch.bfloat16)
    assert (out.float() - ref.float()).abs().max() <= 0.02 * w32.abs().max()


@pytest.mark.parametrize("spec", SPECS[::3], ids=ids)
@pytest.mark.parametrize("shape", [(0,), (0, 16), (4, 0), (0, 3, 5)])
def test_empty_tensors_give_empty_results_and_trainable_gradients(spec, shape):
    w = torch.zeros(shape, requires_grad=True)
    out = all_paths(w.detach(), spec)
    assert out.numel() == 0
    y = fake_quantize(w, spec)
    y.sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape


@pytest.mark.parametrize("spec", SPECS[::7], ids=ids)
def test_gradients_stay_finite_on_the_edge_cases(spec):
    w = torch.zeros(3, 16)
    w[0, 0] = 1000.0
    w[1] = 1e-40
    w[2] = 0.5
    w.requires_grad_(True)
    fake_quantize(w, spec).pow(2).sum().backward()
    assert torch.isfinite(w.grad).all()
